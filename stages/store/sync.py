"""Bringing the index in line with the files and the journal: at open, before gc, and from scratch.

The files and the journal are the truth; the index can lag them after a crash (a put killed between
its rename and its index insert, a lifecycle change killed between its journal append and its index
commit), and on a remote store it lags whatever other hosts did. Each step here is idempotent, so a
crash during recovery is recovered by the next open. Steps that write the journal or remove files
run under the store lock; ``catch_up_journal(remove_files=False)`` and ``index_new_files`` only
change this host's index and run without it.
"""

from __future__ import annotations

import time

from loguru import logger

from typing import TYPE_CHECKING

from prefect_acestep.stages.errors import InvalidLatentId, LatentCorrupt
from prefect_acestep.stages.records import LatentRecord
from prefect_acestep.stages.store import journal
from prefect_acestep.stages.store.files import CORRUPT_DIR, LATENTS_DIR, SUFFIX, latent_rel, read_record, read_records
from prefect_acestep.stages.store.fs import FileSystem
from prefect_acestep.stages.store.ids import validate_latent_id
from prefect_acestep.stages.store.index import Index, IndexUnreadable, Row, to_epoch
from prefect_acestep.stages.store.journal import Event

if TYPE_CHECKING:
    from prefect_acestep.stages.store.site import Site


def file_ids(fs: FileSystem, known: set[str] | frozenset[str] = frozenset()) -> dict[str, int | None]:
    """IDs of the complete latent files (hidden names, such as staging directories, and foreign names
    are not latents), with their sizes where the listing gives them. Names in ``known``
    (already-indexed IDs) were validated when indexed, so only new names are checked."""
    ids = {}
    for name, size in fs.listing(LATENTS_DIR).items():
        if name.startswith(".") or not name.endswith(SUFFIX):
            continue
        latent_id = name[: -len(SUFFIX)]
        if latent_id in known:
            ids[latent_id] = size
            continue
        try:
            ids[validate_latent_id(latent_id)] = size
        except InvalidLatentId:
            logger.warning("latent store: ignoring foreign file {}/{}", LATENTS_DIR, name)
    return ids


def catch_up(site: Site, index: Index, *, remove_files: bool) -> None:
    """``catch_up_journal``, or a rebuild when the index and the journal no longer fit together
    (the journal was restored from an older backup, wiped, or is another store's)."""
    try:
        catch_up_journal(site, index, remove_files=remove_files)
    except IndexUnreadable as exc:
        logger.warning("latent store {}: {}; rebuilding the index from the files", site.root, exc)
        with site.lock.held():  # reentrant: callers that may remove files hold it already
            rebuild(site, index)


def catch_up_journal(site: Site, index: Index, *, remove_files: bool = True) -> None:
    """Apply journal events the index has not seen: a crash between append and index commit, or
    (remote) another host's changes. ``remove_files`` also deletes the files of removed latents,
    which only a lock holder may do: without the lock, an import could be rewriting a revived
    latent's file at that moment."""
    while True:
        offset = index.journal_offset()
        try:
            events, end = site.journal.read(offset)
        except journal.JournalBehind as exc:
            raise IndexUnreadable(str(exc)) from exc
        if end == offset:
            return
        with index.transaction() as db:
            if Index.journal_offset_in(db) != offset:
                continue  # another process of this host applied some of them meanwhile: reread
            for event in events:
                if event.op in ("pin", "unpin"):
                    Index.set_pinned(db, event.id, event.op == "pin")
                elif event.op == "remove":
                    Index.remove(db, [event.removal()])
                else:
                    Index.revive(db, event.id)
            Index.set_journal_offset(db, end)
        break
    if remove_files:
        for latent_id in journal.replay(events).tombstones:
            site.fs.remove(latent_rel(latent_id))


def quarantine(fs: FileSystem, latent_id: str, error: LatentCorrupt) -> Event:
    """Move an unreadable latent file aside (kept for inspection, never served) and say why."""
    logger.warning("latent store: moving unreadable file of {} to {}/: {}", latent_id, CORRUPT_DIR, error.reason)
    fs.move(latent_rel(latent_id), f"{CORRUPT_DIR}/{latent_id}{SUFFIX}")
    return Event("remove", latent_id, time.time(), "corrupt")


