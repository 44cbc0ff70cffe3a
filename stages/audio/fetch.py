"""Bring user audio in from a local path or an http(s) URL, validated, or not at all.

A source is copied (or streamed) into a hidden temporary file, decoded in full as validation,
and only then renamed to a content-addressed name (``<sha256[:32]>.<format>``), so a retried
import of the same bytes lands on the same file. Every refusal is an ``AudioError`` naming the
source and the reason; network conditions that may pass (timeouts, connection failures, HTTP
408/429/5xx) are ``AudioUnavailable``, which the task layer retries. Limits are enforced while
the bytes arrive: a lying or missing Content-Length cannot get more than ``max_bytes`` onto disk.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
import time
from pathlib import Path
from typing import BinaryIO

import httpx
import soundfile as sf
import torch
from loguru import logger

from prefect_acestep.stages.atomic import staged_output
from prefect_acestep.stages.audio.io import load_audio
from prefect_acestep.stages.errors import AudioError, AudioUnavailable
from prefect_acestep.stages.geometry import MAX_DURATION_S, SAMPLE_RATE

DEFAULT_MAX_BYTES = 512 * 1024 * 1024
"""Room for the longest accepted input (600 s) even as 96 kHz 32-bit float stereo WAV (~460 MB)."""
DEFAULT_TIMEOUT_S = 30.0
"""Per network operation (connect, each read, ...): a server silent this long is considered gone."""
DEFAULT_TOTAL_TIMEOUT_S = 600.0
"""Wall-clock cap on a whole download, which per-read timeouts alone cannot bound (a slow drip)."""

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
_SANE_SUFFIX = re.compile(r"^\.[A-Za-z0-9]{1,5}$")
_RETRYABLE_STATUS = frozenset({408, 429})
_COPY_CHUNK = 1 << 20


def fetch_audio(
    source: str | Path,
    dest_dir: str | Path,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    timeout: float = DEFAULT_TIMEOUT_S,
    total_timeout: float = DEFAULT_TOTAL_TIMEOUT_S,
    max_seconds: float | None = MAX_DURATION_S,
) -> Path:
    """Copy or download ``source`` into ``dest_dir`` after validating it; return the new file."""
    path, _ = _fetch_validated(source, Path(dest_dir), max_bytes, timeout, total_timeout, max_seconds)
    return path


def import_audio(
    source: str | Path,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    timeout: float = DEFAULT_TIMEOUT_S,
    total_timeout: float = DEFAULT_TOTAL_TIMEOUT_S,
    max_seconds: float | None = MAX_DURATION_S,
    work_dir: str | Path | None = None,
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
        _, audio = _fetch_validated(source, Path(tmp), max_bytes, timeout, total_timeout, max_seconds)
    return audio


def _fetch_validated(
    source: str | Path,
    dest_dir: Path,
    max_bytes: int,
    timeout: float,
    total_timeout: float,
    max_seconds: float | None,
) -> tuple[Path, torch.Tensor]:
    label = str(source)
    url = _is_url(source)
    with staged_output(dest_dir, suffix=_source_suffix(label)) as staged:
        with staged.tmp.open("wb") as out:
            if url:
                digest = _download(label, out, max_bytes, timeout, total_timeout)
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
        raise AudioError(f"{source}: unsupported scheme {scheme!r}; give a local path or an http(s) URL")
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


def _download(url: str, out: BinaryIO, max_bytes: int, timeout: float, total_timeout: float) -> str:
    """Stream ``url`` into ``out`` under the size and time limits; return the body's sha256."""
    deadline = time.monotonic() + total_timeout
    digest = hashlib.sha256()
    received = 0
    try:
        with httpx.Client(timeout=timeout, follow_redirects=True, max_redirects=5) as client:
            with client.stream("GET", url) as response:
                _check_response(url, response, max_bytes)
                for chunk in response.iter_bytes():
                    received += len(chunk)
                    if received > max_bytes:
                        raise AudioError(f"{url}: exceeds {max_bytes} bytes (stopped after {received})")
                    if time.monotonic() > deadline:
                        raise AudioUnavailable(f"{url}: download took longer than {total_timeout:g} s")
                    digest.update(chunk)
                    out.write(chunk)
    except httpx.TimeoutException as exc:
        raise AudioUnavailable(f"{url}: timed out after {timeout:g} s ({type(exc).__name__})") from exc
    except (httpx.UnsupportedProtocol, httpx.TooManyRedirects, httpx.DecodingError, httpx.InvalidURL) as exc:
        raise AudioError(f"{url}: cannot fetch ({type(exc).__name__}: {exc})") from exc
    except httpx.TransportError as exc:
        raise AudioUnavailable(f"{url}: connection failed ({type(exc).__name__}: {exc})") from exc
    return digest.hexdigest()


def _check_response(url: str, response: httpx.Response, max_bytes: int) -> None:
    status = response.status_code
    if status in _RETRYABLE_STATUS or status >= 500:
        raise AudioUnavailable(f"{url}: server answered HTTP {status} {response.reason_phrase}")
    if not response.is_success:
        raise AudioError(f"{url}: server answered HTTP {status} {response.reason_phrase}")
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise AudioError(f"{url}: is {declared} bytes (Content-Length); at most {max_bytes} bytes are accepted")
