"""The store-wide lock of a remote store: a lease held in one object, by compare-and-swap.

``filelock`` needs a filesystem with ``flock``; an object store has none, and its users sit on
several hosts. So the lock is an object (``<root>/.lock``) whose content says who holds it:

- acquire: create it exclusively (``If-None-Match: *``); if it exists and says ``released``,
  replace it if it is still that version (``If-Match``);
- hold: a heartbeat thread rewrites it (``If-Match`` its own last version) every third of the lease,
  which changes its version tag;
- release: replace it with a ``released`` body (``If-Match``), so nothing is ever deleted and the
  object's history is one chain of compare-and-swaps;
- a crashed holder stops beating: a waiter that sees the same version for a whole lease, measured on
  its own monotonic clock, replaces that version and so takes over. No clocks are compared between
  hosts, so clock skew cannot make a lease look expired early.

A holder paused longer than the lease (a stopped VM, ``SIGSTOP``) may wake up after a takeover still
believing it holds the lock. The lock is therefore not what keeps the store consistent: every change
it guards commits by creating the next journal object exclusively (``journal.py``), so of two
writers that both believe they hold the lock exactly one commits and the other raises ``StoreBusy``
before touching the index or any file. The lease only keeps that from being the normal case.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from loguru import logger

from prefect_acestep.stages.errors import StorageError, StoreBusy

if TYPE_CHECKING:
    from prefect_acestep.stages.store.remote import RemoteFileSystem

DEFAULT_LEASE_S = 30.0


class LeaseLock:
    """A reentrant (per thread) lock over one object; see the module docstring."""

    def __init__(self, fs: RemoteFileSystem, rel: str, timeout_s: float, lease_s: float = DEFAULT_LEASE_S):
        if not lease_s > 0:
            raise ValueError(f"lease_s must be > 0, got {lease_s}")
        self.fs = fs
        self.rel = rel
        self.path = fs.where(rel)
        self.timeout_s = timeout_s
        self.lease_s = lease_s
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        self._local = threading.RLock()  # threads of this process queue here, not on the server
        self._depth = 0
        self._version = ""
        self._released = ""  # the version our last release wrote: if still current, one replace takes it
        self._beats = 0
        self._token = ""
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self.lost = False

    def _body(self, state: str) -> bytes:
        return json.dumps(
            {"state": state, "owner": self.owner, "token": self._token, "beat": self._beats, "lease_s": self.lease_s}
        ).encode()

    @contextmanager
    def held(self) -> Iterator[None]:
        deadline = time.monotonic() + self.timeout_s
        if not self._local.acquire(timeout=self.timeout_s):
            raise StoreBusy(
                f"latent store lock {self.path}: another thread of this process held it for {self.timeout_s} s"
            )
        try:
            if self._depth == 0:
                self._acquire(deadline)
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    self._release()
        finally:
            self._local.release()

    def _acquire(self, deadline: float) -> None:
        self._token = secrets.token_hex(16)
        self._beats = 0
        self.lost = False
        seen_version, seen_since = "", 0.0
        wait = 0.01
        if self._released:
            version = self.fs.replace(self.rel, self._body("held"), self._released)
            if version is not None:
                self._start(version)
                return
        while True:
            body = self._body("held")
            version = self.fs.create(self.rel, body)
            if version is None:
                current = self.fs.read_versioned(self.rel)
                if current is None:
                    continue  # cannot happen with this protocol (nothing deletes the lock); retry
                data, current_version = current
                holder = _parse(data)
                now = time.monotonic()
                if current_version != seen_version:
                    seen_version, seen_since = current_version, now
                if holder.get("token") == self._token:
                    version = current_version  # our create succeeded but its answer was lost
                elif holder.get("state") == "released":
                    version = self.fs.replace(self.rel, body, current_version)
                elif now - seen_since >= max(self.lease_s, float(holder.get("lease_s", 0) or 0)):
                    version = self.fs.replace(self.rel, body, current_version)
                    if version is not None:
                        logger.warning(
                            "latent store lock {}: took over the lease of {} (no heartbeat for {:.1f} s)",
                            self.path, holder.get("owner", "?"), now - seen_since,
                        )  # fmt: skip
                if version is None:
                    if now >= deadline:
                        raise StoreBusy(
                            f"latent store lock {self.path} is held by {holder.get('owner', 'an unknown owner')}; "
                            f"gave up after {self.timeout_s} s"
                        )
                    time.sleep(min(wait, max(0.0, deadline - now)) * (0.5 + random.random()))
                    wait = min(wait * 2, 0.25)
                    continue
            self._start(version)
            return

    def _start(self, version: str) -> None:
        self._version = version
        self._released = ""
        self._stop.clear()
        self._heartbeat = threading.Thread(target=self._beat, name="latent-store-lease", daemon=True)
        self._heartbeat.start()

    def _beat(self) -> None:
        """Renew every third of the lease; a failed compare-and-swap means the lease was taken."""
        while not self._stop.wait(self.lease_s / 3):
            self._beats += 1
            try:
                version = self.fs.replace(self.rel, self._body("held"), self._version)
            except StorageError as exc:  # a network hiccup: try again next beat, the lease has slack
                logger.warning("latent store lock {}: heartbeat failed ({}); retrying", self.path, exc)
                continue
            if version is None:
                self.lost = True
                logger.error("latent store lock {}: the lease was taken over while held", self.path)
                return
            self._version = version

    def _release(self) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
            self._heartbeat = None
        if self.lost:
            return
        released = self.fs.replace(self.rel, self._body("released"), self._version)
        if released is None:
            logger.error("latent store lock {}: the lease was taken over before release", self.path)
        self._released = released or ""


def _parse(data: bytes) -> dict:
    """The lock body, or {} for an unreadable one (then it is judged by its version's age alone)."""
    try:
        body = json.loads(data)
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
