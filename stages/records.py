"""The persisted description of one stored latent: everything about how it was made, and its lifecycle."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from prefect_acestep.stages.backends.identity import BackendIdentity
from prefect_acestep.stages.vocabulary import StageType

UNKNOWN_BACKEND = BackendIdentity(name="unknown", variant="unknown", latent_space="unknown", weights_digest="")


class LatentRecord(BaseModel):
    """Provenance and lifecycle of one stored latent tensor ``[batch, T, D]``.

    The store fills ``id``, ``digest``, ``shape``, ``dtype``, ``size_bytes``, ``created_at`` and
    ``expires_at``; callers give the rest to ``LatentStore.put``.
    """

    model_config = ConfigDict(extra="forbid")

    id: str = Field(default="", description="Opaque latent ID, assigned by the store.")
    digest: str = Field(default="", description="sha256 of the tensor's raw bytes (C order), hex.")
    shape: list[int] = Field(default_factory=list, description="Tensor shape, normally [batch, T, D].")
    dtype: str = Field(default="", description="Tensor dtype, e.g. 'float32'.")
    size_bytes: int = Field(default=0, ge=0, description="Size of the stored file in bytes.")

    backend: BackendIdentity = Field(default=UNKNOWN_BACKEND, description="Backend that produced the latent.")
    stage_type: StageType = Field(default="generate", description="Stage type that produced the latent.")
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="Effective StageParams snapshot (drawn seeds, effective t_start, schedule, steps).",
    )
    seeds: list[int] = Field(default_factory=list, description="Drawn seed of each batch item.")
    batch_size: int = Field(default=1, ge=1, description="Number of samples in the batch dimension.")

    is_checkpoint: bool = Field(default=False, description="True for a mid-run x_t snapshot, False for a final x0.")
    checkpoint_step: int | None = Field(default=None, ge=0, description="Absolute schedule index K of a checkpoint.")
    total_steps: int | None = Field(default=None, ge=1, description="Steps N of the full schedule.")
    schedule: list[float] | None = Field(default=None, description="Full schedule (N+1 values, terminal last).")
    t_start: float | None = Field(default=None, description="Effective t_start the run began at (schedule[k]).")
    noise_level: float = Field(
        default=0.0, ge=0.0, le=1.0, description="Noise level t of the stored state: 0 for a final, schedule[K] for a checkpoint."
    )
    shift: float | None = Field(default=None, description="Effective shift of the schedule (None for custom timesteps).")
    scheduler: str | None = Field(default=None, description="How the schedule was made: linear, discrete, continuous, custom.")

    parent_ids: list[str] = Field(default_factory=list, description="Latent IDs this latent was made from.")
    pipeline_id: str | None = Field(default=None, description="Pipeline (flow) run that produced it.")
    stage_index: int | None = Field(default=None, ge=0, description="Index of the stage in its pipeline.")
    flow_run_id: str | None = Field(default=None, description="Prefect flow run id, when run under Prefect.")
    task_run_id: str | None = Field(default=None, description="Prefect task run id, when run under Prefect.")
    lm_metadata: dict[str, Any] | None = Field(default=None, description="Planner/LM metadata (bpm, key, ...).")

    created_at: datetime | None = Field(default=None, description="UTC creation time, set by the store.")
    ttl_hours: float | None = Field(
        default=None, gt=0, description="Per-record TTL override in hours; None uses the store's TTL."
    )
    expires_at: datetime | None = Field(
        default=None, description="UTC expiry (created_at + TTL), set by the store; pinned records never expire."
    )
    pinned: bool = Field(default=False, description="Pinned records (and their ancestors) survive gc.")
