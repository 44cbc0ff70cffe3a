"""``LatentStore``: the facade the stages and tasks use. It composes the pieces of this package:
IDs (``ids``), file format (``files``), the site the latents live on (``site``: a local directory,
``local.py``, or a remote bucket, ``remote.py``, each with its filesystem, journal layout, lock and
refresh behaviour), the SQLite index (``index``), recovery (``sync``), retention rules
(``retention``) and bundles (``bundle``).

``root`` is a local directory or a remote filesystem URL (``s3://bucket/prefix``, ``memory://x``;
see ``remote.py`` for what each guarantee rests on there). Layout under ``root``::

    latents/<id>.safetensors   tensor + extras + record (source of truth)
    journal.jsonl              pins, unpins, removals (tombstones), revivals (local)
    journal/<n>.jsonl          the same, one object per change (remote: no append)
    index.sqlite3              cache of the above, rebuilt when missing or unreadable (local; a
                               remote store's index is a per-host cache under ``index_dir``)
    corrupt/                   unreadable latent files, moved aside for inspection (at open, gc,
                               or the first read that fails a digest), their records tombstoned
    leases/                    leases of running flows on the latents they still need (``flow_leases``)
    .lock                      store-wide lock for lifecycle changes (remote: a lease object)

A remote store's index learns of other hosts' work lazily: every lookup first applies journal
changes it has not seen (one request when there are none), a lookup that misses checks for the
latent's object before answering ``LatentNotFound``, and ``list``/``lineage`` list the latents
first. ``gc`` does the full reconciliation, under the lock.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from loguru import logger
from pydantic import ValidationError

from prefect_acestep.stages.errors import (
    BundleError,
    InvalidStageRequest,
    LatentCorrupt,
    LatentDeleted,
    LatentExpired,
    LatentNotFound,
    StageError,
)
from prefect_acestep.stages.records import LatentRecord
from prefect_acestep.stages.storage_errors import map_storage_errors
from prefect_acestep.stages.store import files, flow_leases, sync
from prefect_acestep.stages.store.bundle import BundleEntry, BundleItem, open_bundle, write_bundle
from prefect_acestep.stages.store.files import CORRUPT_DIR, SUFFIX, latent_rel
from prefect_acestep.stages.store.ids import new_latent_id, validate_latent_id
from prefect_acestep.stages.store.index import Index, IndexUnreadable, Row, from_epoch, to_epoch
from prefect_acestep.stages.store.journal import Event, RemovalReason
from prefect_acestep.stages.store.lease import DEFAULT_LEASE_S
from prefect_acestep.stages.store.local import LocalSite
from prefect_acestep.stages.store.models import GcReport, Lineage, RemovedLatent
from prefect_acestep.stages.store.remote import RemoteSite, local_path_of, split_url
from prefect_acestep.stages.store.retention import expiry, is_expired, plan_gc
from prefect_acestep.stages.store.site import Site

TEMP_GRACE_S = 3600.0
"""A temp file whose writer we cannot check (another host) is presumed abandoned after this long."""

_STORE_FILLED = frozenset({"id", "digest", "shape", "dtype", "size_bytes", "created_at", "expires_at"})


class LatentStore:
    """Latents in a local directory or under a remote URL, with provenance, TTL, pins,
    lineage-aware gc and bundles.

    Safe for several processes and threads at once (and, on a remote root, several hosts). Every
    read of a latent verifies its digest; a latent past its TTL is never returned, whether or not
    gc has collected it yet.

    ``storage_options`` go to fsspec for a URL root (s3fs: ``endpoint_url``, ``profile``, ...;
    s3fs/botocore also read ``AWS_ENDPOINT_URL`` and the usual credential variables). ``index_dir``
    is where this host caches a remote store's index (default ``$ACE_INDEX_DIR`` or
    ``~/.cache/prefect-acestep/index``). ``lease_s`` is how long a remote lock outlives a crashed
    holder.
    """

    def __init__(
        self,
        root: str | Path,
        ttl_hours: float = 24,
        max_bytes: int | None = None,
        *,
        lock_timeout_s: float = 30.0,
        storage_options: dict[str, Any] | None = None,
        index_dir: str | Path | None = None,
        lease_s: float = DEFAULT_LEASE_S,
    ) -> None:
        if not ttl_hours > 0:
            raise InvalidStageRequest(f"ttl_hours must be > 0, got {ttl_hours}")
        if max_bytes is not None and max_bytes < 0:
            raise InvalidStageRequest(f"max_bytes must be >= 0 or None, got {max_bytes}")
        self.ttl_hours = float(ttl_hours)
        self.max_bytes = max_bytes
        self.site = open_site(
            root, storage_options=storage_options, index_dir=index_dir, lock_timeout_s=lock_timeout_s, lease_s=lease_s
        )
        self.root = self.site.root
        self._index = self._open_index(self.site.index_path)
        self.site.recover(self._index)

    @property
    def remote(self) -> bool:
        """Whether the latents live on a remote filesystem (several hosts may share them)."""
        return self.site.remote

    def __repr__(self) -> str:
        return f"LatentStore({str(self.root)!r}, ttl_hours={self.ttl_hours}, max_bytes={self.max_bytes})"

    def __enter__(self) -> LatentStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._index.close()

    # --- opening and recovery -----------------------------------------------------------------

    def _open_index(self, path: Path) -> Index:
        """The index, rebuilt from the files when it is missing, unreadable or never finished. An
        unreadable one is replaced under the lock, so that no other process of this host replaces
        the new one while this one opens it."""
        try:
            index = Index(path)
        except IndexUnreadable:
            with self.site.lock.held():
                try:
                    index = Index(path)  # replaced by another process while this one waited?
                except IndexUnreadable as exc:
                    logger.warning("latent store {}: index unreadable ({}); rebuilding it", self.root, exc)
                    with map_storage_errors(path):
                        for suffix in ("", "-wal", "-shm"):
                            Path(f"{path}{suffix}").unlink(missing_ok=True)
                    index = Index(path)
        if not index.is_built():
            with self.site.lock.held():
                sync.rebuild(self.site, index)
        return index

    def rebuild_index(self) -> None:
        """Recreate the index from the latent files and the journal alone (in place, atomically)."""
        with self.site.lock.held():
            sync.rebuild(self.site, self._index)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the store lock with the index caught up on the journal (another process may have
        crashed between its journal append and its index commit), so files may be removed."""
        with self.site.lock.held():
            sync.catch_up(self.site, self._index, remove_files=True)
            yield

    # --- writing --------------------------------------------------------------------------------

    def put(self, tensor: torch.Tensor, *, extras: dict[str, torch.Tensor] | None = None, **fields: Any) -> str:
        """Store ``tensor`` (and named ``extras``, covered by their own digest) with the given
        ``LatentRecord`` fields; return the new latent ID. The file is complete on disk before the
        ID is returned."""
        filled = sorted(_STORE_FILLED & fields.keys())
        if filled:
            raise InvalidStageRequest(f"put() sets {', '.join(filled)} itself; do not pass them")
        tensor = _plain_tensor(tensor, "tensor")
        extras = _plain_extras(extras, tensor)
        if "batch_size" not in fields and tensor.dim() >= 1:
            fields["batch_size"] = tensor.shape[0]
        now = datetime.now(UTC)
        try:
            record = LatentRecord.model_validate(
                {
                    **fields,
                    "id": new_latent_id(),
                    "shape": list(tensor.shape),
                    "dtype": files.dtype_name(tensor),
                    "created_at": now,
                }
            )
        except ValidationError as exc:
            raise InvalidStageRequest(f"invalid latent record fields: {exc}") from exc
        if tensor.dim() >= 1 and record.batch_size != tensor.shape[0]:
            raise InvalidStageRequest(
                f"batch_size {record.batch_size} does not match the tensor's first dimension {tensor.shape[0]}"
            )
        for parent in record.parent_ids:
            validate_latent_id(parent)
        record = record.model_copy(update={"expires_at": expiry(now, record.ttl_hours, self.ttl_hours)})
        digests = _digest_thread().submit(lambda: (files.tensor_digest(tensor), files.extras_digest(extras)))
        digest, size = self._write(record, tensor, extras, digests)
        record = record.model_copy(update={"digest": digest, "size_bytes": size})
        self._index.insert_now(record, record.pinned, to_epoch(now))
        return record.id

    def _write(
        self,
        record: LatentRecord,
        tensor: torch.Tensor,
        extras: dict[str, torch.Tensor],
        digests: Future[tuple[str, str]],
    ) -> tuple[str, int]:
        """Write the latent file atomically while its digests are computed; return the main
        tensor's digest and the file's size."""
        size = self.site.fs.write_atomic(
            latent_rel(record.id), lambda path: files.write_latent(path, record, tensor, extras, digests.result)
        )
        return digests.result()[0], size

    def pin(self, latent_id: str) -> None:
        """Keep ``latent_id`` and its ancestors through every gc until ``unpin``."""
        self._set_pinned(latent_id, True)

    def unpin(self, latent_id: str) -> None:
        """Let ``latent_id`` expire again by its TTL (immediately, if that has passed)."""
        self._set_pinned(latent_id, False)

    def _set_pinned(self, latent_id: str, pinned: bool) -> None:
        with self._locked():
            row = self._resolve(latent_id)
            if row.pinned == pinned:
                return
            event = Event("pin" if pinned else "unpin", latent_id, time.time())
            end = self.site.journal.append([event], after=self._index.journal_offset())
            with self._index.transaction() as db:
                Index.set_pinned(db, latent_id, pinned)
                Index.set_journal_offset(db, end)

    def delete(self, latent_id: str) -> None:
        """Remove ``latent_id`` now, pinned or not, leaving a tombstone so later reads raise
        ``LatentDeleted``. Deleting a latent that is already gone raises why it is gone."""
        with self._locked():
            validate_latent_id(latent_id)
            if self._index.row(latent_id) is None:
                self._resolve(latent_id)  # raises NotFound / Deleted / Expired / Corrupt
            self._remove([(latent_id, "deleted", time.time())])

    def _remove(self, removals: list[tuple[str, RemovalReason, float]]) -> int:
        """Journal, then index, then files: a crash at any point leaves a state that the next
        ``catch_up_journal`` or ``reconcile`` completes. Returns the bytes freed."""
        if not removals:
            return 0
        events = [Event("remove", i, at, reason) for i, reason, at in removals]
        end = self.site.journal.append(events, after=self._index.journal_offset())
        with self._index.transaction() as db:
            Index.remove(db, removals)
            Index.set_journal_offset(db, end)
        return sum(self.site.fs.remove(latent_rel(latent_id)) for latent_id, _, _ in removals)

    # --- reading --------------------------------------------------------------------------------

    def _resolve(self, latent_id: str) -> Row:
        """The live row of ``latent_id``, or the typed error saying why there is none."""
        validate_latent_id(latent_id)
        self.site.refresh(self._index)
        row = self._index.row(latent_id)
        if row is None and self._index.tombstone(latent_id) is None:
            row = self.site.adopt(self._index, latent_id)
        if row is None:
            tombstone = self._index.tombstone(latent_id)
            if tombstone is None:
                raise LatentNotFound(latent_id)
            reason, at = tombstone
            if reason == "expired":
                raise LatentExpired(latent_id, from_epoch(at))
            if reason == "lost":
                raise LatentCorrupt(
                    latent_id, f"its file vanished from the store (noticed {from_epoch(at).isoformat()})"
                )
            if reason == "corrupt":
                where = self._quarantined(latent_id)
                raise LatentCorrupt(latent_id, f"its file was unreadable (corrupt, quarantined at {where})")
            raise LatentDeleted(latent_id, from_epoch(at), reason)
        if is_expired(row, time.time(), self._index.has_pinned_descendant):
            raise LatentExpired(latent_id, from_epoch(row.expires_at))
        return row

    def _read(self, latent_id: str, *, extras: bool = False) -> tuple[Row, files.DecodedLatent]:
        """The live row and the verified file of ``latent_id`` (its extras verified too with
        ``extras``). A file that fails verification is set aside (``_set_aside``) and the read
        raises ``LatentCorrupt`` saying where it went, so no later read, cache hit or pipeline meets
        it again."""
        row = self._resolve(latent_id)
        try:
            return row, self._verified(row, extras)
        except LatentCorrupt:
            pass
        with self._locked():  # no import can be rewriting the file now: look again before acting
            row = self._resolve(latent_id)
            try:
                return row, self._verified(row, extras)
            except LatentCorrupt as error:
                raise self._set_aside(latent_id, error) from None

    def _verified(self, row: Row, extras: bool) -> files.DecodedLatent:
        try:
            data = self.site.fs.read(latent_rel(row.id))
        except FileNotFoundError:
            raise LatentCorrupt(row.id, "its file is missing from the store") from None
        decoded = files.decode(data, row.id)
        if decoded.record.digest != row.digest:
            raise LatentCorrupt(row.id, f"file digest {decoded.record.digest} differs from the index's {row.digest}")
        if extras:
            files.verify_extras(decoded, row.id)
        self._index.note_access(row.id, time.time())
        return decoded

    def _set_aside(self, latent_id: str, error: LatentCorrupt) -> LatentCorrupt:
        """Under the store lock: move an unreadable file to ``corrupt/`` and tombstone its record
        (journal, then index), reusing recovery's quarantine; return the error to raise. A store
        that cannot take the change (read-only, busy) still answers ``LatentCorrupt``."""
        try:
            event = sync.quarantine(self.site.fs, latent_id, error)
        except FileNotFoundError:  # nothing to move: the file vanished
            event = Event("remove", latent_id, time.time(), "lost")
        except StageError as failure:
            return LatentCorrupt(latent_id, f"{error.reason}; it could not be quarantined ({failure})")
        try:
            end = self.site.journal.append([event], after=self._index.journal_offset())
            with self._index.transaction() as db:
                Index.remove(db, [event.removal()])
                Index.set_journal_offset(db, end)
        except StageError as failure:
            return LatentCorrupt(
                latent_id, f"{error.reason}; moved to {self._quarantined(latent_id)}, tombstone pending ({failure})"
            )
        if event.reason == "lost":
            return error
        return LatentCorrupt(latent_id, f"{error.reason}; corrupt, quarantined at {self._quarantined(latent_id)}")

    def _quarantined(self, latent_id: str) -> str:
        return self.site.fs.where(f"{CORRUPT_DIR}/{latent_id}{SUFFIX}")

    def get(self, latent_id: str) -> torch.Tensor:
        """The stored tensor, digest-verified (``LatentCorrupt`` on any mismatch, the file then set
        aside in ``corrupt/``)."""
        return self._read(latent_id)[1].tensor

    def get_extras(self, latent_id: str) -> dict[str, torch.Tensor]:
        """The extra tensors stored with ``latent_id`` (empty if none), digest-verified."""
        return self._read(latent_id, extras=True)[1].extras

    def verify(self, latent_id: str) -> None:
        """Read ``latent_id`` whole and check every digest (tensor and extras): what a cache hit asks
        before answering with it. Raises the typed error saying why it does not resolve."""
        self._read(latent_id, extras=True)

    def record(self, latent_id: str) -> LatentRecord:
        """The latent's record as it stands now (current pin; no expiry while pinned)."""
        return self._resolve(latent_id).record()

    def exists(self, latent_id: str) -> bool:
        """Whether ``latent_id`` resolves to a live latent. Invalid IDs still raise ``InvalidLatentId``."""
        try:
            self._resolve(latent_id)
        except (LatentNotFound, LatentExpired, LatentDeleted, LatentCorrupt):
            return False
        return True

    def list(
        self,
        *,
        pipeline_id: str | None = None,
        flow_run_id: str | None = None,
        stage_type: str | None = None,
        variant: str | None = None,
        pinned: bool | None = None,
        is_checkpoint: bool | None = None,
        parent: str | None = None,
        limit: int | None = None,
    ) -> list[LatentRecord]:
        """Live records matching every given filter (None = any), newest first. ``variant`` is the
        backend's model variant; ``parent`` keeps records made directly from that latent."""
        if parent is not None:
            validate_latent_id(parent)
        if limit is not None and limit < 0:
            raise InvalidStageRequest(f"limit must be >= 0, got {limit}")
        self.site.refresh(self._index, listing=True)
        rows = self._index.list(
            now=time.time(),
            pipeline_id=pipeline_id,
            flow_run_id=flow_run_id,
            stage_type=stage_type,
            variant=variant,
            pinned=pinned,
            is_checkpoint=is_checkpoint,
            parent=parent,
            limit=limit,
        )
        return [row.record() for row in rows]

    def lineage(self, latent_id: str) -> Lineage:
        """Ancestors (what it was made from) and descendants (what was made from it). Ancestors that
        no longer resolve are listed by ID in ``missing_ancestors``."""
        self.site.refresh(self._index, listing=True)
        self._resolve(latent_id)
        now = time.time()
        up = [i for i, _ in self._index.ancestors(latent_id)]
        down = [i for i, _ in self._index.descendants(latent_id)]
        rows = self._index.rows(up + down)
        live = {i: row for i, row in rows.items() if not is_expired(row, now, self._index.has_pinned_descendant)}
        return Lineage(
            id=latent_id,
            ancestors=[live[i].record() for i in up if i in live],
            missing_ancestors=[i for i in up if i not in live],
            descendants=[live[i].record() for i in down if i in live],
        )

    # --- leases of running flows (``flow_leases``) ----------------------------------------------

    def lease(self, holder: str, lease_s: float, latent_ids: Iterable[str] = ()) -> None:
        """Start or renew ``holder``'s lease (a flow run's id) for ``lease_s`` seconds: until it ends,
        gc keeps the latents ``holder`` made (their ``pipeline_id``), ``latent_ids`` (taken with the
        lease in one write), those marked later with ``lease_latents``, and their ancestors."""
        if not lease_s > 0:
            raise InvalidStageRequest(f"lease_s must be > 0, got {lease_s}")
        ids = [validate_latent_id(latent_id) for latent_id in latent_ids]
        flow_leases.write_lease(self.site.fs, holder, time.time() + lease_s, ids)

    def lease_latents(self, holder: str, latent_ids: Iterable[str]) -> None:
        """Keep latents that ``holder`` did not make (a source named by ID, a cached stage's result)
        for as long as its lease lasts."""
        flow_leases.mark(self.site.fs, holder, [validate_latent_id(latent_id) for latent_id in latent_ids])

    def release(self, holder: str) -> None:
        """End ``holder``'s lease: its latents follow the store's usual rules again."""
        flow_leases.release(self.site.fs, holder)

    # --- retention ------------------------------------------------------------------------------

    def gc(self, now: datetime | None = None) -> GcReport:
        """Remove expired latents (pins and their ancestors stay, as do latents a running flow
        leases, ``lease``), then, over ``max_bytes``, evict unpinned checkpoints and then finals,
        least recently used first; also remove leftover files of crashed writers and ended leases.
        ``now`` (timezone-aware) lets maintenance runs and tests pick the time."""
        if now is not None and now.tzinfo is None:
            raise InvalidStageRequest("gc(now=...) needs a timezone-aware datetime")
        at = time.time() if now is None else now.timestamp()
        self._index.flush_accesses()  # best effort: LRU order is advice, gc still runs without it
        with self._locked():
            orphans, freed = sync.reconcile(self.site, self._index)
            leftovers, leftover_bytes = self.site.sweep(TEMP_GRACE_S)
            orphans += leftovers
            freed += leftover_bytes
            leases = flow_leases.read_leases(self.site.fs, at)
            for rel in leases.ended:
                self.site.fs.remove(rel)
            leased = self._index.with_ancestors(self._index.made_by(leases.holders) | leases.marked)
            removals, over_budget = plan_gc(
                now=at,
                expired=self._index.expired(at),
                protected=self._index.protected_ids() | leased,
                eviction_order=self._index.eviction_order() if self.max_bytes is not None else [],
                total_bytes=self._index.total_bytes(),
                max_bytes=self.max_bytes,
            )
            freed += self._remove([(r.id, r.reason, r.at) for r in removals])
            in_use = self._index.total_bytes()
        return GcReport(
            removed=[
                RemovedLatent(id=r.id, reason=r.reason, at=from_epoch(r.at), size_bytes=r.size_bytes) for r in removals
            ],
            orphans_removed=orphans,
            bytes_freed=freed,
            bytes_in_use=in_use,
            over_budget=over_budget,
        )

    # --- bundles --------------------------------------------------------------------------------

    def export_bundle(self, ids: Iterable[str], path: str | Path) -> Path:
        """Write the given latents (tensors, extras, records) to one bundle file; return its path.
        Every ID must resolve and verify, or nothing is written."""
        wanted = list(dict.fromkeys(ids))
        if not wanted:
            raise BundleError("export_bundle needs at least one latent ID")
        items = []
        for latent_id in wanted:
            row, decoded = self._read(latent_id, extras=True)
            items.append(BundleItem(row.record(), decoded.tensor, decoded.extras))
        return write_bundle(Path(path), items)

    def import_bundle(self, path: str | Path) -> list[str]:
        """Add the bundle's latents to this store (IDs kept; TTL restarts now) and return their IDs.

        Every entry is read and verified before any is written, one latent in memory at a time,
        and a latent already here with different content is a conflict: in both cases
        ``BundleError`` is raised and nothing is written. A latent already here with the same
        content is left as it is (its record, pin and TTL are this store's). A latent this store
        had deleted or let expire is brought back.

        A bundle's pins are claims, and an import never lets one reach a latent this store already
        had: a pin protects its ancestors, so a pinned entry whose ancestry (through the bundle's
        records) names a latent already here comes in unpinned; pin it here if that is meant.
        """
        with open_bundle(Path(path)) as bundle:
            for entry in bundle.entries:
                bundle.load(entry)  # verify everything before writing anything
            with self._locked():
                existing = self._existing(entry.record.id for entry in bundle.entries)
                for entry in bundle.entries:
                    here = existing.get(entry.record.id)
                    if here is not None and here.digest != entry.record.digest:
                        raise BundleError(
                            f"bundle {path} refused: latent {entry.record.id} exists here with different content"
                        )
                fresh = [entry for entry in bundle.entries if entry.record.id not in existing]
                pins = self._importable_pins(fresh, Path(path))
                # A revival resets the journal's view of each ID to its (re)written file, so a
                # rebuild agrees with the index about tombstones and pins of imported latents.
                revivals = [Event("revive", entry.record.id, time.time()) for entry in fresh]
                if revivals:
                    end = self.site.journal.append(revivals, after=self._index.journal_offset())
                    with self._index.transaction() as db:
                        for entry in fresh:
                            Index.revive(db, entry.record.id)
                        Index.set_journal_offset(db, end)
                now = datetime.now(UTC)
                for entry in fresh:
                    self._write_imported(bundle.load(entry), now, pinned=entry.record.id in pins)
        return [entry.record.id for entry in bundle.entries]

    def _existing(self, ids: Iterable[str]) -> dict[str, Row]:
        """Live rows of ``ids``, including latents other writers put that this index has not seen."""
        wanted = list(ids)
        existing = self._index.rows(wanted)
        for latent_id in wanted:
            if latent_id not in existing and self._index.tombstone(latent_id) is None:
                if (row := self.site.adopt(self._index, latent_id)) is not None:
                    existing[latent_id] = row
        return existing

    def _importable_pins(self, fresh: list[BundleEntry], path: Path) -> set[str]:
        """The entries whose bundle pin may stand: those whose ancestry, followed through the
        bundle's own records, names no latent already in this store."""
        records = {entry.record.id: entry.record for entry in fresh}
        outside = {parent for record in records.values() for parent in record.parent_ids if parent not in records}
        present = set(self._existing(outside))
        pins = set()
        for entry in fresh:
            if not entry.record.pinned:
                continue
            seen, stack, reaches = set(), [entry.record.id], []
            while stack:
                for parent in records[stack.pop()].parent_ids:
                    if parent in present:
                        reaches.append(parent)
                    elif parent in records and parent not in seen:
                        seen.add(parent)
                        stack.append(parent)
            if reaches:
                logger.warning(
                    "bundle {}: {} came pinned, but its pin would protect {}, already in this store; imported unpinned",
                    path, entry.record.id, ", ".join(sorted(set(reaches))),
                )  # fmt: skip
            else:
                pins.add(entry.record.id)
        return pins

    def _write_imported(self, item: BundleItem, now: datetime, pinned: bool) -> None:
        """Write one verified bundle latent."""
        record = item.record.model_copy(
            update={"expires_at": expiry(now, item.record.ttl_hours, self.ttl_hours), "pinned": pinned}
        )
        known: Future[tuple[str, str]] = Future()
        known.set_result((record.digest, files.extras_digest(item.extras)))
        _, size = self._write(record, item.tensor, item.extras, known)
        record = record.model_copy(update={"size_bytes": size})
        self._index.insert_now(record, record.pinned, to_epoch(now))


