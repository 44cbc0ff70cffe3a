"""Retention rules: when a latent expires and what gc removes, decided without touching files.

Kept apart from the store so the rules read in one place: TTL counts from creation (a per-record
``ttl_hours`` overrides the store's); a pinned latent never expires and protects every ancestor it
was made from (so a pinned result can always be traced and re-derived); under a byte budget, gc
removes the expired first, then unpinned checkpoints, then unpinned finals, least recently used
first, until the store fits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from prefect_acestep.stages.store.index import Row
from prefect_acestep.stages.store.journal import RemovalReason


def expiry(created_at: datetime, record_ttl_hours: float | None, store_ttl_hours: float) -> datetime:
    hours = store_ttl_hours if record_ttl_hours is None else record_ttl_hours
    return created_at + timedelta(hours=hours)


def is_expired(row: Row, now: float, has_pinned_descendant: Callable[[str], bool]) -> bool:
    """Past its TTL and nothing keeps it: not pinned, and no pinned latent was made from it."""
    return not row.pinned and row.expires_at <= now and not has_pinned_descendant(row.id)


@dataclass(frozen=True)
class Removal:
    id: str
    reason: RemovalReason
    at: float
    size_bytes: int


def plan_gc(
    *,
    now: float,
    expired: list[tuple[str, float, int]],
    protected: set[str],
    eviction_order: list[tuple[str, int]],
    total_bytes: int,
    max_bytes: int | None,
) -> tuple[list[Removal], bool]:
    """What to remove, in order, and whether the store stays over ``max_bytes`` afterwards.

    ``expired`` and ``eviction_order`` hold unpinned rows only (the index filters them); protected
    ancestors are skipped here. Expired removals carry their expiry time so that a later
    ``LatentExpired`` says when the latent expired, not when gc happened to run.
    """
    removals = [Removal(i, "expired", expires_at, size) for i, expires_at, size in expired if i not in protected]
    remaining = total_bytes - sum(r.size_bytes for r in removals)
    if max_bytes is not None:
        gone = {r.id for r in removals}
        for latent_id, size in eviction_order:
            if remaining <= max_bytes:
                break
            if latent_id in protected or latent_id in gone:
                continue
            removals.append(Removal(latent_id, "evicted", now, size))
            remaining -= size
    return removals, max_bytes is not None and remaining > max_bytes
