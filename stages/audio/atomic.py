"""Publish a file only once it is complete.

Readers (the audio store, a user's player, a retried task) must never see half a file: every
writer here fills a hidden temporary file in the destination directory (so the final
``os.replace`` is a same-filesystem atomic rename) and removes it on any failure, including
KeyboardInterrupt, so a failed write or download leaves nothing behind.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Staged:
    """A temporary file and where it goes. ``target`` may be set after writing, when the name
    depends on the content (a digest, the detected format)."""

    tmp: Path
    target: Path | None = None


@contextmanager
def staged_output(directory: Path, *, suffix: str = "", target: Path | None = None) -> Iterator[Staged]:
    """Yield a ``Staged`` temporary file in ``directory``; on success fsync it and rename it onto
    ``staged.target``. Any exception deletes it. ``suffix`` ends the temporary name because
    libsndfile picks a writer, and sometimes a reader, by extension."""
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=".staged-", suffix=f".part{suffix}")
    os.close(fd)
    staged = Staged(Path(tmp_name), target)
    try:
        yield staged
        if staged.target is None:
            raise RuntimeError(f"staged file {staged.tmp} was completed without a target name")
        _fsync_path(staged.tmp)
        os.replace(staged.tmp, staged.target)
    except BaseException:
        staged.tmp.unlink(missing_ok=True)
        raise
    _fsync_path(staged.target.parent)


def _fsync_path(path: Path) -> None:
    """Flush a file's data (or a directory's entries) to disk, so a rename survives a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
