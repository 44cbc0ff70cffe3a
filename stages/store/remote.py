"""The remote site: a store root on a remote filesystem (fsspec URL), and where its per-host index
lives.

What carries over from a local directory, and how (the README's "Remote store" section says the
same for users):

- Atomic writes: a latent is produced in a local temp file and uploaded with one PUT (a multipart
  upload above ~100 MB, which also appears only when complete). Object stores never show a
  half-written object, so no temp names or renames exist remotely and a crashed writer leaves
  nothing behind (on S3 an abandoned multipart upload is invisible; a bucket lifecycle rule
  ``AbortIncompleteMultipartUpload`` reclaims it).
- Durability: an object is durable when the PUT returns (no fsync to do).
- Integrity: unchanged; every ``get`` hashes the bytes it downloaded against the record's digest.
- The journal: one object per change, created exclusively (``journal.py``).
- The lock: a lease object with compare-and-swap (``lease.py``).
- Consistency: the store relies on strong read-after-write and list-after-write consistency, which
  AWS S3 has given since December 2020 (MinIO and moto too).

The index stays a local SQLite file, a cache per host (``index_dir``): every fact in it comes from
the remote objects and can be rebuilt from them, so it never needs to be shared. Processes of one
host share it as they share a local store's index.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import fsspec
from fsspec import AbstractFileSystem

from prefect_acestep.stages.errors import InvalidStageRequest
from prefect_acestep.stages.redact import scrub_text, scrub_url
from prefect_acestep.stages.storage_errors import map_storage_errors, typed
from prefect_acestep.stages.store import sync
from prefect_acestep.stages.store.conditional import ConditionalWrites, check_protocol, for_filesystem, verify
from prefect_acestep.stages.store.index import Index, Row
from prefect_acestep.stages.store.journal import SegmentedJournal
from prefect_acestep.stages.store.lease import LeaseLock
from prefect_acestep.stages.store.site import LOCK_FILE

INDEX_DIR_ENV = "ACE_INDEX_DIR"
"""Where remote stores keep their per-host index caches (default ``~/.cache/prefect-acestep/index``)."""

_URL = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://(.*)$")
_HEAD_BATCH = 256


def split_url(root: str | os.PathLike[str]) -> tuple[str, str] | None:
    """(protocol, path) of a remote root such as ``s3://bucket/prefix``; None for a local path
    (a plain path or ``file://``)."""
    if not isinstance(root, str):
        return None
    match = _URL.match(root)
    if match is None or match.group(1).lower() == "file":
        return None
    protocol, path = match.group(1).lower(), match.group(2).strip("/")
    if "@" in path.split("/", 1)[0]:
        raise InvalidStageRequest(
            f"latent store root {scrub_url(root)!r} carries credentials; give them through storage_options "
            "(kept as a secret by the store block), the environment or a profile"
        )
    if not path:
        raise InvalidStageRequest(f"latent store root {root!r} names no bucket or directory")
    return protocol, path


def local_path_of(root: str | os.PathLike[str]) -> Path:
    """The directory of a local root (``file://`` URLs included)."""
    if isinstance(root, str) and root.lower().startswith("file://"):
        root = root[len("file://") :]
    return Path(root).expanduser()


def endpoint_of(storage_options: dict[str, Any]) -> str:
    """The S3 endpoint the options or the environment point at ('' for the default); part of what
    identifies a store, since two servers can hold buckets of the same name."""
    client_kwargs = storage_options.get("client_kwargs") or {}
    for value in (
        storage_options.get("endpoint_url"),
        client_kwargs.get("endpoint_url"),
        os.environ.get("AWS_ENDPOINT_URL_S3"),
        os.environ.get("AWS_ENDPOINT_URL"),
    ):
        if value:
            return str(value)
    return ""


def host_cache_dir(url: str, storage_options: dict[str, Any], index_dir: str | Path | None) -> Path:
    """This host's cache directory for the store at ``url`` (created): its index, and the stage
    cache's lock files. ``index_dir`` > ``$ACE_INDEX_DIR`` > ``~/.cache/prefect-acestep/index``."""
    base = Path(index_dir) if index_dir is not None else Path(os.environ.get(INDEX_DIR_ENV, "") or _default_index_dir())
    # The endpoint without credentials: the folder is named after the server, and ``store.json``
    # (for people looking at the cache directory) must not hold an endpoint's user:password.
    identity = json.dumps({"url": url, "endpoint": scrub_url(endpoint_of(storage_options))}, sort_keys=True)
    folder = base.expanduser() / hashlib.sha256(identity.encode()).hexdigest()[:24]
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / "store.json"
    if not marker.exists():
        marker.write_text(identity + "\n")  # for people looking at the cache directory
    return folder


def index_path(url: str, storage_options: dict[str, Any], index_dir: str | Path | None) -> Path:
    """Where this host keeps the index of the store at ``url``.

    A memory:// store lives only as long as its process, so its index does too (SQLite in memory);
    a persistent index would outlive the data it describes.
    """
    if url.startswith("memory://"):
        return Path(":memory:")
    return host_cache_dir(url, storage_options, index_dir) / "index.sqlite3"


def _default_index_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "prefect-acestep" / "index"


class RemoteSite:
    """A store root on an object store: latents and journal segments are objects, the lock is a
    lease object, and the index is this host's cache, brought up to date lazily (``refresh``)."""

    remote = True

    def __init__(self, url: str, fs: RemoteFileSystem, index_path: Path, lock_timeout_s: float, lease_s: float):
        self.root = url
        self.fs = fs
        self.journal = SegmentedJournal(fs)
        self.lock = LeaseLock(fs, LOCK_FILE, lock_timeout_s, lease_s)
        self.index_path = index_path

    @classmethod
    def open(
        cls,
        protocol: str,
        path: str,
        storage_options: dict[str, Any],
        index_dir: str | Path | None,
        lock_timeout_s: float,
        lease_s: float,
    ) -> RemoteSite:
        url = f"{protocol}://{path}"
        with map_storage_errors(url):
            fs = open_filesystem(protocol, path, storage_options)
            return cls(url, fs, index_path(url, storage_options, index_dir), lock_timeout_s, lease_s)

    def recover(self, index: Index) -> None:
        self.refresh(index)

    def refresh(self, index: Index, *, listing: bool = False) -> None:
        """Apply other hosts' lifecycle changes (one request when there are none); with ``listing``,
        also index the latents they put (one listing of ``latents/``). Takes no lock: only this
        host's index changes."""
        sync.catch_up(self, index, remove_files=False)
        if listing:
            sync.index_new_files(self.fs, index)

    def adopt(self, index: Index, latent_id: str) -> Row | None:
        """A latent another host put: indexed from its object's header."""
        return sync.adopt(self.fs, index, latent_id)

    def sweep(self, grace_s: float) -> tuple[list[str], int]:
        """Nothing: a crashed writer leaves nothing behind, as nothing is staged remotely."""
        return [], 0


def open_filesystem(protocol: str, path: str, storage_options: dict[str, Any]) -> RemoteFileSystem:
    """The remote filesystem of a store root, checked to honour conditional writes."""
    check_protocol(protocol)
    options = dict(storage_options)
    if protocol in ("s3", "s3a"):
        if options.get("use_listings_cache"):
            raise InvalidStageRequest(
                "storage_options use_listings_cache=True would let this host miss other hosts' latents"
            )
        options["use_listings_cache"] = False
    try:
        fs = fsspec.filesystem(protocol, **options)
    except (ImportError, ValueError) as exc:
        raise InvalidStageRequest(
            f"latent store: cannot open {protocol}:// with {sorted(options)}: {scrub_text(str(exc))}"
        ) from exc
    objects = for_filesystem(fs, protocol)
    if protocol != "memory":
        verify(objects, path, endpoint_of(storage_options))
    return RemoteFileSystem(fs, protocol, path, objects)


class RemoteFileSystem:
    """The ``FileSystem`` of ``fs.py`` on an fsspec filesystem, plus the compare-and-swap of whole
    objects (``conditional.py``) that the journal and the lease are built on. Every call goes
    through ``_call``: the adapter's guard, and typed storage errors naming the object."""

    def __init__(self, fs: AbstractFileSystem, protocol: str, root: str, objects: ConditionalWrites) -> None:
        self.fs = fs
        self.protocol = protocol
        self.root = root
        self.objects = objects

    def full(self, rel: str) -> str:
        return f"{self.root}/{rel}"

    def where(self, rel: str) -> str:
        return f"{self.protocol}://{self.full(rel)}"

    @contextmanager
    def _call(self, rel: str) -> Iterator[None]:
        with map_storage_errors(self.where(rel)), self.objects.guard():
            yield

    def write_atomic(self, rel: str, produce: Callable[[Path], None]) -> int:
        """Produce the file locally, then upload it in one PUT: the object appears whole or not at all."""
        with map_storage_errors(self.where(rel)), tempfile.TemporaryDirectory(prefix="latent-upload-") as folder:
            temp = Path(folder) / Path(rel).name
            produce(temp)
            data = temp.read_bytes()
        with self._call(rel):
            self.fs.pipe_file(self.full(rel), data)
        return len(data)

    def create(self, rel: str, data: bytes) -> str | None:
        """Write ``data`` if ``rel`` is absent; its version tag, or None if something is there."""
        with map_storage_errors(self.where(rel)):
            return self.objects.create(self.full(rel), data)

    def replace(self, rel: str, data: bytes, version: str) -> str | None:
        """Write ``data`` if ``rel`` is still at ``version``; the new tag, or None if not."""
        with map_storage_errors(self.where(rel)):
            return self.objects.replace(self.full(rel), data, version)

    def read_versioned(self, rel: str) -> tuple[bytes, str] | None:
        """The object's bytes and version tag, read together (None if absent)."""
        with map_storage_errors(self.where(rel)):
            return self.objects.read(self.full(rel))

    def read(self, rel: str) -> bytearray:
        with self._call(rel):
            return bytearray(self.fs.cat_file(self.full(rel)))

    def read_range(self, rel: str, offset: int, length: int | None = None) -> bytes:
        end = None if length is None else offset + length
        with self._call(rel):
            return self.fs.cat_file(self.full(rel), start=offset, end=end)

    def read_heads(self, rels: list[str], length: int) -> list[bytes | Exception]:
        """Fetched concurrently (s3fs runs the range GETs of a batch at once)."""
        out: list[bytes | Exception] = []
        for start in range(0, len(rels), _HEAD_BATCH):
            chunk = rels[start : start + _HEAD_BATCH]
            out += self._read_ranges(chunk, [length] * len(chunk))
        return out

    def read_many(self, rels: list[str]) -> list[bytes | Exception]:
        """Whole small files, fetched concurrently; the exception in place of an unreadable one."""
        return self._read_ranges(rels, [None] * len(rels)) if rels else []

    def _read_ranges(self, rels: list[str], ends: list[int | None]) -> list[bytes | Exception]:
        with self._call(rels[0] if rels else ""):
            found = self.fs.cat_ranges([self.full(rel) for rel in rels], [0] * len(rels), ends, on_error="return")
        return [
            typed(data, self.where(rel)) if isinstance(data, Exception) else data
            for rel, data in zip(rels, found, strict=True)
        ]

    def size(self, rel: str) -> int:
        with self._call(rel):
            return int(self.fs.size(self.full(rel)))

    def remove(self, rel: str) -> int:
        with self._call(rel):
            try:
                size = int(self.fs.size(self.full(rel)))
                self.fs.rm_file(self.full(rel))
            except FileNotFoundError:
                return 0
        return size

    def move(self, src: str, dst: str) -> None:
        """Copy then delete: not atomic, but only used to set corrupt files aside, which is
        idempotent (a crash in between leaves the original to be set aside again)."""
        with self._call(src):
            self.fs.copy(self.full(src), self.full(dst))
            self.fs.rm_file(self.full(src))

    def listing(self, rel: str) -> dict[str, int | None]:
        """Files only, with sizes (one LIST per 1000 objects on S3)."""
        with self._call(rel):
            try:
                entries = self.fs.ls(self.full(rel), detail=True)
            except FileNotFoundError:
                return {}
        return {
            entry["name"].rstrip("/").rsplit("/", 1)[-1]: int(entry.get("size") or 0)
            for entry in entries
            if entry.get("type") == "file"
        }
