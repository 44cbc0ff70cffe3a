"""Where an audio download may connect, and how long it may take as a whole.

An audio URL is a run parameter: whoever can start a run can make the worker connect somewhere.
So a download connects only to public (globally routable) addresses unless the worker's
configuration allows more, and its wall-clock limit covers the whole exchange:

- ``ACE_AUDIO_ALLOWED_NETWORKS``: comma-separated networks (``192.168.1.0/24``, ``127.0.0.1/32``,
  ``fd00::/8``) a download may reach besides the public internet. Unset, private, loopback,
  link-local (cloud metadata at 169.254.169.254), shared and reserved addresses are refused, so a
  run parameter cannot reach the worker's own services or its network. A musician importing from
  a NAS on the LAN sets its network here (or imports the file by path from a mount).
- ``ACE_AUDIO_CROSS_HOST_REDIRECTS``: ``1`` to follow redirects to other hosts (each new address is
  checked as above). Unset, a redirect may only stay on the URL's host and port (or move from
  http to https on the same host), so a server cannot turn the worker into a port scanner of
  other hosts.

The address check happens where the connection is made (an httpcore network backend): the name
is resolved once, every address it resolves to is checked, and the connection goes to a checked
address, so a name that resolves differently a moment later (DNS rebinding) gains nothing. The same
backend bounds every connect, read and write by the time left before the download's deadline, so
a server that drips its headers a byte at a time is cut off at the deadline too (a per-read
timeout alone restarts at every byte).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import threading
import time
import typing
from dataclasses import dataclass

import httpcore

from prefect_acestep.stages.errors import AudioError, InvalidStageRequest

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

ALLOWED_NETWORKS_ENV = "ACE_AUDIO_ALLOWED_NETWORKS"
CROSS_HOST_REDIRECTS_ENV = "ACE_AUDIO_CROSS_HOST_REDIRECTS"


@dataclass(frozen=True)
class FetchPolicy:
    """Which non-public networks a download may reach, and whether redirects may change host."""

    allowed_networks: tuple[Network, ...] = ()
    cross_host_redirects: bool = False

    @classmethod
    def from_env(cls) -> FetchPolicy:
        """The worker's policy (see the module docstring); the default refuses every non-public
        address and every redirect to another host."""
        raw = os.environ.get(ALLOWED_NETWORKS_ENV, "")
        try:
            networks = tuple(ipaddress.ip_network(part.strip(), strict=False) for part in raw.split(",") if part.strip())
        except ValueError as exc:
            raise InvalidStageRequest(f"{ALLOWED_NETWORKS_ENV}={raw!r}: {exc}") from exc
        redirects = os.environ.get(CROSS_HOST_REDIRECTS_ENV, "").strip().lower()
        if redirects not in ("", "0", "1", "false", "true", "no", "yes"):
            raise InvalidStageRequest(f"{CROSS_HOST_REDIRECTS_ENV}={redirects!r}: use 1 or 0")
        return cls(networks, redirects in ("1", "true", "yes"))

    def allows(self, address: Address) -> bool:
        mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:10.0.0.1 is 10.0.0.1
        if mapped is not None:
            address = mapped
        if any(address in network for network in self.allowed_networks if network.version == address.version):
            return True
        return address.is_global and not address.is_multicast


class GuardedBackend(httpcore.NetworkBackend):
    """httpcore's sync backend, connecting only to addresses ``policy`` allows and giving every
    network operation at most the time left before ``deadline`` (``time.monotonic()``)."""

    def __init__(self, policy: FetchPolicy, deadline: float, label: str) -> None:
        self.policy = policy
        self.deadline = deadline
        self.label = label
        self._inner = httpcore.SyncBackend()

    def time_left(self, timeout: float | None, kind: type[httpcore.TimeoutException]) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise kind("the download's wall-clock limit ran out")
        return left if timeout is None else min(timeout, left)

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[typing.Any] | None = None,
    ) -> httpcore.NetworkStream:
        addresses = self._resolve(host, port, self.time_left(timeout, httpcore.ConnectTimeout))
        refused = [str(address) for address in addresses if not self.policy.allows(address)]
        if refused:
            raise AudioError(
                f"{self.label}: {host} resolves to {', '.join(refused)}, not a public address; a download may "
                f"reach private, loopback and link-local addresses only in networks the worker allows "
                f"({ALLOWED_NETWORKS_ENV})"
            )
        failure: Exception | None = None
        for address in addresses:
            try:
                stream = self._inner.connect_tcp(
                    str(address), port, self.time_left(timeout, httpcore.ConnectTimeout), local_address, socket_options
                )
            except httpcore.ConnectError as exc:
                failure = exc
                continue
            return _DeadlineStream(stream, self)
        assert failure is not None
        raise failure

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: typing.Iterable[typing.Any] | None = None
    ) -> httpcore.NetworkStream:
        raise AudioError(f"{self.label}: a download never connects to a local socket")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def _resolve(self, host: str, port: int, timeout: float) -> list[Address]:
        """The addresses of ``host``, resolved within ``timeout`` (``getaddrinfo`` cannot be
        interrupted, so it runs in a daemon thread that is left behind if it hangs)."""
        found: list[object] = []
        done = threading.Event()

        def resolve() -> None:
            try:
                found.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
            except OSError as exc:
                found.append(exc)
            done.set()

        threading.Thread(target=resolve, name="audio-url-resolve", daemon=True).start()
        if not done.wait(timeout):
            raise httpcore.ConnectTimeout(f"resolving {host} took longer than {timeout:g} s")
        if isinstance(found[0], OSError):
            raise httpcore.ConnectError(f"cannot resolve {host}: {found[0]}")
        infos = typing.cast(list, found[0])
        addresses = list(dict.fromkeys(ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos))
        if not addresses:
            raise httpcore.ConnectError(f"cannot resolve {host}: no addresses")
        return addresses


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose every operation ends by the backend's deadline."""

    def __init__(self, stream: httpcore.NetworkStream, backend: GuardedBackend) -> None:
        self._stream = stream
        self._backend = backend

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, self._backend.time_left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, self._backend.time_left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self, ssl_context: typing.Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        left = self._backend.time_left(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._stream.start_tls(ssl_context, server_hostname, left), self._backend)

    def get_extra_info(self, info: str) -> typing.Any:
        return self._stream.get_extra_info(info)
