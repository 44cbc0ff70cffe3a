"""The lifecycle journal: pins, unpins, removals (tombstones) and revivals, as JSON lines.

Pins and tombstones change after a latent file is written, and rewriting a megabyte tensor file to
flip a flag would be slow and risky. So these changes go to a journal instead: each change is
durable before the index or any file is touched, the index remembers how far into the journal it
has applied (its *position*), and a rebuild replays the whole journal over the files. One write
covers a whole gc batch.

The journal has one interface (``Journal``) and two layouts, one per site (``site.py``), as each
filesystem allows:

- a local directory appends to one file, ``journal.jsonl`` (fsync per append; the position is a byte
  offset; a torn last line from a crash is cut off by the next append);
- an object store cannot append, so each append is one object ``journal/<n>.jsonl`` with ``n`` the
  next sequence number (the position is the last ``n``), created exclusively. Two writers that
  both computed ``n`` (a lock holder and a holder whose lease was taken over) cannot both succeed:
  the loser raises ``StoreBusy`` before it changes anything else. Reading probes forward from the
  position, fetching a growing window of objects at once, so catching up costs one request when
  nothing changed, and a rebuild reads a long journal in parallel batches.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol, get_args

from prefect_acestep.stages.errors import StageError, StoreBusy
from prefect_acestep.stages.store.ids import validate_latent_id

if TYPE_CHECKING:
    from prefect_acestep.stages.store.fs import LocalFileSystem
    from prefect_acestep.stages.store.remote import RemoteFileSystem

JOURNAL = "journal.jsonl"
SEGMENTS_DIR = "journal"
_MAX_WINDOW = 64

Op = Literal["pin", "unpin", "remove", "revive"]
RemovalReason = Literal["deleted", "expired", "evicted", "lost", "corrupt"]
"""Why a latent left the store: explicit delete, TTL, byte-budget eviction, its file vanished from
disk, or its file was unreadable and moved to ``corrupt/``."""


@dataclass(frozen=True)
class Event:
    op: Op
    id: str
    at: float
    reason: RemovalReason | None = None

    def removal(self) -> tuple[str, RemovalReason, float]:
        """(id, reason, at) of a ``remove`` event: the tombstone it leaves."""
        if self.op != "remove" or self.reason is None:
            raise ValueError(f"{self} is not a removal")
        return self.id, self.reason, self.at

    def to_line(self) -> bytes:
        body = {"op": self.op, "id": self.id, "at": self.at}
        if self.reason is not None:
            body["reason"] = self.reason
        return (json.dumps(body, separators=(",", ":")) + "\n").encode()


class JournalBehind(Exception):
    """The journal holds less than the index says it applied (restored from backup, wiped, or a
    different store at the same place): the index must be rebuilt."""


def segment_rel(number: int) -> str:
    return f"{SEGMENTS_DIR}/{number:012d}.jsonl"


class Journal(Protocol):
    """A site's journal layout. Callers of ``append`` hold the store lock."""

    def append(self, events: list[Event], *, after: int) -> int:
        """Make ``events`` durable; return the journal position after them. ``after`` is the position
        the caller's index is caught up to (an object store names the next segment by it)."""
        ...

    def read(self, offset: int) -> tuple[list[Event], int]:
        """Complete events after position ``offset``, and the position after the last of them.
        Raises ``JournalBehind`` when the journal does not reach ``offset``."""
        ...


class AppendedJournal:
    """One file, ``journal.jsonl``, appended with fsync; the position is a byte offset. A torn last
    line (a crash mid-append) is not an event, and the next append cuts it off."""

    def __init__(self, fs: LocalFileSystem) -> None:
        self.fs = fs

    def append(self, events: list[Event], *, after: int) -> int:
        return self.fs.append_durable(JOURNAL, _lines(events))

    def read(self, offset: int) -> tuple[list[Event], int]:
        try:
            size = self.fs.size(JOURNAL)
        except FileNotFoundError:
            size = 0
        if size < offset:
            raise JournalBehind(f"journal is {size} bytes but the index has applied {offset}")
        if size == offset:
            return [], offset
        data = self.fs.read_range(JOURNAL, offset)
        end = data.rfind(b"\n") + 1
        return _parse(data[:end], f"{JOURNAL} after byte {offset}"), offset + end


class SegmentedJournal:
    """One object per append, ``journal/<n>.jsonl``, created exclusively; the position is the last
    ``n``. Reading probes forward from the position, a growing window of objects at once."""

    def __init__(self, fs: RemoteFileSystem) -> None:
        self.fs = fs

    def append(self, events: list[Event], *, after: int) -> int:
        data = _lines(events)
        number = after + 1
        if self.fs.create(segment_rel(number), data) is not None:
            return number
        existing = self.fs.read_many([segment_rel(number)])[0]
        if existing == data:
            return number  # our own write, whose answer was lost and which a retry then found
        raise StoreBusy(
            f"store journal entry {self.fs.where(segment_rel(number))} was written by another process while "
            "this one held the store lock (its lease was taken over?); nothing was changed, try again"
        )

    def read(self, offset: int) -> tuple[list[Event], int]:
        events: list[Event] = []
        position, window = offset, 1
        check = [segment_rel(offset)] if offset > 0 else []  # the last applied segment must still be there
        while True:
            numbers = range(position + 1, position + 1 + window)
            found = self.fs.read_many(check + [segment_rel(n) for n in numbers])
            if check:
                if isinstance(found[0], FileNotFoundError):
                    raise JournalBehind(f"journal segment {check[0]} is missing but the index has applied it")
                found, check = found[1:], []
            for number, data in zip(numbers, found, strict=True):
                if isinstance(data, FileNotFoundError):
                    return events, position
                if isinstance(data, Exception):
                    raise data
                events += _parse(data, segment_rel(number))
                position = number
            window = min(window * 4, _MAX_WINDOW)


def _lines(events: list[Event]) -> bytes:
    return b"".join(event.to_line() for event in events)


def _parse(data: bytes, where: str) -> list[Event]:
    events = []
    for number, line in enumerate(data.splitlines(), start=1):
        try:
            body = json.loads(line)
            latent_id = validate_latent_id(body["id"])  # it becomes a file path when applied
            event = Event(op=body["op"], id=latent_id, at=float(body["at"]), reason=body.get("reason"))
            if event.op not in get_args(Op) or (event.op == "remove") != (event.reason in get_args(RemovalReason)):
                raise ValueError(f"unknown operation {line!r}")
            events.append(event)
        except (ValueError, KeyError, TypeError) as exc:
            raise StageError(f"store journal {where} is damaged at line {number}: {exc}") from exc
    return events


@dataclass
class JournalState:
    """The net effect of a journal: pin overrides and tombstones per latent ID."""

    pins: dict[str, bool] = field(default_factory=dict)
    tombstones: dict[str, tuple[RemovalReason, float]] = field(default_factory=dict)

    def apply(self, event: Event) -> None:
        if event.op in ("pin", "unpin"):
            self.pins[event.id] = event.op == "pin"
        elif event.op == "remove":
            self.pins.pop(event.id, None)
            _, reason, at = event.removal()
            self.tombstones[event.id] = (reason, at)
        else:  # revive: an import brought the ID back; its file's record is the truth again
            self.pins.pop(event.id, None)
            self.tombstones.pop(event.id, None)


def replay(events: list[Event]) -> JournalState:
    state = JournalState()
    for event in events:
        state.apply(event)
    return state
