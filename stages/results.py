"""What one stage returns, per sample (``StageResult``).

Results are small on purpose: tasks pass them between each other and cache them, so they hold latent
IDs and numbers, never tensors. A batch is stored as one latent ``[batch, T, D]``; a sample is that
latent's ID plus its index in the batch.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from typing_extensions import Self

from prefect_acestep.stages.backends.identity import BackendIdentity
from prefect_acestep.stages.params import MAX_SEED, StageParams

NonNegativeSeconds = Annotated[float, Field(ge=0.0)]


class CheckpointRef(BaseModel):
    """A stored checkpoint: the state ``x_t`` at the start of absolute step ``step``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    step: int = Field(ge=0, description="Absolute schedule index K of the checkpoint.")
    latent_id: str = Field(min_length=1, description="Latent ID of the checkpoint (the whole batch).")
    t: float = Field(ge=0.0, le=1.0, description="Noise level schedule[K] of the stored state.")


class StageResult(BaseModel):
    """One sample of one stage run: where its latents are, and how it was made."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    latent_id: str = Field(min_length=1, description="Latent ID of the final (clean) latent of the batch.")
    sample_index: int = Field(ge=0, description="This sample's index in the batch of latent_id.")
    seed: int = Field(ge=0, le=MAX_SEED, description="The seed drawn for this sample (never -1).")
    checkpoints: list[CheckpointRef] = Field(
        default_factory=list, description="Checkpoints stored during the run, in step order (same sample_index)."
    )
    params: StageParams = Field(description="The effective params the stage ran with.")
    stage_index: int | None = Field(None, ge=0, description="Index of the stage in its pipeline; None outside one.")
    backend: BackendIdentity = Field(description="Backend (name, variant, latent space, weights) that ran the stage.")
    total_steps: int = Field(ge=1, description="Steps N of the full schedule.")
    start_step: int = Field(ge=0, description="Absolute index k the run started at (0 from noise, K on resume).")
    t_start: float = Field(gt=0.0, le=1.0, description="Effective start noise level, schedule[start_step].")
    timings: dict[str, NonNegativeSeconds] = Field(
        default_factory=dict, description="Seconds spent per phase, e.g. {'load': .., 'diffusion': .., 'store': ..}."
    )
    lm_metadata: dict[str, Any] | None = Field(None, description="Planner/LM metadata (bpm, key, structure, ...).")
    audio_path: str | None = Field(None, description="Decoded audio file of this sample, when it was decoded.")

    @model_validator(mode="after")
    def _check_steps(self) -> Self:
        steps = [checkpoint.step for checkpoint in self.checkpoints]
        if steps != sorted(set(steps)):
            raise ValueError(f"checkpoints: steps must be increasing and distinct, got {steps}")
        if self.start_step >= self.total_steps:
            raise ValueError(f"start_step {self.start_step} leaves no step of {self.total_steps} to run")
        out_of_range = [step for step in steps if not self.start_step <= step < self.total_steps]
        if out_of_range:
            raise ValueError(
                f"checkpoints: steps {out_of_range} outside the steps run ({self.start_step}..{self.total_steps - 1})"
            )
        if self.sample_index >= self.params.batch_size:
            raise ValueError(f"sample_index {self.sample_index} out of range for batch_size {self.params.batch_size}")
        return self
