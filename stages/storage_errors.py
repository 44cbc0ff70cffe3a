"""Storage failures typed in one place.

Every place the project touches storage (the latent store's filesystems, local and remote, its
index and lock, and the atomic writer of ``atomic.py``) runs inside ``map_storage_errors``, which
turns operating-system, SQLite and network errors into the ``StorageError`` types of ``errors.py``,
as httpx maps its transport's exceptions at the transport rather than at every caller. The task
layer's retry rule then looks at types alone: a full disk or a permission error fails at once, with
the path and what to do; a dropped connection or a throttled server is retried.

"Absent" and "already there" (``FileNotFoundError``, ``FileExistsError``) are answers rather than
failures: the store acts on them (a latent removed meanwhile, a journal entry another writer
created), so they pass through unchanged.
"""

from __future__ import annotations

import errno
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from prefect_acestep.stages.errors import (
    StageError,
    StorageError,
    StorageFull,
    StoragePermission,
    StorageUnavailable,
)
from prefect_acestep.stages.redact import scrub_text

_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
_DENIED = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})
_PASSING = frozenset(
    {
        errno.EIO,  # also what network filesystems (NFS, FUSE mounts of buckets) report for a lost server
        errno.EAGAIN, errno.EBUSY, errno.EINTR, errno.ETIMEDOUT, errno.ESTALE, errno.EPIPE,
        errno.ECONNRESET, errno.ECONNABORTED, errno.ECONNREFUSED, errno.ENETDOWN, errno.ENETUNREACH,
        errno.ENETRESET, errno.EHOSTDOWN, errno.EHOSTUNREACH, errno.EREMOTEIO,
    }
)  # fmt: skip
"""Errors that may pass on their own. s3fs reports a server's 5xx as EREMOTEIO and 503/SlowDown
as EBUSY, after retrying them itself."""

_SQLITE_FULL, _SQLITE_READONLY, _SQLITE_PERM, _SQLITE_IOERR = 13, 8, 3, 10
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")
"""How Rust libraries (safetensors) put an OS error into their message."""


@contextmanager
def map_storage_errors(where: str | os.PathLike[str]) -> Iterator[None]:
    """Raise storage failures inside as typed errors naming ``where`` (or the exact file the
    operating system names)."""
    try:
        yield
    except Exception as exc:
        typed = storage_error(exc, where)
        if typed is None:
            raise
        raise typed from exc


def typed(exc: Exception, where: str | os.PathLike[str]) -> Exception:
    """``exc`` typed (caused by ``exc``) if it is a storage failure, else ``exc`` itself: for
    exceptions that a batch operation returns in place of a result rather than raising."""
    error = storage_error(exc, where)
    if error is None:
        return exc
    error.__cause__ = exc
    return error


def storage_error(exc: BaseException, where: str | os.PathLike[str]) -> StorageError | None:
    """The typed error for ``exc``, a failure of storage at ``where``; None for an exception that is
    not one (already typed, "absent"/"already there", or a bug, which must surface as it is)."""
    if isinstance(exc, StageError | FileNotFoundError | FileExistsError):
        return None
    kind = _kind(exc)
    if kind is None:
        return None
    filename = getattr(exc, "filename", None)
    path = os.fsdecode(filename) if isinstance(filename, str | bytes) and filename else os.fspath(where)
    reason = (exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)) or type(exc).__name__
    return kind(path, scrub_text(reason))  # a network error may quote an endpoint with its user:password


def _kind(exc: BaseException) -> type[StorageError] | None:
    status = _http_status(exc)
    if status is not None:
        if status in (401, 403):
            return StoragePermission
        if status in (408, 429) or status >= 500:
            return StorageUnavailable
    transport = _transport_kind(exc)
    if transport is not None:
        return transport
    if isinstance(exc, OSError):
        if exc.errno in _FULL:
            return StorageFull
        if exc.errno in _DENIED or isinstance(exc, PermissionError):
            return StoragePermission
        if exc.errno in _PASSING or isinstance(exc, TimeoutError | ConnectionError):
            return StorageUnavailable
        return StorageError
    sqlite_code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(sqlite_code, int):
        primary = sqlite_code & 0xFF  # extended codes carry the primary one in their low byte
        if primary == _SQLITE_FULL:
            return StorageFull
        if primary in (_SQLITE_READONLY, _SQLITE_PERM):
            return StoragePermission
        if primary == _SQLITE_IOERR:
            return StorageUnavailable
        return None  # busy, corrupt, schema: the index's own business
    match = _RUST_OS_ERROR.search(str(exc))
    if match is not None:
        return _kind(OSError(int(match.group(1)), str(exc)))
    return None


def _http_status(exc: BaseException) -> int | None:
    """The HTTP status of a server's answer behind ``exc`` (s3fs keeps botocore's error as cause)."""
    for error in (exc, exc.__cause__):
        response = getattr(error, "response", None)
        if isinstance(response, dict):
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if isinstance(status, int):
                return status
    return None


def _transport_kind(exc: BaseException) -> type[StorageError] | None:
    """Network failures that botocore and aiohttp raise outside ``OSError``. Their classes are
    looked up only if their library is loaded: an exception of a library can only exist once it is
    imported, so a local store never pays for importing them."""
    botocore = sys.modules.get("botocore.exceptions")
    if botocore is not None:
        if isinstance(exc, botocore.HTTPClientError | botocore.ConnectionError):
            return StorageUnavailable
        if isinstance(exc, botocore.NoCredentialsError | botocore.PartialCredentialsError):
            return StoragePermission
    aiohttp = sys.modules.get("aiohttp")
    if aiohttp is not None and isinstance(exc, aiohttp.ClientConnectionError | aiohttp.ClientPayloadError):
        return StorageUnavailable
    return None
