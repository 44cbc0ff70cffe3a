"""Bring user audio in from a local path or an http(s) URL, validated, or not at all.

A source is copied (or streamed) into a hidden temporary file, decoded in full as validation,
and only then renamed to a content-addressed name (``<sha256[:32]>.<format>``), so a retried
import of the same bytes lands on the same file. Every refusal is an ``AudioError`` naming the
source and the reason; network conditions that may pass (timeouts, connection failures, HTTP
408/429/5xx) are ``AudioUnavailable``, which the task layer retries. Limits are enforced while
the bytes arrive: a lying or missing Content-Length cannot get more than ``max_bytes`` onto disk.
"""

from __future__ import annotations

import base64
import hashlib
import re
import tempfile
import time
from pathlib import Path
from typing import BinaryIO

import httpcore
import httpx
import soundfile as sf
import torch
from loguru import logger

from prefect_acestep.stages.atomic import staged_output
from prefect_acestep.stages.audio.io import load_audio
from prefect_acestep.stages.audio.network import CROSS_HOST_REDIRECTS_ENV, FetchPolicy, GuardedBackend
from prefect_acestep.stages.errors import AudioError, AudioUnavailable
from prefect_acestep.stages.geometry import MAX_DURATION_S, SAMPLE_RATE
from prefect_acestep.stages.redact import scrub_text, scrub_url

DEFAULT_MAX_BYTES = 512 * 1024 * 1024
"""Room for the longest accepted input (600 s) even as 96 kHz 32-bit float stereo WAV (~460 MB)."""
DEFAULT_TIMEOUT_S = 30.0
"""Per network operation (connect, each read, ...): a server silent this long is considered gone."""
DEFAULT_TOTAL_TIMEOUT_S = 600.0
"""Wall-clock cap on a whole exchange (resolving, connecting, headers, body, redirects), which
per-read timeouts alone cannot bound (a slow drip)."""
MAX_REDIRECTS = 5

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
_SANE_SUFFIX = re.compile(r"^\.[A-Za-z0-9]{1,5}$")
_RETRYABLE_STATUS = frozenset({408, 429})
_REDIRECT_STATUS = frozenset({301, 302, 303, 307, 308})
_COPY_CHUNK = 1 << 20


def fetch_audio(
    source: str | Path,
    dest_dir: str | Path,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    timeout: float = DEFAULT_TIMEOUT_S,
    total_timeout: float = DEFAULT_TOTAL_TIMEOUT_S,
    max_seconds: float | None = MAX_DURATION_S,
    policy: FetchPolicy | None = None,
) -> Path:
    """Copy or download ``source`` into ``dest_dir`` after validating it; return the new file.
    ``policy`` (default: the worker's, ``FetchPolicy.from_env``) says where a URL may lead."""
    path, _ = _fetch_validated(source, Path(dest_dir), max_bytes, timeout, total_timeout, max_seconds, policy)
    return path


def import_audio(
    source: str | Path,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    timeout: float = DEFAULT_TIMEOUT_S,
    total_timeout: float = DEFAULT_TOTAL_TIMEOUT_S,
    max_seconds: float | None = MAX_DURATION_S,
    work_dir: str | Path | None = None,
    policy: FetchPolicy | None = None,
) -> torch.Tensor:
    """Validate and load ``source`` as float32 ``[2, S]`` at 48 kHz; keep no copy of it.

    A local file is read in place. A URL is downloaded into a temporary directory under
    ``work_dir`` (default: the system temp dir), which is removed whatever happens.
    """
    if not _is_url(source):
        return load_audio(_local_file(source, max_bytes), max_seconds=max_seconds, source=str(source))
    if work_dir is not None:
        Path(work_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".import-audio-", dir=work_dir) as tmp:
        _, audio = _fetch_validated(source, Path(tmp), max_bytes, timeout, total_timeout, max_seconds, policy)
    return audio


