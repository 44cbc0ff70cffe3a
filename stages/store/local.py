"""The local site: a store root in a directory of a local (POSIX) filesystem."""

from __future__ import annotations

from pathlib import Path

from prefect_acestep.stages.storage_errors import map_storage_errors
from prefect_acestep.stages.store import sync
from prefect_acestep.stages.store.files import LATENTS_DIR
from prefect_acestep.stages.store.flow_leases import LEASES_DIR
from prefect_acestep.stages.store.fs import LocalFileSystem
from prefect_acestep.stages.store.index import Index, Row
from prefect_acestep.stages.store.journal import AppendedJournal
from prefect_acestep.stages.store.lock import StoreLock
from prefect_acestep.stages.store.site import LOCK_FILE

INDEX_FILE = "index.sqlite3"


class LocalSite:
    """Latent files and ``journal.jsonl`` in the directory, the index beside them (shared by all
    processes of the host), and ``flock`` on ``.lock``."""

    remote = False

    def __init__(self, directory: Path, lock_timeout_s: float) -> None:
        with map_storage_errors(directory):
            (directory / LATENTS_DIR).mkdir(parents=True, exist_ok=True)
        self.root = directory
        self.fs = LocalFileSystem(directory)
        self.journal = AppendedJournal(self.fs)
        self.lock = StoreLock(directory / LOCK_FILE, lock_timeout_s)
        self.index_path = directory / INDEX_FILE

    def recover(self, index: Index) -> None:
        """Finish what crashed processes of this host left half done (a journaled change not yet in
        the index, a put not yet indexed, a removal whose file remains), under the lock."""
        with self.lock.held():
            sync.catch_up(self, index, remove_files=True)
            sync.reconcile(self, index)

    def refresh(self, index: Index, *, listing: bool = False) -> None:
        """Nothing: every change on this host commits to the one shared index."""

    def adopt(self, index: Index, latent_id: str) -> Row | None:
        """None: every put indexes its latent, and a put killed before that is indexed by the next
        open or gc (``recover``, ``reconcile``)."""
        return None

    def sweep(self, grace_s: float) -> tuple[list[str], int]:
        """Staging directories of writers that died (or, from another host, are older than ``grace_s``)."""
        latents, freed = self.fs.sweep_staging(LATENTS_DIR, grace_s)
        leases, lease_bytes = self.fs.sweep_staging(LEASES_DIR, grace_s)
        return latents + leases, freed + lease_bytes
