"""Compare-and-swap on whole objects: the one primitive the remote store needs beyond PUT and GET.

Object stores have no rename, no append and no ``flock``, but they can make a write conditional:
S3's ``PutObject`` with ``If-None-Match: *`` creates a key only if it is absent, and with
``If-Match: <etag>`` replaces an object only if it is still the version read. Both are atomic on
the server. The store builds two things on them: the journal (one object per change, created
exclusively, so a second writer of the same sequence number loses instead of overwriting) and the
lease lock (``lease.py``).

Adapters exist for the backends whose conditional writes are known and tested here:

- ``s3`` (s3fs, so AWS S3 since 2024, MinIO, R2, Ceph RGW and moto; see ``verify``),
- ``memory`` (fsspec's in-process memory filesystem; its own writes are not atomic between
  threads, so every operation on it goes through one process-wide lock).

Another fsspec protocol (``gs``, ``az``, ...) needs one more adapter with these three methods (GCS
has generation preconditions, Azure ETags); until then the store refuses such a root by name rather
than running without the guarantees.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any, ContextManager, Protocol

from fsspec import AbstractFileSystem
from fsspec.asyn import sync

from prefect_acestep.stages.errors import InvalidStageRequest, StageError
from prefect_acestep.stages.redact import scrub_url

MEMORY_LOCK = threading.RLock()
"""Serializes every operation on fsspec's memory filesystem in this process (see module docstring)."""


class ConditionalWrites(Protocol):
    """Whole-object compare-and-swap; ``path`` is a full path on the adapter's filesystem ``fs``."""

    fs: AbstractFileSystem

    def create(self, path: str, body: bytes) -> str | None:
        """Write ``body`` if ``path`` is absent; its version tag, or None if something is there."""
        ...

    def replace(self, path: str, body: bytes, version: str) -> str | None:
        """Write ``body`` if ``path`` is still at ``version``; the new tag, or None if not."""
        ...

    def read(self, path: str) -> tuple[bytes, str] | None:
        """The object's bytes and version tag, read together (None if absent)."""
        ...

    def guard(self) -> ContextManager[object]:
        """A context every other operation on the filesystem must run in (a lock, or nothing)."""
        ...


class S3Conditional:
    """Conditional PUTs through s3fs's client (``If-None-Match`` / ``If-Match`` with the ETag)."""

    def __init__(self, fs: AbstractFileSystem) -> None:
        self.fs = fs

    def _put(self, path: str, body: bytes, condition: dict[str, str]) -> str | None:
        bucket, key, _ = self.fs.split_path(path)
        try:
            response = self.fs.call_s3("put_object", Bucket=bucket, Key=key, Body=body, **condition)
        except FileExistsError:
            return None  # 412 on If-None-Match
        except FileNotFoundError:
            if "IfMatch" in condition:
                return None  # the key is gone: not the version we read
            raise  # the bucket is missing
        except OSError as exc:
            if _lost_condition(exc):
                return None
            raise
        finally:
            self.fs.invalidate_cache(path)
        return str(response["ETag"])

    def create(self, path: str, body: bytes) -> str | None:
        return self._put(path, body, {"IfNoneMatch": "*"})

    def replace(self, path: str, body: bytes, version: str) -> str | None:
        return self._put(path, body, {"IfMatch": version})

    def read(self, path: str) -> tuple[bytes, str] | None:
        bucket, key, _ = self.fs.split_path(path)

        async def get() -> tuple[bytes, str]:
            response = await self.fs._call_s3("get_object", Bucket=bucket, Key=key)
            async with response["Body"] as stream:
                return await stream.read(), str(response["ETag"])

        try:
            return sync(self.fs.loop, get)
        except FileNotFoundError:
            return None

    def guard(self) -> ContextManager[object]:
        return nullcontext()


def _lost_condition(exc: OSError) -> bool:
    """Whether s3fs's translated error is a failed precondition (412) or a concurrent conditional
    write to the same key (409 ``ConditionalRequestConflict``, which AWS answers one of two racing
    ``If-None-Match`` PUTs with): both mean another writer won."""
    cause: Any = exc.__cause__ or exc.__context__
    response = getattr(cause, "response", None) or {}
    code = response.get("Error", {}).get("Code", "")
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412)


class MemoryConditional:
    """Compare-and-swap on fsspec's memory filesystem, made atomic by ``MEMORY_LOCK``. The version
    tag is the body's hash: the store's conditional objects carry a random token, so two versions
    never share a body."""

    def __init__(self, fs: AbstractFileSystem) -> None:
        self.fs = fs

    def create(self, path: str, body: bytes) -> str | None:
        with MEMORY_LOCK:
            if self.fs.exists(path):
                return None
            self.fs.pipe_file(path, body)
            return _tag(body)

    def replace(self, path: str, body: bytes, version: str) -> str | None:
        with MEMORY_LOCK:
            current = self.read(path)
            if current is None or current[1] != version:
                return None
            self.fs.pipe_file(path, body)
            return _tag(body)

    def read(self, path: str) -> tuple[bytes, str] | None:
        with MEMORY_LOCK:
            try:
                body = self.fs.cat_file(path)
            except FileNotFoundError:
                return None
            return body, _tag(body)

    @contextmanager
    def guard(self) -> Iterator[None]:
        with MEMORY_LOCK:
            yield


def _tag(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


_ADAPTERS: dict[str, type[S3Conditional] | type[MemoryConditional]] = {
    "s3": S3Conditional,
    "s3a": S3Conditional,
    "memory": MemoryConditional,
}


def check_protocol(protocol: str) -> None:
    """Refuse a protocol without an adapter, before anything connects anywhere."""
    if protocol not in _ADAPTERS:
        raise InvalidStageRequest(
            f"latent store: no conditional-write support for {protocol}:// roots (the store's journal "
            "and lock need create-if-absent and compare-and-swap); supported: s3://, memory://, local paths"
        )


def for_filesystem(fs: AbstractFileSystem, protocol: str) -> ConditionalWrites:
    """The adapter for ``protocol`` (checked by ``check_protocol``)."""
    check_protocol(protocol)
    return _ADAPTERS[protocol](fs)


_verified: set[tuple[str, str]] = set()
_verified_lock = threading.Lock()


def verify(adapter: ConditionalWrites, probe_dir: str, endpoint: str) -> None:
    """Check once per process and endpoint that the server really refuses a second exclusive
    create. A server that ignores ``If-None-Match`` would let two journal writers or two lock
    holders both win without any error; better to refuse the store at open."""
    key = (endpoint, probe_dir.split("/", 1)[0])
    with _verified_lock:
        if key in _verified:
            return
    probe = f"{probe_dir}/.conditional-probe-{secrets.token_hex(8)}"
    first = adapter.create(probe, b"1")
    second = adapter.create(probe, b"2")
    with adapter.guard():
        adapter.fs.rm_file(probe)
    if first is None or second is not None:
        raise StageError(
            f"latent store: the server at {scrub_url(endpoint) or 'the default endpoint'} does not honour "
            "conditional writes (If-None-Match: *); the store's journal and lock need them"
        )
    with _verified_lock:
        _verified.add(key)
