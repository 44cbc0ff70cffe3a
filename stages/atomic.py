"""Publish a file only once it is complete: how the project writes every file others read (latents,
bundles, audio).

Readers (the store, a user's player, a retried task) must never see half a file, and a crash or a
power cut must leave the target either as it was or complete. So a writer fills a file inside a
staging directory of its own next to the target (the final ``os.replace`` is then a rename within
one filesystem), fsyncs it, renames it onto the target and fsyncs the directory. Any failure,
KeyboardInterrupt included, removes the staging directory.

A staging directory rather than a bare temp file, because producers may make temp files of their
own beside the path they are given (safetensors' ``save_file`` does). Its name carries host and pid
(``.tmp~<host>~<pid>~<random>``), so what a killed writer left behind can be told from a live
writer's work: ``stale_staging`` lists the leftovers, ``remove_staging`` clears one.

Storage failures anywhere inside (a full disk, a read-only directory) come out typed
(``storage_errors``).
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from prefect_acestep.stages.processes import HOST, process_gone
from prefect_acestep.stages.errors import StorageError
from prefect_acestep.stages.storage_errors import map_storage_errors

STAGING_PREFIX = ".tmp~"
_HOST_TAG = HOST.replace("~", "_")  # "~" separates the fields of a staging name


@dataclass
class Staged:
    """Where to write (``tmp``) and where it goes (``target``, which may be set after writing, when
    the name depends on the content: a digest, the detected format). ``size`` is the published
    file's size."""

    tmp: Path
    target: Path | None = None
    size: int = 0


@contextmanager
def staged_output(directory: Path, *, target: Path | None = None, suffix: str = "") -> Iterator[Staged]:
    """Yield a ``Staged`` file in a new staging directory in ``directory``; when the block ends
    without error, publish it durably onto ``staged.target`` (which must lie in ``directory``).

    The temporary file is named like the target when that is known, else ``part<suffix>``: libsndfile
    picks a writer, and sometimes a reader, by extension. The published file is readable by all
    (mode 0644), as the store's other users must read what one user wrote.
    """
    with map_storage_errors(directory):
        if target is not None:
            _check_replaceable(target)  # before any work: a device or a directory is never replaced
        stage = directory / f"{STAGING_PREFIX}{_HOST_TAG}~{os.getpid()}~{secrets.token_hex(4)}"
        try:
            stage.mkdir()
        except FileNotFoundError:  # a new directory (the store's exists: no extra system call there)
            directory.mkdir(parents=True, exist_ok=True)
            try:
                stage.mkdir()
            except FileNotFoundError as exc:  # a directory that holds no files of ours (/proc)
                raise StorageError(str(directory), f"cannot create files there ({exc.strerror})") from exc
        staged = Staged(stage / (target.name if target is not None else f"part{suffix}"), target)
        try:
            yield staged
            if staged.target is None:
                raise RuntimeError(f"staged file {staged.tmp} was completed without a target name")
            staged.size = _seal(staged.tmp)
            _check_replaceable(staged.target)
            os.replace(staged.tmp, staged.target)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
        stage.rmdir()
        fsync_path(staged.target.parent)


def _check_replaceable(target: Path) -> None:
    """Refuse to publish over anything but a regular file (or a symlink, which is replaced, not
    followed): ``os.replace`` would swap a device node such as ``/dev/full`` for our file, and fails
    on a directory only after the work is done."""
    try:
        mode = os.lstat(target).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, "is a directory; give a file name", str(target))
    if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
        raise OSError(errno.EINVAL, "exists and is not a regular file (a device, a FIFO or a socket); "
                      "refusing to replace it", str(target))  # fmt: skip


def _seal(path: Path) -> int:
    """Make ``path`` readable by all and flush it to disk; return its size."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fchmod(fd, 0o644)
        os.fsync(fd)
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


def fsync_path(path: Path) -> None:
    """Flush a file's data, or a directory's entries, to disk (so that a rename survives a crash)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def is_staging(name: str) -> bool:
    return name.startswith(STAGING_PREFIX)


def stale_staging(directory: Path, grace_s: float) -> list[Path]:
    """Staging entries in ``directory`` whose writer is gone from this host, or older than
    ``grace_s`` (a writer on another host cannot be checked)."""
    stale = []
    now = time.time()
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    for name in names:
        if not is_staging(name):
            continue
        path = directory / name
        try:
            age = now - path.stat().st_mtime
        except FileNotFoundError:
            continue  # its writer just published or removed it
        fields = name[len(STAGING_PREFIX) :].split("~")  # host, pid, random (and more, from older writers)
        pid = int(fields[1]) if len(fields) >= 3 and fields[1].isdigit() else None
        if age > grace_s or process_gone(fields[0], pid):
            stale.append(path)
    return stale


def remove_file(path: Path) -> int:
    """Remove ``path`` if present; return the bytes freed (0 if it was already gone)."""
    try:
        size = path.stat().st_size
        path.unlink()
    except FileNotFoundError:
        return 0
    return size


def remove_staging(path: Path) -> int:
    """Remove a leftover from ``stale_staging`` (a directory, or a file of older writers); return
    the bytes freed."""
    if not path.is_dir():
        return remove_file(path)
    freed = sum(entry.stat().st_size for entry in path.rglob("*") if entry.is_file())
    shutil.rmtree(path, ignore_errors=True)
    return freed
