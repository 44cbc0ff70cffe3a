"""Audio imports from hostile sources (issue 14, items 5 and 6): real servers on 127.0.0.1 that
drip their headers, redirect elsewhere, send huge headers or check credentials, and audio files
that are decompression bombs. Each ends in a typed error within its limit, connects nowhere the
worker did not allow, and leaves no credential in an error, a log line or a record.

The servers are small threaded HTTP servers written here at the socket level, so they can misbehave
as real ones do. Time bounds are asserted only as generous upper bounds that a broken version
misses by far (a drip that lasts minutes, against a limit of one second).
"""

from __future__ import annotations

import base64
import io
import ipaddress
import math
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from loguru import logger

from prefect_acestep.stages.audio import FetchPolicy, fetch_audio
from prefect_acestep.stages.audio_import import import_audio_latent
from prefect_acestep.stages.backends.embedded import EmbeddedBackend
from prefect_acestep.stages.errors import AudioError, AudioUnavailable
from prefect_acestep.stages.store import LatentStore

ROOT = Path(__file__).resolve().parents[1]
LOOPBACK = FetchPolicy(allowed_networks=(ipaddress.ip_network("127.0.0.0/8"),))
"""What a worker that allows its own host configures (``ACE_AUDIO_ALLOWED_NETWORKS=127.0.0.0/8``)."""


def wav_bytes(seconds: float = 0.25, rate: int = 48_000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    buffer = io.BytesIO()
    sf.write(buffer, (0.3 * np.sin(2 * math.pi * 440 * t)).astype(np.float32), rate, format="WAV")
    return buffer.getvalue()


GOOD = wav_bytes()


class RawServer:
    """A threaded server on 127.0.0.1 whose every connection is handled by ``handler(conn, request)``
    (the request head as bytes); ``stop`` ends the handlers that wait on it."""

    def __init__(self, handler: Callable[[socket.socket, bytes, RawServer], None]) -> None:
        self.handler = handler
        self.stop = threading.Event()
        self.requests: list[bytes] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            head = b""
            try:
                while b"\r\n\r\n" not in head:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    head += chunk
                self.requests.append(head)
                self.handler(conn, head, self)
            except OSError:
                pass

    def close(self) -> None:
        self.stop.set()
        self._listener.close()


@pytest.fixture
def serve() -> Iterator[Callable[[Callable[[socket.socket, bytes, RawServer], None]], RawServer]]:
    servers: list[RawServer] = []

    def start(handler: Callable[[socket.socket, bytes, RawServer], None]) -> RawServer:
        servers.append(RawServer(handler))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def ok(body: bytes = GOOD) -> Callable[[socket.socket, bytes, RawServer], None]:
    def handle(conn: socket.socket, head: bytes, server: RawServer) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)

    return handle


def redirect_to(location: str) -> Callable[[socket.socket, bytes, RawServer], None]:
    def handle(conn: socket.socket, head: bytes, server: RawServer) -> None:
        conn.sendall(f"HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\n\r\n".encode())

    return handle


# --- the wall-clock limit covers the whole exchange ----------------------------------------------


def test_headers_dripped_a_byte_at_a_time_end_at_the_total_timeout(serve, tmp_path: Path) -> None:
    """Before: each byte restarted the per-read timeout and the headers never ended the wait."""

    def drip(conn: socket.socket, head: bytes, server: RawServer) -> None:
        endless = b"HTTP/1.1 200 OK\r\n" + b"X-Slow: " + b"a" * 10_000_000
        for byte in endless:
            if server.stop.wait(0.02):
                return
            conn.sendall(bytes([byte]))

    server = serve(drip)
    started = time.monotonic()
    with pytest.raises(AudioUnavailable, match="took longer than 0.5 s"):
        fetch_audio(f"{server.url}/a.wav", tmp_path, timeout=5.0, total_timeout=0.5, policy=LOOPBACK)
    assert time.monotonic() - started < 30  # the drip alone would last days
    assert list(tmp_path.iterdir()) == []


