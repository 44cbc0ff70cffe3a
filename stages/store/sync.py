"""Bringing the index in line with the files and the journal: at open, before gc, and from scratch.

The files and the journal are the truth; the index can lag them after a crash (a put killed between
its rename and its index insert, a lifecycle change killed between its journal append and its index
commit). Each step here is idempotent, so a crash during recovery is recovered by the next open.
All functions run under the store lock.
"""

from __future__ import annotations

import time

from loguru import logger

from stages.errors import InvalidLatentId, LatentCorrupt
from stages.store import journal
from stages.store.files import CORRUPT_DIR, LATENTS_DIR, SUFFIX, latent_rel, read_record
from stages.store.fs import FileSystem
from stages.store.ids import validate_latent_id
from stages.store.index import Index, IndexUnreadable, to_epoch
from stages.store.journal import Event


def file_ids(fs: FileSystem, known: set[str] | frozenset[str] = frozenset()) -> set[str]:
    """IDs of the complete latent files (temp files and foreign names are not latents). Names in
    ``known`` (already-indexed IDs) were validated when indexed, so only new names are checked."""
    ids = set()
    for name in fs.list_dir(LATENTS_DIR):
        if fs.is_temp(name) or not name.endswith(SUFFIX):
            continue
        latent_id = name[: -len(SUFFIX)]
        if latent_id in known:
            ids.add(latent_id)
            continue
        try:
            ids.add(validate_latent_id(latent_id))
        except InvalidLatentId:
            logger.warning("latent store: ignoring foreign file {}/{}", LATENTS_DIR, name)
    return ids


def catch_up_journal(fs: FileSystem, index: Index) -> None:
    """Apply journal events the index has not seen (a crash between append and index commit)."""
    offset = index.journal_offset()
    journal_size = fs.size(journal.JOURNAL) if fs.exists(journal.JOURNAL) else 0
    if journal_size < offset:
        raise IndexUnreadable(f"journal is {journal_size} bytes but the index has applied {offset}")
    if journal_size == offset:
        return
    events, end = journal.read(fs, offset)
    with index.transaction() as db:
        for event in events:
            if event.op in ("pin", "unpin"):
                Index.set_pinned(db, event.id, event.op == "pin")
            elif event.op == "remove":
                Index.remove(db, [event.removal()])
            else:
                Index.revive(db, event.id)
        Index.set_journal_offset(db, end)
    for latent_id in journal.replay(events).tombstones:
        fs.remove(latent_rel(latent_id))


def _quarantine(fs: FileSystem, latent_id: str, error: LatentCorrupt) -> Event:
    """Move an unreadable latent file aside (kept for inspection, never served) and say why."""
    logger.warning("latent store: moving unreadable file of {} to {}/: {}", latent_id, CORRUPT_DIR, error.reason)
    fs.move(latent_rel(latent_id), f"{CORRUPT_DIR}/{latent_id}{SUFFIX}")
    return Event("remove", latent_id, time.time(), "corrupt")


def reconcile(fs: FileSystem, index: Index) -> tuple[list[str], int]:
    """Index complete files the index lacks, finish interrupted removals, and tombstone rows whose
    file vanished. Returns the leftover files removed and their bytes. Run after
    ``catch_up_journal``, so that tombstones the journal holds are known.

    Rows are read before the directory is listed: a put that lands in between then shows up as a
    file without a row (harmlessly indexed twice), never as a row without a file (wrongly "lost").
    """
    indexed = index.all_ids()
    on_disk = file_ids(fs, indexed)
    unindexed = sorted(on_disk - indexed)
    tombstoned = index.tombstoned(unindexed)
    removed, freed = [], 0
    for latent_id in sorted(tombstoned):
        freed += fs.remove(latent_rel(latent_id))
        removed.append(latent_rel(latent_id))
    records, events = [], []
    for latent_id in unindexed:
        if latent_id in tombstoned:
            continue
        try:
            records.append(read_record(fs, latent_rel(latent_id), latent_id))
        except FileNotFoundError:
            continue  # removed since the listing (a concurrent import rewrite is not possible: locked)
        except LatentCorrupt as exc:
            events.append(_quarantine(fs, latent_id, exc))
    now = time.time()
    events += [Event("remove", latent_id, now, "lost") for latent_id in sorted(indexed - on_disk)]
    if not records and not events:
        return removed, freed
    end = journal.append(fs, events) if events else None
    with index.transaction() as db:
        for record in records:
            Index.insert(db, record, record.pinned, to_epoch(record.created_at))
        Index.remove(db, [event.removal() for event in events])
        if end is not None:
            Index.set_journal_offset(db, end)
    return removed, freed


def rebuild(fs: FileSystem, index: Index) -> None:
    """Recreate the whole index from the latent files and the journal, in one transaction.

    LRU order is not in the files, so last access restarts at each latent's creation time.
    """
    events, end = journal.read(fs, 0)
    state = journal.replay(events)
    records, quarantined = [], []
    for latent_id in sorted(file_ids(fs)):
        if latent_id in state.tombstones:
            fs.remove(latent_rel(latent_id))
            continue
        try:
            records.append(read_record(fs, latent_rel(latent_id), latent_id))
        except LatentCorrupt as exc:
            quarantined.append(_quarantine(fs, latent_id, exc))
    if quarantined:
        end = journal.append(fs, quarantined)
        for event in quarantined:
            state.apply(event)
    with index.transaction() as db:
        Index.clear(db)
        for record in records:
            Index.insert(db, record, state.pins.get(record.id, record.pinned), to_epoch(record.created_at))
        Index.remove(db, [(i, reason, at) for i, (reason, at) in state.tombstones.items()])
        Index.set_journal_offset(db, end)
        Index.mark_built(db)
    if records or quarantined:
        logger.info("latent store: rebuilt the index from {} latent files", len(records))
