"""What the store needs from a filesystem, and the local one.

Everything above a site's filesystem speaks in paths relative to the store root and in bytes. Both
filesystems (this ``LocalFileSystem`` and ``remote.RemoteFileSystem``) implement the whole
``FileSystem`` protocol; what only one of them can do (append to a file; create an object if absent)
is a method of that class alone, used by that site's journal (``journal.py``).

Every method runs inside ``map_storage_errors``: an operating-system error leaves here typed, naming
the file. The local class gives the durability the store relies on: a write is either absent or
complete under its final name (``atomic.staged_output``), and an appended journal line is on disk
before ``append_durable`` returns.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from prefect_acestep.stages.atomic import fsync_path, remove_file, remove_staging, stale_staging, staged_output
from prefect_acestep.stages.errors import StorageError
from prefect_acestep.stages.storage_errors import map_storage_errors


class FileSystem(Protocol):
    """What the store needs from a filesystem (paths relative to the store root)."""

    def where(self, rel: str) -> str:
        """``rel`` as users would find it (a path or URL), for messages."""
        ...

    def write_atomic(self, rel: str, produce: Callable[[Path], None]) -> int:
        """Have ``produce`` write a file to a local temporary path, then make that file ``rel``, whole
        or not at all. Returns its size. (A producer writing to a path lets safetensors' ``save_file``
        write straight from tensor memory.)"""
        ...

    def read(self, rel: str) -> bytearray: ...
    def read_range(self, rel: str, offset: int, length: int | None = None) -> bytes: ...

    def read_heads(self, rels: list[str], length: int) -> list[bytes | Exception]:
        """The first ``length`` bytes of each file; a ``FileNotFoundError`` or ``StorageError`` in place
        of one that could not be read."""
        ...

    def size(self, rel: str) -> int: ...

    def remove(self, rel: str) -> int:
        """Remove ``rel`` if present; return the bytes freed (0 if it was already gone)."""
        ...

    def move(self, src: str, dst: str) -> None: ...

    def listing(self, rel: str) -> dict[str, int | None]:
        """Names of the entries directly under ``rel``, with their sizes where the listing gives them."""
        ...


class LocalFileSystem:
    """A directory on a local (POSIX) filesystem."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def where(self, rel: str) -> str:
        return str(self.root / rel)

    def write_atomic(self, rel: str, produce: Callable[[Path], None]) -> int:
        final = self.root / rel
        with staged_output(final.parent, target=final) as staged:
            produce(staged.tmp)
        return staged.size

    def read(self, rel: str) -> bytearray:
        """The whole file, in a mutable buffer so that tensors can be built on it without a copy."""
        with map_storage_errors(self.root / rel), open(self.root / rel, "rb", buffering=0) as f:
            size = os.fstat(f.fileno()).st_size
            buffer = bytearray(size)
            view = memoryview(buffer)
            while view:
                got = f.readinto(view)
                if not got:
                    raise StorageError(str(self.root / rel), "the file shrank while being read")
                view = view[got:]
            return buffer

    def read_range(self, rel: str, offset: int, length: int | None = None) -> bytes:
        with map_storage_errors(self.root / rel), open(self.root / rel, "rb", buffering=0) as f:
            f.seek(offset)
            return f.read() if length is None else f.read(length)

    def read_heads(self, rels: list[str], length: int) -> list[bytes | Exception]:
        out: list[bytes | Exception] = []
        for rel in rels:
            try:
                out.append(self.read_range(rel, 0, length))
            except (FileNotFoundError, StorageError) as exc:
                out.append(exc)
        return out

    def size(self, rel: str) -> int:
        with map_storage_errors(self.root / rel):
            return (self.root / rel).stat().st_size

    def remove(self, rel: str) -> int:
        with map_storage_errors(self.root / rel):
            return remove_file(self.root / rel)

    def move(self, src: str, dst: str) -> None:
        target = self.root / dst
        with map_storage_errors(target):
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.root / src, target)
            fsync_path(target.parent)

    def listing(self, rel: str) -> dict[str, int | None]:
        """No sizes: a local listing would need a stat per file for them."""
        with map_storage_errors(self.root / rel):
            try:
                with os.scandir(self.root / rel) as entries:
                    return dict.fromkeys(entry.name for entry in entries)
            except FileNotFoundError:
                return {}

    def append_durable(self, rel: str, data: bytes) -> int:
        """Append one or more complete lines and fsync; return the file size afterwards.

        A crash mid-append can leave a torn last line (no trailing newline). That line's operation
        never returned, so it is cut off here before appending, and readers ignore it meanwhile.
        Callers hold the store lock, so appends do not interleave.
        """
        path = self.root / rel
        with map_storage_errors(path):
            created = not path.exists()
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    start = max(0, size - 65536)
                    while True:
                        tail = os.pread(fd, size - start, start)
                        cut = tail.rfind(b"\n")
                        if cut >= 0 or start == 0:
                            break
                        start = max(0, start - 65536)
                    os.ftruncate(fd, start + cut + 1 if cut >= 0 else 0)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
                size = os.fstat(fd).st_size
            finally:
                os.close(fd)
            if created:
                fsync_path(path.parent)
        return size

    def sweep_staging(self, rel_dir: str, grace_s: float) -> tuple[list[str], int]:
        """Remove what crashed writers left in ``rel_dir`` (see ``atomic.stale_staging``); return the
        removed entries (relative paths) and the bytes freed."""
        with map_storage_errors(self.root / rel_dir):
            stale = stale_staging(self.root / rel_dir, grace_s)
            freed = sum(remove_staging(path) for path in stale)
        return [f"{rel_dir}/{path.name}" for path in stale], freed