def test_a_body_dripped_after_quick_headers_ends_at_the_total_timeout(serve, tmp_path: Path) -> None:
    def drip(conn: socket.socket, head: bytes, server: RawServer) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(GOOD))
        for byte in GOOD:
            if server.stop.wait(0.02):
                return
            conn.sendall(bytes([byte]))

    server = serve(drip)
    with pytest.raises(AudioUnavailable, match="took longer than 0.5 s"):
        fetch_audio(f"{server.url}/a.wav", tmp_path, timeout=5.0, total_timeout=0.5, policy=LOOPBACK)


def test_huge_headers_are_a_typed_error_and_bounded(serve, tmp_path: Path) -> None:
    def huge(conn: socket.socket, head: bytes, server: RawServer) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\n")
        try:
            for _ in range(100_000):  # 100 MB of header lines, if nobody stops reading
                conn.sendall(b"X-Filler: " + b"b" * 1000 + b"\r\n")
        except OSError:
            return

    server = serve(huge)
    with pytest.raises(AudioError, match="not valid HTTP"):
        fetch_audio(f"{server.url}/a.wav", tmp_path, timeout=5.0, total_timeout=30, policy=LOOPBACK)


# --- where a download may connect ----------------------------------------------------------------


def test_private_and_loopback_addresses_are_refused_by_default(serve, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("ACE_AUDIO_ALLOWED_NETWORKS", raising=False)
    server = serve(ok())
    for url in (f"{server.url}/a.wav", f"http://[::ffff:127.0.0.1]:{server.port}/a.wav", f"http://localhost:{server.port}/a.wav"):
        with pytest.raises(AudioError, match="not a public address") as caught:
            fetch_audio(url, tmp_path)  # the worker's policy: from the environment, which allows nothing
        assert not isinstance(caught.value, AudioUnavailable)  # a refusal, never retried
    for url in ("http://169.254.169.254/latest/meta-data/", "http://10.1.2.3/a.wav", "http://[fe80::1]/a.wav"):
        with pytest.raises(AudioError, match="not a public address"):
            fetch_audio(url, tmp_path)
    assert server.requests == []  # refused before connecting: nothing reached the server
    monkeypatch.setenv("ACE_AUDIO_ALLOWED_NETWORKS", "127.0.0.1/32")  # what a worker allows, it may reach
    assert fetch_audio(f"{server.url}/a.wav", tmp_path).read_bytes() == GOOD


def test_redirects_to_another_port_or_host_are_refused_unless_allowed(serve, tmp_path: Path) -> None:
    target = serve(ok())
    elsewhere = serve(redirect_to(f"{target.url}/a.wav"))  # same address, another port
    renamed = serve(redirect_to(f"http://localhost:{target.port}/a.wav"))
    closed = socket.create_server(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()
    probing = serve(redirect_to(f"http://127.0.0.1:{closed_port}/"))
    for server in (elsewhere, renamed, probing):
        with pytest.raises(AudioError, match="redirect to another host or port .* refused") as caught:
            fetch_audio(f"{server.url}/start.wav", tmp_path, policy=LOOPBACK)
        assert "connection failed" not in str(caught.value)  # so it says nothing about which ports are open
    assert target.requests == []
    same = serve(redirect_to("/final.wav"))
    same.handler = lambda conn, head, server: (redirect_to("/final.wav") if b"/start" in head else ok())(conn, head, server)
    assert fetch_audio(f"{same.url}/start.wav", tmp_path, policy=LOOPBACK).read_bytes() == GOOD
    crossing = FetchPolicy(LOOPBACK.allowed_networks, cross_host_redirects=True)
    assert fetch_audio(f"{elsewhere.url}/start.wav", tmp_path, policy=crossing).read_bytes() == GOOD


# --- credentials in URLs -------------------------------------------------------------------------


def test_url_credentials_are_used_but_never_recorded_logged_or_shown(serve, tmp_path: Path, monkeypatch) -> None:
    expected = "Basic " + base64.b64encode(b"musician:hunter2").decode()

    def guarded(conn: socket.socket, head: bytes, server: RawServer) -> None:
        if f"authorization: {expected}".lower().encode() in head.lower():
            ok()(conn, head, server)
        else:
            conn.sendall(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n")

    server = serve(guarded)
    secret_url = f"http://musician:hunter2@127.0.0.1:{server.port}/take.wav?X-Amz-Signature=deadbeefcafe&token=s3cr3t"
    lines: list[str] = []
    sink = logger.add(lines.append, level="DEBUG")
    try:
        store = LatentStore(tmp_path / "store")
        monkeypatch.setenv("ACE_AUDIO_ALLOWED_NETWORKS", "127.0.0.0/8")
        latent_id = import_audio_latent(secret_url, store, EmbeddedBackend())
        with pytest.raises(AudioError) as caught:
            fetch_audio(secret_url.replace("hunter2", "wrong"), tmp_path / "x", policy=LOOPBACK)
    finally:
        logger.remove(sink)
    record = store.record(latent_id)
    assert record.params["source"] == f"http://***@127.0.0.1:{server.port}/take.wav?X-Amz-Signature=***&token=***"
    everything = "\n".join(lines) + str(caught.value) + record.model_dump_json()
    everything += (tmp_path / "store" / "index.sqlite3").read_bytes().decode("latin-1")
    for secret in ("hunter2", "wrong", "deadbeefcafe", "s3cr3t"):
        assert secret not in everything
    assert "HTTP 401" in str(caught.value)


# --- decompression bombs -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bombs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small files that decode to a lot: 8 channels (refused by its header), and 192 kHz stereo
    for 300 s (accepted: 115 MB of 48 kHz float32 audio, from 461 MB of source samples)."""
    folder = tmp_path_factory.mktemp("bombs")
    made = {}
    for name, rate, channels, seconds in (("eight-channels", 48_000, 8, 120), ("hi-rate", 192_000, 2, 300)):
        path = folder / f"{name}.flac"
        with sf.SoundFile(path, "w", samplerate=rate, channels=channels, format="FLAC", subtype="PCM_16") as f:
            block = np.zeros((rate * 10, channels), dtype=np.float32)
            for _ in range(seconds // 10):
                f.write(block)
        made[name] = path
    return made


PEAK_RSS = """
import resource, sys
from prefect_acestep.stages.audio import load_audio
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    audio = load_audio(sys.argv[1], max_seconds=600)
    outcome = "x".join(map(str, audio.shape))
except Exception as exc:
    outcome = type(exc).__name__ + ": " + str(exc)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024, outcome, sep="|")
"""


def peak_rss_mb(path: Path) -> tuple[int, str]:
    done = subprocess.run([sys.executable, "-c", PEAK_RSS, str(path)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    growth, outcome = done.stdout.strip().splitlines()[-1].split("|", 1)
    return int(growth), outcome


def test_an_eight_channel_bomb_is_refused_from_its_header(bombs: dict[str, Path]) -> None:
    assert bombs["eight-channels"].stat().st_size < 1_000_000
    growth, outcome = peak_rss_mb(bombs["eight-channels"])
    assert outcome.startswith("AudioError") and "has 8 channels" in outcome
    assert growth < 50  # nothing decoded (before: over 7 GiB for 590 s)


def test_a_high_rate_file_decodes_in_memory_the_size_of_its_result(bombs: dict[str, Path]) -> None:
    """300 s at 192 kHz: 461 MB as float32 at its own rate; the 48 kHz result is 115 MB. Before,
    decoding held the source, two copies and the result (~4x the source); now the result and a block."""
    assert bombs["hi-rate"].stat().st_size < 1_000_000
    growth, outcome = peak_rss_mb(bombs["hi-rate"])
    assert outcome == f"2x{300 * 48_000}"
    assert growth < 300, f"decoding took {growth} MB for a 115 MB result"