def reconcile(site: Site, index: Index) -> tuple[list[str], int]:
    """Index complete files the index lacks, finish interrupted removals, and tombstone rows whose
    file vanished. Returns the leftover files removed and their bytes. Run under the store lock,
    after ``catch_up_journal``, so that tombstones the journal holds are known.

    Rows are read before the directory is listed: a put that lands in between then shows up as a
    file without a row (harmlessly indexed twice), never as a row without a file (wrongly "lost").
    """
    fs = site.fs
    indexed = index.all_ids()
    on_disk = file_ids(fs, indexed)
    unindexed = sorted(on_disk.keys() - indexed)
    tombstoned = index.tombstoned(unindexed)
    removed, freed = [], 0
    for latent_id in sorted(tombstoned):
        freed += fs.remove(latent_rel(latent_id))
        removed.append(latent_rel(latent_id))
    records, events = [], []
    found = read_records(fs, {i: on_disk[i] for i in unindexed if i not in tombstoned})
    for latent_id, record in found.items():
        if isinstance(record, LatentRecord):
            records.append(record)
        elif isinstance(record, LatentCorrupt):
            events.append(quarantine(fs, latent_id, record))
        # FileNotFoundError: removed since the listing (a concurrent import rewrite is not possible: locked)
    now = time.time()
    events += [Event("remove", latent_id, now, "lost") for latent_id in sorted(indexed - on_disk.keys())]
    if not records and not events:
        return removed, freed
    end = site.journal.append(events, after=index.journal_offset()) if events else None
    with index.transaction() as db:
        for record in records:
            Index.insert(db, record, record.pinned, to_epoch(record.created_at))
        Index.remove(db, [event.removal() for event in events])
        if end is not None:
            Index.set_journal_offset(db, end)
    return removed, freed


def index_new_files(fs: FileSystem, index: Index) -> None:
    """Index latent files this host has not seen (puts by other hosts), without the lock: only the
    index changes. Unreadable files are left for the next locked ``reconcile`` to set aside."""
    indexed = index.all_ids()
    on_disk = file_ids(fs, indexed)
    unindexed = sorted(on_disk.keys() - indexed)
    fresh = {i: on_disk[i] for i in unindexed if i not in index.tombstoned(unindexed)}
    records = [r for r in read_records(fs, fresh).values() if isinstance(r, LatentRecord)]
    if records:
        with index.transaction() as db:
            for record in records:
                Index.insert(db, record, record.pinned, to_epoch(record.created_at))


def adopt(fs: FileSystem, index: Index, latent_id: str) -> Row | None:
    """Index a latent another writer put, from its file's header (None if there is no such file, or
    a removal of it was journaled meanwhile)."""
    try:
        record = read_record(fs, latent_rel(latent_id), latent_id)
    except FileNotFoundError:
        return None
    index.insert_now(record, record.pinned, to_epoch(record.created_at))
    return index.row(latent_id)


def rebuild(site: Site, index: Index) -> None:
    """Recreate the whole index from the latent files and the journal, in one transaction. Run under
    the store lock.

    LRU order is not in the files, so last access restarts at each latent's creation time.
    """
    fs = site.fs
    events, end = site.journal.read(0)
    state = journal.replay(events)
    records, quarantined = [], []
    on_disk = file_ids(fs)
    for latent_id in sorted(on_disk.keys() & state.tombstones.keys()):
        fs.remove(latent_rel(latent_id))
    found = read_records(fs, {i: size for i, size in on_disk.items() if i not in state.tombstones})
    for latent_id, record in found.items():
        if isinstance(record, LatentRecord):
            records.append(record)
        elif isinstance(record, LatentCorrupt):
            quarantined.append(quarantine(fs, latent_id, record))
    if quarantined:
        end = site.journal.append(quarantined, after=end)
        for event in quarantined:
            state.apply(event)
    with index.transaction() as db:
        Index.clear(db)
        for latent_id, pinned in state.pins.items():
            Index.set_pinned(db, latent_id, pinned)
        for record in records:
            Index.insert(db, record, record.pinned, to_epoch(record.created_at))
        Index.remove(db, [(i, reason, at) for i, (reason, at) in state.tombstones.items()])
        Index.set_journal_offset(db, end)
        Index.mark_built(db)
    if records or quarantined:
        logger.info("latent store: rebuilt the index from {} latent files", len(records))
