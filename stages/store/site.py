"""Where a store's latents live: a local directory or a remote bucket, one class each behind one
protocol, so that ``LatentStore`` never asks which.

A site owns four things that differ between the two:

- its filesystem (``fs.FileSystem``: local files, or objects through fsspec);
- its journal layout (``journal.Journal``: one appended file, or one object per change);
- its lock (``Lock``: ``flock`` on a file, or a lease object held by compare-and-swap);
- its refresh behaviour: what a lookup must do first so this process's index knows what other
  writers did. All processes of a host share a local store's index, and each change commits to it,
  so a local index is never behind and ``refresh`` does nothing; a remote store's index is a cache
  per host, and learns of other hosts' work lazily (``remote.RemoteSite``).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol

from prefect_acestep.stages.store.fs import FileSystem
from prefect_acestep.stages.store.index import Index, Row
from prefect_acestep.stages.store.journal import Journal

LOCK_FILE = ".lock"


class Lock(Protocol):
    """The store-wide lock of lifecycle changes: reentrant in one thread, exclusive between threads,
    processes and (remote) hosts; ``StoreBusy`` when it cannot be taken in time."""

    def held(self) -> AbstractContextManager[None]: ...


class Site(Protocol):
    """Where one store's latents live (``local.LocalSite``, ``remote.RemoteSite``)."""

    root: Path | str
    """The root as users see it: a directory, or a URL."""
    remote: bool
    """Whether other hosts may share the latents (for callers that report it; the store never asks)."""
    fs: FileSystem
    journal: Journal
    lock: Lock
    index_path: Path
    """Where this process keeps the index (``:memory:`` for a ``memory://`` store)."""

    def recover(self, index: Index) -> None:
        """Bring a just-opened index in line with the files and the journal."""
        ...

    def refresh(self, index: Index, *, listing: bool = False) -> None:
        """Before a lookup: apply what other writers changed that ``index`` may lack; ``listing``
        (before ``list`` and ``lineage``) also indexes latents they put."""
        ...

    def adopt(self, index: Index, latent_id: str) -> Row | None:
        """A latent ``index`` does not know and has no tombstone for: its row, if another writer put
        it and the site lets this process find it now; else None."""
        ...

    def sweep(self, grace_s: float) -> tuple[list[str], int]:
        """Remove what crashed writers left behind (older than ``grace_s`` where the writer cannot
        be checked); return the removed paths, relative to the root, and the bytes freed."""
        ...

