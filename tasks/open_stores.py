"""One open ``LatentStore`` per store configuration per process.

Opening a store is real work: it takes the store lock, catches the index up on the journal and
reconciles it with the files (a remote store lists its bucket). A stage touches its store several
times (cache key, run, audio), so every task of a process shares one open store, whose index
connection is safe for several threads; it is closed when the interpreter exits.

A forked child never touches its parent's open stores (SQLite connections must not cross a fork):
stores are keyed by process id, so the child opens its own.
"""

from __future__ import annotations

import atexit
import json
import os
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prefect_acestep.stages.store import LatentStore

_StoreKey = tuple[int, str, float, int | None, str]

_open: dict[_StoreKey, LatentStore] = {}
_lock = threading.Lock()


def open_store(
    root: str, ttl_hours: float, max_bytes: int | None, storage_options: dict[str, Any]
) -> LatentStore:
    """This process's open store for these settings, opened on first use."""
    key = (os.getpid(), root, ttl_hours, max_bytes, json.dumps(storage_options, sort_keys=True, default=repr))
    with _lock:
        store = _open.get(key)
        if store is None:
            from prefect_acestep.stages.store import LatentStore

            store = LatentStore(root, ttl_hours=ttl_hours, max_bytes=max_bytes, storage_options=storage_options)
            _open[key] = store
        return store


def close_stores() -> None:
    """Close the stores this process opened; the next ``open_store`` opens afresh."""
    pid = os.getpid()
    with _lock:
        mine = [key for key in _open if key[0] == pid]
        stores = [_open.pop(key) for key in mine]
    for store in stores:
        store.close()


def _new_lock_in_child() -> None:
    """A thread of the parent may have held the lock when another forked: the child starts free."""
    global _lock
    _lock = threading.Lock()


atexit.register(close_stores)
os.register_at_fork(after_in_child=_new_lock_in_child)
