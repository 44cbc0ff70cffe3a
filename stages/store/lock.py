"""The store-wide lock that serializes lifecycle changes across processes.

Puts do not take it (SQLite orders their index inserts); pin, unpin, delete, gc, import and the
consistency pass at open do, because each of them appends to the journal and then changes the index,
and a gc deciding what to remove must not interleave with a pin of the same latent.

This is the local site's lock (``filelock``: ``flock`` on a file beside the latents, per host). The
remote site's is ``lease.LeaseLock``, an object held by compare-and-swap; both are ``site.Lock``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import filelock

from prefect_acestep.stages.errors import StoreBusy
from prefect_acestep.stages.storage_errors import map_storage_errors


class StoreLock:
    """Reentrant in one thread; exclusive between threads and processes."""

    def __init__(self, path: Path, timeout_s: float) -> None:
        self.path = path
        self.timeout_s = timeout_s
        # thread_local: threads of one process exclude each other as well as other processes.
        self._lock = filelock.FileLock(path, timeout=timeout_s, thread_local=True, poll_interval=0.005)

    @contextmanager
    def held(self) -> Iterator[None]:
        with map_storage_errors(self.path):  # a read-only store cannot create or open its lock file
            try:
                self._lock.acquire()
            except filelock.Timeout as exc:  # a TimeoutError, which must not read as a storage failure
                raise StoreBusy(
                    f"latent store lock {self.path} is held by another process; gave up after {self.timeout_s} s"
                ) from exc
        try:
            yield
        finally:
            self._lock.release()
