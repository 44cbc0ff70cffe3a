"""The SQLite index that makes open, list, lineage and gc fast.

The index is a cache: every fact in it comes from the latent files and the journal, and
``LatentStore.rebuild_index`` recreates it from them. That is why it runs with
``synchronous=NORMAL`` (WAL): a power cut may lose its last commits, and the next open re-adds them
from the files and the journal tail. SQLite's own locking makes concurrent puts from several
processes safe without the store lock.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from loguru import logger

from prefect_acestep.stages.errors import StageError, StoreBusy
from prefect_acestep.stages.storage_errors import map_storage_errors
from prefect_acestep.stages.records import LatentRecord
from prefect_acestep.stages.store.journal import RemovalReason

SCHEMA_VERSION = 2
BUSY_TIMEOUT_S = 30.0
ACCESS_FLUSH_S = 1.0
"""Reads are written to the index in batches at most this often (``Index.note_access``)."""
ACCESS_FLUSH_WAIT_S = 0.05
"""How long a read's batch of access times waits for another writer before staying pending."""
MAX_PENDING_ACCESSES = 100_000
MAX_LINEAGE_DEPTH = 10_000
"""Bounds lineage walks, so a cycle smuggled in by a hand-made bundle cannot loop forever."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS records (
    id TEXT PRIMARY KEY,
    record TEXT NOT NULL,
    pipeline_id TEXT,
    flow_run_id TEXT,
    stage_type TEXT NOT NULL,
    variant TEXT NOT NULL,
    is_checkpoint INTEGER NOT NULL,
    pinned INTEGER NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    size_bytes INTEGER NOT NULL,
    last_access REAL NOT NULL,
    digest TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS records_pipeline ON records (pipeline_id);
CREATE INDEX IF NOT EXISTS records_flow_run ON records (flow_run_id);
CREATE INDEX IF NOT EXISTS records_created ON records (created_at);
CREATE INDEX IF NOT EXISTS records_expires ON records (expires_at) WHERE pinned = 0;
CREATE INDEX IF NOT EXISTS records_pinned ON records (id) WHERE pinned = 1;
CREATE TABLE IF NOT EXISTS parents (child TEXT NOT NULL, parent TEXT NOT NULL, PRIMARY KEY (child, parent))
    WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS parents_by_parent ON parents (parent, child);
CREATE TABLE IF NOT EXISTS tombstones (id TEXT PRIMARY KEY, reason TEXT NOT NULL, at REAL NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pins (id TEXT PRIMARY KEY, pinned INTEGER NOT NULL) WITHOUT ROWID;
"""
# ``pins`` holds the journal's pin state per ID whether or not the ID has a row yet: on a remote
# store, a host can apply another host's pin before it has seen the latent's file, and the row it
# indexes later must carry that pin rather than the one embedded in the file.

_COLUMNS = "id, record, pinned, expires_at, size_bytes, last_access, digest, is_checkpoint"

# IDs of all ancestors of pinned records: what a pin protects from gc.
_PROTECTED = """
WITH RECURSIVE protected(id) AS (
    SELECT id FROM records WHERE pinned = 1
    UNION SELECT p.parent FROM parents p JOIN protected ON p.child = protected.id
)
"""


class IndexUnreadable(Exception):
    """The index file is damaged or of another schema; the store rebuilds it from the files."""


def to_epoch(value: datetime | None) -> float:
    """Seconds since the epoch of a store-set time (the store always sets created/expires)."""
    if value is None:
        raise ValueError("a stored latent's record lacks a time the store always sets")
    return value.timestamp()


def from_epoch(value: float) -> datetime:
    return datetime.fromtimestamp(value, UTC)


@dataclass(frozen=True)
class Row:
    """One indexed latent: its embedded record plus the state that lives outside its file."""

    id: str
    record_json: str
    pinned: bool
    expires_at: float
    size_bytes: int
    last_access: float
    digest: str
    is_checkpoint: bool

    def record(self) -> LatentRecord:
        """The record as users see it: current pin, real file size, and no expiry while pinned."""
        record = LatentRecord.model_validate_json(self.record_json)
        return record.model_copy(
            update={
                "pinned": self.pinned,
                "size_bytes": self.size_bytes,
                "expires_at": None if self.pinned else from_epoch(self.expires_at),
            }
        )


def _row(values: Sequence) -> Row:
    return Row(values[0], values[1], bool(values[2]), values[3], values[4], values[5], values[6], bool(values[7]))