def _fetch_validated(
    source: str | Path,
    dest_dir: Path,
    max_bytes: int,
    timeout: float,
    total_timeout: float,
    max_seconds: float | None,
    policy: FetchPolicy | None,
) -> tuple[Path, torch.Tensor]:
    label = scrub_url(str(source))
    url = _is_url(source)
    with staged_output(dest_dir, suffix=_source_suffix(str(source))) as staged:
        with staged.tmp.open("wb") as out:
            if url:
                policy = FetchPolicy.from_env() if policy is None else policy
                digest = _download(str(source), out, max_bytes, timeout, total_timeout, policy)
            else:
                digest = _copy_local(_local_file(source, max_bytes), out, max_bytes, label)
        audio = load_audio(staged.tmp, max_seconds=max_seconds, source=label)
        fmt = sf.info(str(staged.tmp)).format
        staged.target = dest_dir / f"{digest[:32]}.{fmt.lower()}"
    logger.info("imported audio {} -> {} ({:.1f} s)", label, staged.target, audio.shape[1] / SAMPLE_RATE)
    return staged.target, audio


def _is_url(source: str | Path) -> bool:
    """http(s) URLs are fetched; other schemes are refused rather than mistaken for paths."""
    if isinstance(source, Path) or not _URL.match(source):
        return False
    scheme = source.split("://", 1)[0].lower()
    if scheme not in ("http", "https"):
        raise AudioError(f"{scrub_url(source)}: unsupported scheme {scheme!r}; give a local path or an http(s) URL")
    return True


def _source_suffix(label: str) -> str:
    """The source's extension, if sane, to help libsndfile recognise headerless formats."""
    suffix = Path(label.split("?", 1)[0].split("#", 1)[0]).suffix
    return suffix.lower() if _SANE_SUFFIX.match(suffix) else ""


def _local_file(source: str | Path, max_bytes: int) -> Path:
    path = Path(source)
    if not path.exists():
        raise AudioError(f"{source}: no such file")
    if not path.is_file():
        raise AudioError(f"{source}: not a regular file")
    size = path.stat().st_size
    if size > max_bytes:
        raise AudioError(f"{source}: is {size} bytes; at most {max_bytes} bytes are accepted")
    return path


def _copy_local(path: Path, out: BinaryIO, max_bytes: int, label: str) -> str:
    """Copy with the size limit re-checked as bytes are read (the file may still be growing)."""
    digest = hashlib.sha256()
    copied = 0
    with path.open("rb") as src:
        while chunk := src.read(_COPY_CHUNK):
            copied += len(chunk)
            if copied > max_bytes:
                raise AudioError(f"{label}: exceeds {max_bytes} bytes")
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


def _download(url: str, out: BinaryIO, max_bytes: int, timeout: float, total_timeout: float, policy: FetchPolicy) -> str:
    """Stream ``url`` into ``out`` under the size and time limits and ``policy``; return the body's
    sha256. Redirects are followed here, each checked against ``policy`` (``_next_hop``)."""
    label = scrub_url(url)
    deadline = time.monotonic() + total_timeout
    backend = GuardedBackend(policy, deadline, label)
    try:
        target = httpx.URL(url)
        extensions = {"timeout": {"connect": timeout, "read": timeout, "write": timeout, "pool": timeout}}
        with httpcore.ConnectionPool(ssl_context=httpx.create_ssl_context(), network_backend=backend) as pool:
            for _ in range(MAX_REDIRECTS + 1):
                headers = _request_headers(target, url)
                with pool.stream("GET", _core_url(target), headers=headers, extensions=extensions) as response:
                    if response.status in _REDIRECT_STATUS:
                        target = _next_hop(label, target, response, policy)
                        continue
                    _check_response(label, response, max_bytes)
                    return _receive(label, response, out, max_bytes)
            raise AudioError(f"{label}: more than {MAX_REDIRECTS} redirects")
    except httpcore.TimeoutException as exc:
        if time.monotonic() >= deadline:
            raise AudioUnavailable(f"{label}: the download took longer than {total_timeout:g} s") from exc
        raise AudioUnavailable(f"{label}: timed out after {timeout:g} s ({type(exc).__name__})") from exc
    except (httpcore.UnsupportedProtocol, httpx.InvalidURL) as exc:
        raise AudioError(f"{label}: cannot fetch ({type(exc).__name__}: {scrub_text(str(exc))})") from exc
    except httpcore.ProtocolError as exc:
        raise AudioError(f"{label}: the server's answer is not valid HTTP ({scrub_text(str(exc))})") from exc
    except httpcore.NetworkError as exc:
        raise AudioUnavailable(f"{label}: connection failed ({type(exc).__name__}: {scrub_text(str(exc))})") from exc


