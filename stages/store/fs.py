"""The only place the store touches the filesystem.

Everything above this module speaks in paths relative to the store root and in bytes; the remote
filesystem (``remote.FsspecFileSystem``) is one more class with these methods. The local class
gives the durability the store relies on: a write is either absent or complete under its final
name (temp file next to it, fsync, rename, fsync of the directory), and an appended journal line is
on disk before ``append_durable`` returns.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

_TEMP_PREFIX = ".tmp~"
_HOST = socket.gethostname().replace("~", "_")


class FileSystem(Protocol):
    """What the store needs from a filesystem (paths relative to the store root).

    ``can_append`` picks the journal's layout (``journal.py``): ``append_durable`` is called only
    where it is true; where it is false the filesystem is an ``ObjectFileSystem``."""

    can_append: bool

    def makedirs(self, rel: str) -> None: ...
    def write_atomic(self, rel: str, produce: Callable[[Path], None]) -> int: ...
    def read(self, rel: str) -> bytearray: ...
    def read_range(self, rel: str, offset: int, length: int | None = None) -> bytes: ...
    def size(self, rel: str) -> int: ...
    def exists(self, rel: str) -> bool: ...
    def remove(self, rel: str) -> int: ...
    def remove_temp(self, rel: str) -> int: ...
    def move(self, src: str, dst: str) -> None: ...
    def list_dir(self, rel: str) -> list[str]: ...
    def listing(self, rel: str) -> dict[str, int | None]: ...
    def read_heads(self, rels: list[str], length: int) -> list[bytes | Exception]: ...
    def append_durable(self, rel: str, data: bytes) -> int: ...
    def stale_temps(self, rel_dir: str, grace_s: float) -> list[str]: ...
    def is_temp(self, name: str) -> bool: ...


class ObjectFileSystem(FileSystem, Protocol):
    """A filesystem without append, whose journal is one object per change."""

    def create_exclusive(self, rel: str, data: bytes) -> bool: ...
    def read_many(self, rels: list[str]) -> list[bytes | Exception]: ...


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


class LocalFileSystem:
    """A directory on a local (POSIX) filesystem."""

    can_append = True

    def __init__(self, root: Path) -> None:
        self.root = root

    def makedirs(self, rel: str) -> None:
        (self.root / rel).mkdir(parents=True, exist_ok=True)

    def write_atomic(self, rel: str, produce: Callable[[Path], None]) -> int:
        """Have ``produce`` write a file's content to a temp path, then make it ``rel`` durably:
        ``rel`` either keeps its old state or holds everything ``produce`` wrote. Returns the size.

        Taking a producer rather than bytes lets writers that stream to a path (safetensors'
        ``save_file`` writes straight from tensor memory) skip building the file in memory first.
        The temp path lies in a staging directory of its own, next to ``rel``: producers may make
        temp files of their own there (``save_file`` does), and the directory's name carries host
        and pid so that ``stale_temps`` can tell a crashed writer's leftovers from a live writer's.
        """
        final = self.root / rel
        stage = final.with_name(f"{_TEMP_PREFIX}{_HOST}~{os.getpid()}~{secrets.token_hex(4)}")
        stage.mkdir()
        try:
            temp = stage / final.name
            produce(temp)
            fd = os.open(temp, os.O_RDONLY)
            try:
                os.fchmod(fd, 0o644)  # save_file makes 0600 files; other users of the store must read them
                os.fsync(fd)
                size = os.fstat(fd).st_size
            finally:
                os.close(fd)
            os.replace(temp, final)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
        stage.rmdir()
        _fsync_dir(final.parent)
        return size

    def read(self, rel: str) -> bytearray:
        """The whole file, in a mutable buffer so that tensors can be built on it without a copy."""
        with open(self.root / rel, "rb", buffering=0) as f:
            size = os.fstat(f.fileno()).st_size
            buffer = bytearray(size)
            view = memoryview(buffer)
            while view:
                got = f.readinto(view)
                if not got:
                    raise OSError(f"{rel} shrank while being read")
                view = view[got:]
            return buffer

    def read_range(self, rel: str, offset: int, length: int | None = None) -> bytes:
        with open(self.root / rel, "rb", buffering=0) as f:
            f.seek(offset)
            return f.read() if length is None else f.read(length)

    def size(self, rel: str) -> int:
        return (self.root / rel).stat().st_size

    def exists(self, rel: str) -> bool:
        return (self.root / rel).exists()

    def remove(self, rel: str) -> int:
        """Remove ``rel`` if present; return the bytes freed (0 if it was already gone)."""
        path = self.root / rel
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return 0
        return size

    def remove_temp(self, rel: str) -> int:
        """Remove a leftover staging directory (or file) from ``stale_temps``; return bytes freed."""
        path = self.root / rel
        if not path.is_dir():
            return self.remove(rel)
        freed = sum(entry.stat().st_size for entry in path.rglob("*") if entry.is_file())
        shutil.rmtree(path, ignore_errors=True)
        return freed

    def move(self, src: str, dst: str) -> None:
        target = self.root / dst
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.root / src, target)
        _fsync_dir(target.parent)

    def list_dir(self, rel: str) -> list[str]:
        try:
            with os.scandir(self.root / rel) as entries:
                return [entry.name for entry in entries]
        except FileNotFoundError:
            return []

    def listing(self, rel: str) -> dict[str, int | None]:
        """Names under ``rel``; no sizes (a local listing would need a stat per file for them)."""
        return dict.fromkeys(self.list_dir(rel))

    def read_heads(self, rels: list[str], length: int) -> list[bytes | Exception]:
        """The first ``length`` bytes of each file, the exception in place of an unreadable one."""
        out: list[bytes | Exception] = []
        for rel in rels:
            try:
                out.append(self.read_range(rel, 0, length))
            except OSError as exc:
                out.append(exc)
        return out

    def append_durable(self, rel: str, data: bytes) -> int:
        """Append one or more complete lines and fsync; return the file size afterwards.

        A crash mid-append can leave a torn last line (no trailing newline). That line's operation
        never returned, so it is cut off here before appending, and readers ignore it meanwhile.
        Callers hold the store lock, so appends do not interleave.
        """
        path = self.root / rel
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
            _fsync_dir(path.parent)
        return size

    def is_temp(self, name: str) -> bool:
        return name.startswith(_TEMP_PREFIX)

    def stale_temps(self, rel_dir: str, grace_s: float) -> list[str]:
        """Staging entries (relative paths) of writers that are dead, or older than ``grace_s``."""
        stale = []
        now = time.time()
        for name in self.list_dir(rel_dir):
            if not self.is_temp(name):
                continue
            rel = f"{rel_dir}/{name}"
            try:
                age = now - (self.root / rel).stat().st_mtime
            except FileNotFoundError:
                continue  # its writer just renamed or removed it
            parts = name[len(_TEMP_PREFIX) :].split("~")
            dead = len(parts) >= 3 and parts[0] == _HOST and parts[1].isdigit() and not _pid_alive(int(parts[1]))
            if dead or age > grace_s:
                stale.append(rel)
        return stale
