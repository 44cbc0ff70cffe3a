"""A store root on a remote filesystem (fsspec URL), and where its per-host index lives.

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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fsspec
from fsspec import AbstractFileSystem

from prefect_acestep.stages.errors import InvalidStageRequest
from prefect_acestep.stages.store.conditional import ConditionalWrites, check_protocol, for_filesystem, verify

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
    identity = json.dumps({"url": url, "endpoint": endpoint_of(storage_options)}, sort_keys=True)
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


def open_filesystem(protocol: str, path: str, storage_options: dict[str, Any]) -> FsspecFileSystem:
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
        raise InvalidStageRequest(f"latent store: cannot open {protocol}:// with {sorted(options)}: {exc}") from exc
    objects = for_filesystem(fs, protocol)
    remote = FsspecFileSystem(fs, path, objects)
    if protocol != "memory":
        verify(objects, path, endpoint_of(storage_options))
    return remote


class FsspecFileSystem:
    """The ``FileSystem`` of ``fs.py`` on an fsspec filesystem (see the module docstring)."""

    can_append = False

    def __init__(self, fs: AbstractFileSystem, root: str, objects: ConditionalWrites) -> None:
        self.fs = fs
        self.root = root
        self.objects = objects

    def full(self, rel: str) -> str:
        return f"{self.root}/{rel}"

    def makedirs(self, rel: str) -> None:
        """Object stores have no directories; keys make their prefixes."""

    def write_atomic(self, rel: str, produce: Callable[[Path], None]) -> int:
        """Produce the file locally, then upload it in one PUT: the object appears whole or not at all."""
        with tempfile.TemporaryDirectory(prefix="latent-upload-") as folder:
            temp = Path(folder) / Path(rel).name
            produce(temp)
            data = temp.read_bytes()
        with self.objects.guard():
            self.fs.pipe_file(self.full(rel), data)
        return len(data)

    def create_exclusive(self, rel: str, data: bytes) -> bool:
        return self.objects.create(self.full(rel), data) is not None

    def read(self, rel: str) -> bytearray:
        with self.objects.guard():
            return bytearray(self.fs.cat_file(self.full(rel)))

    def read_range(self, rel: str, offset: int, length: int | None = None) -> bytes:
        end = None if length is None else offset + length
        with self.objects.guard():
            return self.fs.cat_file(self.full(rel), start=offset, end=end)

    def read_heads(self, rels: list[str], length: int) -> list[bytes | Exception]:
        """The first ``length`` bytes of each file, fetched concurrently (s3fs runs the range GETs of
        a batch at once), with the exception in place of a file that could not be read."""
        out: list[bytes | Exception] = []
        for start in range(0, len(rels), _HEAD_BATCH):
            chunk = [self.full(rel) for rel in rels[start : start + _HEAD_BATCH]]
            with self.objects.guard():
                out += self.fs.cat_ranges(chunk, [0] * len(chunk), [length] * len(chunk), on_error="return")
        return out

    def read_many(self, rels: list[str]) -> list[bytes | Exception]:
        """Whole small files, fetched concurrently; the exception in place of an unreadable one."""
        paths = [self.full(rel) for rel in rels]
        with self.objects.guard():
            return self.fs.cat_ranges(paths, [0] * len(paths), [None] * len(paths), on_error="return") if paths else []

    def size(self, rel: str) -> int:
        with self.objects.guard():
            return int(self.fs.size(self.full(rel)))

    def exists(self, rel: str) -> bool:
        with self.objects.guard():
            return bool(self.fs.exists(self.full(rel)))

    def remove(self, rel: str) -> int:
        """Remove ``rel`` if present; return the bytes freed (0 if it was already gone)."""
        with self.objects.guard():
            try:
                size = int(self.fs.size(self.full(rel)))
                self.fs.rm_file(self.full(rel))
            except FileNotFoundError:
                return 0
        return size

    def move(self, src: str, dst: str) -> None:
        """Copy then delete: not atomic, but only used to set corrupt files aside, which is
        idempotent (a crash in between leaves the original to be set aside again)."""
        with self.objects.guard():
            self.fs.copy(self.full(src), self.full(dst))
            self.fs.rm_file(self.full(src))

    def listing(self, rel: str) -> dict[str, int | None]:
        """Names and sizes of the files directly under ``rel`` (one LIST per 1000 objects on S3)."""
        with self.objects.guard():
            try:
                entries = self.fs.ls(self.full(rel), detail=True)
            except FileNotFoundError:
                return {}
        return {
            entry["name"].rstrip("/").rsplit("/", 1)[-1]: int(entry.get("size") or 0)
            for entry in entries
            if entry.get("type") == "file"
        }

    def list_dir(self, rel: str) -> list[str]:
        return list(self.listing(rel))

    def is_temp(self, name: str) -> bool:
        return False  # nothing is staged remotely

    def stale_temps(self, rel_dir: str, grace_s: float) -> list[str]:
        return []

    def remove_temp(self, rel: str) -> int:
        return self.remove(rel)

    def append_durable(self, rel: str, data: bytes) -> int:
        raise NotImplementedError("object stores cannot append; the journal writes one object per change")