def open_site(
    root: str | Path,
    *,
    storage_options: dict[str, Any] | None,
    index_dir: str | Path | None,
    lock_timeout_s: float,
    lease_s: float,
) -> Site:
    """The site of ``root``: a local directory (a path or ``file://``) or a remote URL."""
    url = split_url(root)
    if url is None:
        if storage_options:
            raise InvalidStageRequest(f"storage_options apply to URL roots only; {root!r} is a local path")
        if index_dir is not None:
            raise InvalidStageRequest("a local store keeps its index in its directory; index_dir is for URL roots")
        return LocalSite(local_path_of(root), lock_timeout_s)
    return RemoteSite.open(*url, dict(storage_options or {}), index_dir, lock_timeout_s, lease_s)


_digest_pool: tuple[int, ThreadPoolExecutor] | None = None
_digest_pool_lock = threading.Lock()


def _digest_thread() -> ThreadPoolExecutor:
    """This process's digest thread (hashlib releases the GIL, so hashing overlaps the write). Made
    again after a fork, because a forked child inherits the executor but not its thread."""
    global _digest_pool
    with _digest_pool_lock:
        if _digest_pool is None or _digest_pool[0] != os.getpid():
            _digest_pool = (os.getpid(), ThreadPoolExecutor(max_workers=1, thread_name_prefix="latent-digest"))
        return _digest_pool[1]