def _core_url(target: httpx.URL) -> httpcore.URL:
    return httpcore.URL(scheme=target.raw_scheme, host=target.raw_host, port=target.port, target=target.raw_path)


def _request_headers(target: httpx.URL, first: str) -> list[tuple[bytes, bytes]]:
    """No compression (the size limit counts what lands on disk: no gzip bomb), and the URL's own
    user:password as Basic auth, to the URL's own host only."""
    headers = [(b"Accept-Encoding", b"identity"), (b"User-Agent", b"prefect-acestep")]
    origin = httpx.URL(first)
    if (origin.username or origin.password) and _origin(target) == _origin(origin):
        token = base64.b64encode(f"{origin.username}:{origin.password}".encode()).decode()
        headers.append((b"Authorization", f"Basic {token}".encode()))
    return headers


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return url.scheme, url.host, url.port if url.port is not None else {"http": 80, "https": 443}.get(url.scheme)


def _next_hop(label: str, current: httpx.URL, response: httpcore.Response, policy: FetchPolicy) -> httpx.URL:
    """Where a redirect leads, if ``policy`` lets the download follow it: the same host and port
    (or http to https on the same host) unless cross-host redirects are allowed."""
    location = dict((k.lower(), v) for k, v in response.headers).get(b"location", b"").decode("latin-1")
    if not location:
        raise AudioError(f"{label}: redirect (HTTP {response.status}) without a Location")
    target = current.join(location)
    where = scrub_url(str(target))
    if target.scheme not in ("http", "https"):
        raise AudioError(f"{label}: redirect to {where}: only http(s) is fetched")
    same_host = target.host == current.host and (
        _origin(target) == _origin(current) or (current.scheme, target.scheme, target.port) == ("http", "https", None)
    )
    if not same_host and not policy.cross_host_redirects:
        raise AudioError(
            f"{label}: redirect to another host or port ({where}) refused; a worker follows such redirects "
            f"only with {CROSS_HOST_REDIRECTS_ENV}=1"
        )
    return target


def _receive(label: str, response: httpcore.Response, out: BinaryIO, max_bytes: int) -> str:
    digest = hashlib.sha256()
    received = 0
    for chunk in response.iter_stream():
        received += len(chunk)
        if received > max_bytes:
            raise AudioError(f"{label}: exceeds {max_bytes} bytes (stopped after {received})")
        digest.update(chunk)
        out.write(chunk)
    return digest.hexdigest()


def _check_response(label: str, response: httpcore.Response, max_bytes: int) -> None:
    status = response.status
    reason = response.extensions.get("reason_phrase", b"").decode("latin-1", errors="replace")
    if status in _RETRYABLE_STATUS or status >= 500:
        raise AudioUnavailable(f"{label}: server answered HTTP {status} {reason}")
    if not 200 <= status < 300:
        raise AudioError(f"{label}: server answered HTTP {status} {reason}")
    declared = dict((k.lower(), v) for k, v in response.headers).get(b"content-length", b"").decode("latin-1")
    if declared.isdigit() and int(declared) > max_bytes:
        raise AudioError(f"{label}: is {declared} bytes (Content-Length); at most {max_bytes} bytes are accepted")
