"""Leases of running flows: the latents a flow still needs survive gc until it ends.

A pipeline's stage 0 result is read by stage 1 minutes later; a byte-budget gc in between would
evict it (least recently used, unpinned), and stage 1 would fail on an ID that was valid when the
flow got it. So a running flow holds a lease, in the store itself so that gc on any host sees it:

- ``leases/<holder>.json``: the holder (the flow run's id), when its lease ends (wall-clock
  seconds) and the latents it borrows from the start (sources named by ID), in one atomic write,
  so no gc sees the lease without them. The flow writes it when it starts and renews it while it
  runs (every third of the lease); it removes it when it ends. A crashed flow stops renewing, and
  its lease ends by itself.
- ``leases/<holder>~<latent_id>``: an empty marker per latent borrowed later (a stage answered from
  the cache: the cache marks it, then checks that it is still there).

gc keeps every latent of a live holder: those its own stages made (their records carry the flow
run's id as ``pipeline_id``, so a put needs no marker and no extra write), those it marked, and
all of their ancestors (a repaint's audio is spliced from its source), as it does for pins. It
removes the files of ended leases.

Lease ends are compared on the gc host's clock with ``CLOCK_SKEW_S`` of slack: hosts sharing a
store are assumed to keep time within that (NTP keeps them within milliseconds).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from prefect_acestep.stages.errors import InvalidStageRequest
from prefect_acestep.stages.processes import HOST
from prefect_acestep.stages.store.fs import FileSystem

LEASES_DIR = "leases"
CLOCK_SKEW_S = 60.0
_SUFFIX = ".json"
_MARK = "~"
_HOLDER = re.compile(r"[0-9a-z][0-9a-z_-]{0,63}")


def validate_holder(holder: object) -> str:
    """A holder becomes a file name: lower-case letters, digits, '-' and '_' (a flow run's UUID)."""
    if not isinstance(holder, str) or _HOLDER.fullmatch(holder) is None:
        raise InvalidStageRequest(f"lease holder {holder!r}: lower-case letters, digits, '-' and '_', at most 64")
    return holder


def holder_rel(holder: str) -> str:
    return f"{LEASES_DIR}/{holder}{_SUFFIX}"


def marker_rel(holder: str, latent_id: str) -> str:
    return f"{LEASES_DIR}/{holder}{_MARK}{latent_id}"


def write_lease(fs: FileSystem, holder: str, expires_at: float, latent_ids: Iterable[str] = ()) -> None:
    """Start or renew ``holder``'s lease until ``expires_at``, holding ``latent_ids`` (validated by
    the caller) with it."""
    body = json.dumps(
        {"holder": holder, "expires_at": expires_at, "latents": sorted(latent_ids), "host": HOST, "pid": os.getpid()}
    ).encode()
    fs.write_atomic(holder_rel(validate_holder(holder)), lambda path: Path(path).write_bytes(body))


def mark(fs: FileSystem, holder: str, latent_ids: Iterable[str]) -> None:
    """Add latents a holder borrows (their IDs validated by the caller)."""
    validate_holder(holder)
    for latent_id in latent_ids:
        fs.write_atomic(marker_rel(holder, latent_id), lambda path: Path(path).write_bytes(b""))


def release(fs: FileSystem, holder: str) -> None:
    """End ``holder``'s lease: its markers first, then the lease itself, so that no marker outlives
    its lease but by a crash (which gc then clears)."""
    prefix = f"{validate_holder(holder)}{_MARK}"
    for name in fs.listing(LEASES_DIR):
        if name.startswith(prefix):
            fs.remove(f"{LEASES_DIR}/{name}")
    fs.remove(holder_rel(holder))


@dataclass(frozen=True)
class Leases:
    """What the leases in a store say at one moment."""

    holders: set[str]
    """Holders whose lease has not ended."""
    marked: set[str]
    """Latents those holders marked."""
    ended: list[str]
    """Files of ended leases (and markers without a lease), relative to the store root."""


def read_leases(fs: FileSystem, now: float) -> Leases:
    names = [name for name in fs.listing(LEASES_DIR) if not name.startswith(".")]  # not a writer's staging
    holders = sorted(name[: -len(_SUFFIX)] for name in names if name.endswith(_SUFFIX) and _MARK not in name)
    bodies = fs.read_heads([holder_rel(holder) for holder in holders], 4096)
    leases = {holder: _parse(body) for holder, body in zip(holders, bodies, strict=True)}
    live = {holder for holder, (ends, _) in leases.items() if ends + CLOCK_SKEW_S > now}
    markers = [name.split(_MARK, 1) for name in names if _MARK in name]
    return Leases(
        holders=live,
        marked={latent_id for holder, latent_id in markers if holder in live}
        | {latent_id for holder in live for latent_id in leases[holder][1]},
        ended=[holder_rel(h) for h in holders if h not in live]
        + [marker_rel(h, i) for h, i in markers if h not in live],
    )


def _parse(body: bytes | Exception) -> tuple[float, list[str]]:
    """When a lease ends and what it holds from the start; an unreadable or vanished one (released
    meanwhile) has ended."""
    if isinstance(body, Exception):
        return float("-inf"), []
    try:
        data = json.loads(body)
        latents = [str(latent_id) for latent_id in data.get("latents", [])]
        return float(data["expires_at"]), latents
    except (ValueError, KeyError, TypeError, AttributeError):
        return float("-inf"), []