def _plain_tensor(value: object, what: str) -> torch.Tensor:
    """A dense, contiguous CPU tensor with no autograd history: the form safetensors can store."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(value).__name__}")
    if value.layout != torch.strided:
        raise InvalidStageRequest(f"{what} must be a dense tensor, got layout {value.layout}")
    return value.detach().cpu().contiguous()


def _plain_extras(extras: dict[str, torch.Tensor] | None, main: torch.Tensor) -> dict[str, torch.Tensor]:
    """Extras as storable tensors; ones sharing memory with the main tensor or each other are copied
    (safetensors refuses to write shared storage)."""
    if extras is None:
        return {}
    if not isinstance(extras, dict):
        raise TypeError(f"extras must be a dict of name -> tensor, got {type(extras).__name__}")
    plain: dict[str, torch.Tensor] = {}
    seen = {main.untyped_storage().data_ptr()}
    for name, value in extras.items():
        if not isinstance(name, str) or not name or "\0" in name:
            raise InvalidStageRequest(f"extra tensor name {name!r} must be a non-empty string without NUL")
        tensor = _plain_tensor(value, f"extras[{name!r}]")
        pointer = tensor.untyped_storage().data_ptr()
        if pointer in seen and tensor.numel():
            tensor = tensor.clone()
        seen.add(tensor.untyped_storage().data_ptr())
        plain[name] = tensor
    return plain
