"""Where the stage cache keeps its records, results and locks: beside the latent store.

The cache answers with latent IDs, so it is only worth sharing as widely as the store it points
into. Beside a local store it is three local directories under ``<root>/.prefect-cache``; beside a
remote store (``s3://...``) the records and results are remote too, so that a cache hit on one
machine is a hit on every machine sharing the bucket:

- cache records (Prefect's ``key_storage``): an unsaved ``AceCacheStorage`` block (Prefect's
  ``RemoteFileSystem`` with secret settings, ``prefect_acestep.tasks.blocks``) at
  ``<root>/.prefect-cache/keys``, which Prefect accepts as is;
- results (``result_storage``): Prefect's ``Task`` takes only a *saved* block (or a local path)
  there, because a result record names its storage by block document ID for whoever reads it
  later. So an ``AceCacheStorage`` at ``<root>/.prefect-cache/results`` is saved once per store
  and options under a name derived from both (``ace-cache-<hash>``) and referenced by slug. Its
  settings are the store's storage options, kept as a secret (credentials among them are shown
  as ``********`` by the UI and the API).
- locks (isolation SERIALIZABLE, so two runs of one key compute once): ``prefect_acestep.tasks.locking``'s
  ``StageLockManager`` (Prefect's file locks) in a local directory, for a remote store this host's
  cache directory (``prefect_acestep.stages.store.remote.host_cache_dir``). File locks are per host: two hosts racing on the
  same key may both compute (both results are valid; the last record written wins). For one
  computation across hosts, point ``ACE_CACHE_LOCK_MANAGER`` at a lock manager shared by the hosts,
  such as prefect-redis's ``RedisLockManager`` (see the README).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect.locking.protocol import LockManager
from prefect.settings import PREFECT_API_URL

from prefect_acestep.stages.errors import InvalidStageRequest
from prefect_acestep.stages.store.remote import host_cache_dir, split_url
from prefect_acestep.tasks.blocks import AceCacheStorage, AceLatentStore
from prefect_acestep.tasks.locking import StageLockManager

CACHE_DIR = ".prefect-cache"
"""Beside the latents: cache records (keys), their results and their locks."""

LOCK_MANAGER_ENV = "ACE_CACHE_LOCK_MANAGER"
"""``module:attribute`` naming a Prefect ``LockManager`` instance to use for the stage cache."""

@dataclass(frozen=True)
class CacheStorage:
    key_storage: AceCacheStorage | Path
    result_storage: str | Path
    lock_manager: LockManager


def cache_storage(store: AceLatentStore) -> CacheStorage:
    """The cache's storage and locks for tasks that write into ``store``."""
    url = split_url(store.root)
    if url is None:
        base = Path(store.root).expanduser() / CACHE_DIR
        return CacheStorage(base / "keys", base / "results", _lock_manager(base / "locks"))
    options = store.storage_options.get_secret_value()
    root = f"{url[0]}://{url[1]}/{CACHE_DIR}"
    locks = host_cache_dir(f"{url[0]}://{url[1]}", options, None) / "cache-locks"
    return CacheStorage(
        AceCacheStorage(basepath=f"{root}/keys", settings=options),
        _saved_block(f"{root}/results", options),
        _lock_manager(locks),
    )


def _lock_manager(default_directory: Path) -> LockManager:
    spec = os.environ.get(LOCK_MANAGER_ENV, "")
    if not spec:
        return StageLockManager(lock_files_directory=default_directory)
    module, _, attribute = spec.partition(":")
    try:
        manager = getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError, ValueError) as exc:
        raise InvalidStageRequest(f"{LOCK_MANAGER_ENV}={spec!r} does not name an importable object: {exc}") from exc
    if not isinstance(manager, LockManager):
        raise InvalidStageRequest(
            f"{LOCK_MANAGER_ENV}={spec!r} is a {type(manager).__name__}, not a Prefect LockManager"
        )
    return manager


_saved: dict[tuple[str, str], str] = {}
_saved_lock = threading.Lock()


def _saved_block(basepath: str, options: dict[str, Any]) -> str:
    """The slug of a saved ``AceCacheStorage`` at ``basepath``, saving it on first use against this
    Prefect API (see the module docstring for why it must be saved)."""
    identity = json.dumps({"basepath": basepath, "settings": options}, sort_keys=True, default=str)
    name = "ace-cache-" + hashlib.sha256(identity.encode()).hexdigest()[:20]
    key = (str(PREFECT_API_URL.value()), name)
    with _saved_lock:
        if key not in _saved:
            try:
                existing = AceCacheStorage.load(name)
                current = existing.basepath == basepath and existing.settings.get_secret_value() == options
            except ValueError:  # no block of that name yet
                current = False
            if not current:
                AceCacheStorage(basepath=basepath, settings=options).save(name, overwrite=True)
            _saved[key] = f"{AceCacheStorage.get_block_type_slug()}/{name}"
        return _saved[key]
