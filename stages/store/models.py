"""Result models of store operations (pydantic, so tasks can return them as artifacts)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from prefect_acestep.stages.records import LatentRecord
from prefect_acestep.stages.store.journal import RemovalReason


class RemovedLatent(BaseModel):
    id: str = Field(description="Latent ID that gc removed.")
    reason: RemovalReason = Field(description="'expired' (TTL ran out) or 'evicted' (byte budget).")
    at: datetime = Field(description="When it expired (for 'expired') or was evicted.")
    size_bytes: int = Field(ge=0, description="Bytes its file took.")


class GcReport(BaseModel):
    removed: list[RemovedLatent] = Field(default_factory=list, description="Latents removed, in removal order.")
    orphans_removed: list[str] = Field(
        default_factory=list,
        description="Leftover files removed: temp files of crashed writers, deleted latents' files.",
    )
    bytes_freed: int = Field(default=0, ge=0, description="Bytes freed, latents and orphans together.")
    bytes_in_use: int = Field(default=0, ge=0, description="Bytes the remaining latents take.")
    over_budget: bool = Field(
        default=False, description="Still above max_bytes: everything left is pinned or protected by a pin."
    )


class Lineage(BaseModel):
    """Where a latent came from and what was made from it, nearest first."""

    id: str
    ancestors: list[LatentRecord] = Field(default_factory=list, description="Stored ancestors, nearest first.")
    missing_ancestors: list[str] = Field(
        default_factory=list, description="Ancestor IDs named by a record but no longer in the store."
    )
    descendants: list[LatentRecord] = Field(default_factory=list, description="Stored descendants, nearest first.")