class Index:
    """One connection to the index database, shared by the threads of one ``LatentStore``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.RLock()
        self._accesses: dict[str, float] = {}
        self._flushed_at = time.monotonic()
        try:
            self._db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise IndexUnreadable(str(exc)) from exc
        try:
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise IndexUnreadable(f"index schema {version}, this store uses {SCHEMA_VERSION}")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            if version == 0:
                self._db.executescript(_SCHEMA)
            self._db.execute("SELECT count(*) FROM meta").fetchone()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise IndexUnreadable(str(exc)) from exc
        except IndexUnreadable:
            self._db.close()
            raise

    def close(self) -> None:
        with self._lock:
            self.flush_accesses(wait_s=ACCESS_FLUSH_WAIT_S)
            self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that takes SQLite's write lock up front (no upgrade deadlocks)."""
        with self._lock, _typed_errors(self.path):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # also after a failed COMMIT (a full disk), which leaves it open
                    self._db.execute("ROLLBACK")
                raise

    def _query(self, sql: str, params: Sequence = ()) -> list[tuple]:
        with self._lock, _typed_errors(self.path):
            return self._db.execute(sql, params).fetchall()

    # --- meta -------------------------------------------------------------------------------

    def is_built(self) -> bool:
        return bool(self._query("SELECT 1 FROM meta WHERE key = 'built'"))

    def journal_offset(self) -> int:
        rows = self._query("SELECT value FROM meta WHERE key = 'journal_offset'")
        return int(rows[0][0]) if rows else 0

    @staticmethod
    def journal_offset_in(db: sqlite3.Connection) -> int:
        """The journal position, read inside a transaction (another process may have moved it)."""
        row = db.execute("SELECT value FROM meta WHERE key = 'journal_offset'").fetchone()
        return int(row[0]) if row else 0

    @staticmethod
    def set_journal_offset(db: sqlite3.Connection, offset: int) -> None:
        db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('journal_offset', ?)", (str(offset),))

    # --- writes (inside ``transaction`` unless said otherwise) ---------------------------------

    @staticmethod
    def insert(db: sqlite3.Connection, record: LatentRecord, pinned: bool, last_access: float) -> bool:
        """Index a latent unless it has a tombstone; return whether it was indexed. A pin state the
        journal set for this ID (``pins``) overrides ``pinned``.

        The tombstone check and the insert are one statement, so a put that lost a race with gc
        (its file indexed, evicted and removed by a gc in another process before the put's own
        insert) cannot bring back a row whose file is gone.
        """
        cursor = db.execute(
            "INSERT OR REPLACE INTO records (id, record, pipeline_id, flow_run_id, stage_type, variant, "
            "is_checkpoint, pinned, created_at, expires_at, size_bytes, last_access, digest) "
            "SELECT ?, ?, ?, ?, ?, ?, ?, coalesce((SELECT pinned FROM pins WHERE id = ?), ?), ?, ?, ?, ?, ? "
            "WHERE NOT EXISTS (SELECT 1 FROM tombstones WHERE id = ?)",
            (
                record.id,
                record.model_dump_json(exclude={"size_bytes"}),
                record.pipeline_id,
                record.flow_run_id,
                record.stage_type,
                record.backend.variant,
                int(record.is_checkpoint),
                record.id,
                int(pinned),
                to_epoch(record.created_at),
                to_epoch(record.expires_at),
                record.size_bytes,
                last_access,
                record.digest,
                record.id,
            ),
        )
        if cursor.rowcount:
            db.executemany(
                "INSERT OR IGNORE INTO parents (child, parent) VALUES (?, ?)",
                [(record.id, parent) for parent in record.parent_ids],
            )
        return bool(cursor.rowcount)

    def insert_now(self, record: LatentRecord, pinned: bool, last_access: float) -> bool:
        with self.transaction() as db:
            return self.insert(db, record, pinned, last_access)

    @staticmethod
    def set_pinned(db: sqlite3.Connection, latent_id: str, pinned: bool) -> None:
        db.execute("UPDATE records SET pinned = ? WHERE id = ?", (int(pinned), latent_id))
        db.execute("INSERT OR REPLACE INTO pins (id, pinned) VALUES (?, ?)", (latent_id, int(pinned)))

    @staticmethod
    def remove(db: sqlite3.Connection, removals: Sequence[tuple[str, RemovalReason, float]]) -> None:
        db.executemany("DELETE FROM records WHERE id = ?", [(i,) for i, _, _ in removals])
        db.executemany("DELETE FROM parents WHERE child = ?", [(i,) for i, _, _ in removals])
        db.executemany("DELETE FROM pins WHERE id = ?", [(i,) for i, _, _ in removals])
        db.executemany("INSERT OR REPLACE INTO tombstones (id, reason, at) VALUES (?, ?, ?)", removals)

    @staticmethod
    def revive(db: sqlite3.Connection, latent_id: str) -> None:
        db.execute("DELETE FROM tombstones WHERE id = ?", (latent_id,))
        db.execute("DELETE FROM pins WHERE id = ?", (latent_id,))

    @staticmethod
    def clear(db: sqlite3.Connection) -> None:
        for table in ("records", "parents", "tombstones", "pins", "meta"):
            db.execute(f"DELETE FROM {table}")  # noqa: S608 (fixed names)

    @staticmethod
    def mark_built(db: sqlite3.Connection) -> None:
        db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('built', '1')")
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def note_access(self, latent_id: str, at: float) -> None:
        """Remember a read for LRU eviction, without making the read depend on a write.

        Accesses are kept in memory and written in one batch at most once per
        ``ACCESS_FLUSH_S`` (and by ``flush_accesses``, which gc and ``close`` call). A batch that
        cannot be written (a full disk, a read-only index, a writer holding the database) stays
        pending for the next try: LRU order is advice for eviction, and a read must succeed on a
        store that can no longer be written.
        """
        with self._lock:
            self._accesses[latent_id] = at
            if len(self._accesses) > MAX_PENDING_ACCESSES:
                self._accesses.pop(next(iter(self._accesses)))
            if time.monotonic() - self._flushed_at >= ACCESS_FLUSH_S:
                self.flush_accesses(wait_s=ACCESS_FLUSH_WAIT_S)

    def flush_accesses(self, wait_s: float = BUSY_TIMEOUT_S) -> bool:
        """Write pending accesses; False (they stay pending) when the index cannot take the write
        within ``wait_s``."""
        with self._lock:
            self._flushed_at = time.monotonic()
            if not self._accesses:
                return True
            pending = list(self._accesses.items())
            try:
                self._db.execute(f"PRAGMA busy_timeout = {int(wait_s * 1000)}")
                with self.transaction() as db:
                    db.executemany("UPDATE records SET last_access = max(last_access, ?) WHERE id = ?",
                                   [(at, latent_id) for latent_id, at in pending])
            except (StageError, sqlite3.Error) as exc:
                logger.debug("latent store index {}: access times kept in memory for now ({})", self.path, exc)
                return False
            finally:
                self._db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            for latent_id, at in pending:
                if self._accesses.get(latent_id) == at:
                    del self._accesses[latent_id]
            return True

    # --- reads ------------------------------------------------------------------------------

    def row(self, latent_id: str) -> Row | None:
        rows = self._query(f"SELECT {_COLUMNS} FROM records WHERE id = ?", (latent_id,))
        return _row(rows[0]) if rows else None

    def rows(self, ids: Sequence[str]) -> dict[str, Row]:
        found: dict[str, Row] = {}
        for start in range(0, len(ids), 500):
            chunk = list(ids[start : start + 500])
            marks = ",".join("?" * len(chunk))
            for values in self._query(f"SELECT {_COLUMNS} FROM records WHERE id IN ({marks})", chunk):
                found[values[0]] = _row(values)
        return found

    def tombstone(self, latent_id: str) -> tuple[RemovalReason, float] | None:
        rows = self._query("SELECT reason, at FROM tombstones WHERE id = ?", (latent_id,))
        return (rows[0][0], rows[0][1]) if rows else None

    def all_ids(self) -> set[str]:
        return {values[0] for values in self._query("SELECT id FROM records")}

    def tombstoned(self, ids: Sequence[str]) -> set[str]:
        found: set[str] = set()
        for start in range(0, len(ids), 500):
            chunk = list(ids[start : start + 500])
            marks = ",".join("?" * len(chunk))
            found.update(v[0] for v in self._query(f"SELECT id FROM tombstones WHERE id IN ({marks})", chunk))
        return found

    def has_pinned_descendant(self, latent_id: str) -> bool:
        rows = self._query(
            "WITH RECURSIVE below(id) AS ("
            " SELECT child FROM parents WHERE parent = ?"
            " UNION SELECT p.child FROM parents p JOIN below ON p.parent = below.id)"
            " SELECT 1 FROM records r JOIN below ON r.id = below.id WHERE r.pinned = 1 LIMIT 1",
            (latent_id,),
        )
        return bool(rows)

    def list(
        self,
        *,
        now: float,
        pipeline_id: str | None,
        flow_run_id: str | None,
        stage_type: str | None,
        variant: str | None,
        pinned: bool | None,
        is_checkpoint: bool | None,
        parent: str | None,
        limit: int | None,
    ) -> list[Row]:
        """Live rows matching every given filter (None = not filtered), newest first. Rows past
        their TTL are left out unless pinned or protected by a pinned descendant."""
        where = ["(r.pinned = 1 OR r.expires_at > ? OR r.id IN (SELECT id FROM protected))"]
        params: list[object] = [now]
        for column, value in (
            ("pipeline_id", pipeline_id),
            ("flow_run_id", flow_run_id),
            ("stage_type", stage_type),
            ("variant", variant),
        ):
            if value is not None:
                where.append(f"r.{column} = ?")
                params.append(value)
        for column, flag in (("pinned", pinned), ("is_checkpoint", is_checkpoint)):
            if flag is not None:
                where.append(f"r.{column} = ?")
                params.append(int(flag))
        if parent is not None:
            where.append("r.id IN (SELECT child FROM parents WHERE parent = ?)")
            params.append(parent)
        sql = (
            f"{_PROTECTED} SELECT {', '.join('r.' + c.strip() for c in _COLUMNS.split(','))} FROM records r "
            f"WHERE {' AND '.join(where)} ORDER BY r.created_at DESC, r.id DESC"
        )
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return [_row(values) for values in self._query(sql, params)]

    def made_by(self, pipelines: set[str]) -> set[str]:
        """IDs of the rows whose ``pipeline_id`` is one of ``pipelines``."""
        found: set[str] = set()
        wanted = sorted(pipelines)
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            marks = ",".join("?" * len(chunk))
            found.update(v[0] for v in self._query(f"SELECT id FROM records WHERE pipeline_id IN ({marks})", chunk))
        return found

    def with_ancestors(self, ids: set[str]) -> set[str]:
        """``ids`` and every ancestor of them the index knows."""
        if not ids:
            return set()
        rows = self._query(
            "WITH RECURSIVE up(id) AS (SELECT value FROM json_each(?)"
            " UNION SELECT p.parent FROM parents p JOIN up ON p.child = up.id) SELECT id FROM up",
            (json.dumps(sorted(ids)),),
        )
        return {values[0] for values in rows}

    def protected_ids(self) -> set[str]:
        return {values[0] for values in self._query(f"{_PROTECTED} SELECT id FROM protected")}

    def expired(self, now: float) -> list[tuple[str, float, int]]:
        """(id, expires_at, size) of unpinned rows past their TTL (protection is the caller's job)."""
        return self._query(
            "SELECT id, expires_at, size_bytes FROM records WHERE pinned = 0 AND expires_at <= ?", (now,)
        )

    def eviction_order(self) -> list[tuple[str, int]]:
        """(id, size) of unpinned rows in eviction order: checkpoints first, then least recently used."""
        return self._query(
            "SELECT id, size_bytes FROM records WHERE pinned = 0 ORDER BY is_checkpoint DESC, last_access ASC, id ASC"
        )

    def total_bytes(self) -> int:
        return int(self._query("SELECT coalesce(sum(size_bytes), 0) FROM records")[0][0])

    def ancestors(self, latent_id: str) -> list[tuple[str, int]]:
        """(id, depth) of every ancestor reachable through indexed records, nearest first."""
        return self._query(
            "WITH RECURSIVE up(id, depth) AS ("
            " SELECT parent, 1 FROM parents WHERE child = ?"
            " UNION SELECT p.parent, up.depth + 1 FROM parents p JOIN up ON p.child = up.id"
            f" WHERE up.depth < {MAX_LINEAGE_DEPTH})"
            " SELECT id, min(depth) AS d FROM up GROUP BY id ORDER BY d, id",
            (latent_id,),
        )

    def descendants(self, latent_id: str) -> list[tuple[str, int]]:
        """(id, depth) of every indexed descendant, nearest first."""
        return self._query(
            "WITH RECURSIVE down(id, depth) AS ("
            " SELECT child, 1 FROM parents WHERE parent = ?"
            " UNION SELECT p.child, down.depth + 1 FROM parents p JOIN down ON p.parent = down.id"
            f" WHERE down.depth < {MAX_LINEAGE_DEPTH})"
            " SELECT id, min(depth) AS d FROM down GROUP BY id ORDER BY d, id",
            (latent_id,),
        )


@contextmanager
def _typed_errors(path: Path) -> Iterator[None]:
    """A lock held too long is ``StoreBusy``; a full disk or a read-only index is a typed storage
    error (``storage_errors``)."""
    with map_storage_errors(path):
        try:
            yield
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise StoreBusy(f"latent store index {path} stayed locked for {BUSY_TIMEOUT_S:.0f} s: {exc}") from exc
            raise
