"""A TCP proxy in front of a server (the tests' S3 server) that can fail on demand: drop every
connection (a reset, as a crashed server or a flaky network does), or answer every request with an
S3 error (``503 SlowDown`` throttling, ``500 InternalError``, ``403 AccessDenied``)."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_REASONS = {403: ("Forbidden", "AccessDenied"), 500: ("Internal Server Error", "InternalError"),
            503: ("Service Unavailable", "SlowDown")}  # fmt: skip


class FaultyProxy:
    """Forwards to ``127.0.0.1:upstream_port`` while ``fault`` is None; else ``"reset"`` or one of
    the HTTP statuses above."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.fault: str | int | None = None
        self.failed = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, name="faulty-proxy", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        fault = self.fault
        if fault is None:
            self._forward(client)
            return
        self.failed += 1
        with client:
            request = _read_request(client)
            if fault == "reset":
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close sends RST
                return
            reason, code = _REASONS[int(fault)]
            body = b"" if request.startswith(b"HEAD ") else (
                f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                f"<Message>injected by the test proxy</Message></Error>"
            ).encode()  # fmt: skip
            head = (
                f"HTTP/1.1 {fault} {reason}\r\nContent-Type: application/xml\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            client.sendall(head.encode() + body)

    def _forward(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        except OSError:
            client.close()
            return

        def pump(source: socket.socket, sink: socket.socket) -> None:
            try:
                while data := source.recv(65536):
                    sink.sendall(data)
            except OSError:
                pass
            finally:
                for end in (source, sink):
                    try:
                        end.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

        back = threading.Thread(target=pump, args=(upstream, client), daemon=True)
        back.start()
        pump(client, upstream)
        back.join()
        client.close()
        upstream.close()


def _read_request(client: socket.socket) -> bytes:
    """One HTTP request's head and body (by Content-Length), so the answer comes after it."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = client.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    expects_continue = False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
        elif name.strip().lower() == b"expect":
            expects_continue = True
    while not expects_continue and len(body) < length:
        chunk = client.recv(65536)
        if not chunk:
            break
        body += chunk
    return head


@contextmanager
def faulty_proxy(upstream_url: str) -> Iterator[FaultyProxy]:
    proxy = FaultyProxy(int(upstream_url.rsplit(":", 1)[1]))
    try:
        yield proxy
    finally:
        proxy.close()
