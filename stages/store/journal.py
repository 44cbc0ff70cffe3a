"""The lifecycle journal: pins, unpins, removals (tombstones) and revivals, as JSON lines.

Pins and tombstones change after a latent file is written, and rewriting a megabyte tensor file to
flip a flag would be slow and risky. So these changes go to one append-only journal instead: each
change is durable (fsync) before the index or any file is touched, the index remembers how far into
the journal it has applied, and a rebuild replays the whole journal over the files. One fsync covers
a whole gc batch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Literal, get_args

from stages.errors import StageError
from stages.store.fs import FileSystem
from stages.store.ids import validate_latent_id

JOURNAL = "journal.jsonl"

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


def append(fs: FileSystem, events: list[Event]) -> int:
    """Make ``events`` durable; return the journal's size after them. Caller holds the store lock."""
    return fs.append_durable(JOURNAL, b"".join(event.to_line() for event in events))


def read(fs: FileSystem, offset: int) -> tuple[list[Event], int]:
    """Complete events from byte ``offset`` on, and the offset just past the last complete line (a
    torn last line, from a crash mid-append, is not an event)."""
    if not fs.exists(JOURNAL):
        return [], 0
    data = fs.read_range(JOURNAL, offset)
    end = data.rfind(b"\n") + 1
    events = []
    for number, line in enumerate(data[:end].splitlines(), start=1):
        try:
            body = json.loads(line)
            latent_id = validate_latent_id(body["id"])  # it becomes a file path when applied
            event = Event(op=body["op"], id=latent_id, at=float(body["at"]), reason=body.get("reason"))
            if event.op not in get_args(Op) or (event.op == "remove") != (event.reason in get_args(RemovalReason)):
                raise ValueError(f"unknown operation {line!r}")
            events.append(event)
        except (ValueError, KeyError, TypeError) as exc:
            raise StageError(f"store journal {JOURNAL} is damaged at line {number} after byte {offset}: {exc}") from exc
    return events, offset + end


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
