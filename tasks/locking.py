"""The stage cache's lock manager: Prefect's file locks, made safe against killed holders.

With SERIALIZABLE isolation a stage task holds a lock file on its cache key while it runs, so a
second run of the same key waits and then reads the first one's result. Prefect's
``FileSystemLockManager`` writes locks without an expiry and without saying which process holds
them (the holder is a transaction id), so a worker killed mid-stage (OOM killer, ``kill -9``)
leaves a lock that makes every later run of that stage wait forever.

This manager writes the holding process (host and pid) into the lock and treats a lock whose
process is gone from this host as free. A lock held from another host cannot be checked here and
is still waited for. It also creates each lock file whole (written aside, then hard-linked into
place), where Prefect creates an empty file and writes it afterwards, so a reader never sees half
a lock. Two waiters that both find the same dead lock may both run the stage once: duplicate work,
never a wrong result.
"""

from __future__ import annotations

import os
import uuid
from datetime import timedelta
from pathlib import Path

import pydantic_core
from loguru import logger
from prefect.locking.filesystem import FileSystemLockManager
from prefect.types._datetime import now

from prefect_acestep.stages.processes import HOST, process_gone


class StageLockManager(FileSystemLockManager):
    """``FileSystemLockManager`` whose locks name their process (see the module docstring)."""

    def acquire_lock(
        self, key: str, holder: str, acquire_timeout: float | None = None, hold_timeout: float | None = None
    ) -> bool:
        self._ensure_lock_files_directory_exists()
        lock_path = Path(self._lock_path_for_key(key))
        if self.is_locked(key) and not self.is_lock_holder(key, holder):
            if not self.wait_for_lock(key, acquire_timeout):
                return False
        expiration = now("UTC") + timedelta(seconds=hold_timeout) if hold_timeout is not None else None
        payload = {
            "holder": holder,
            "expiration": None if expiration is None else str(expiration),
            "host": HOST,
            "pid": os.getpid(),
        }
        staged = lock_path.with_name(f".{lock_path.name}.{uuid.uuid4().hex}")
        staged.write_bytes(pydantic_core.to_json(payload))
        try:
            os.link(staged, lock_path)  # creates the lock whole, or fails if someone holds it
        except FileExistsError:
            if not self.is_lock_holder(key, holder):
                return self.acquire_lock(key, holder, acquire_timeout, hold_timeout)
        finally:
            staged.unlink(missing_ok=True)
        self._locks[key] = {"holder": holder, "expiration": expiration, "path": lock_path}
        return True

    def is_locked(self, key: str, use_cache: bool = False) -> bool:
        info = self._get_lock_info(key, use_cache=use_cache)
        if info is None:
            return False
        if process_gone(info.get("host"), info.get("pid")):  # our locks carry host and pid
            logger.warning("cache lock {} was held by process {}, which is gone; freeing it", key, info.get("pid"))
            Path(info["path"]).unlink(missing_ok=True)
            self._locks.pop(key, None)
            return False
        return super().is_locked(key, use_cache=True)
