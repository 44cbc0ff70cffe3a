"""How much one stage may make: bounds on products of fields that are each bounded alone.

Every field of a request has a bound, but their product does not: a batch of 64 at 600 s is
960,000 latent frames, about 90 GB of float32 audio to decode at once and 11 GB of WAV files, and
200 checkpoints of it take about 48 GB. So a stage is measured as a whole before any work, against
two budgets a worker's environment sets (each refusal is a ``BudgetExceeded`` naming the budget
and its variable):

- ``ACE_MAX_STAGE_AUDIO_S`` (default 7200): seconds of audio one stage makes, its batch items
  together (frames x batch / 25 Hz). Two hours is a batch of 12 at 600 s, or 64 at 112 s: about
  2 GB of 24-bit WAV files. Decoding goes one batch item at a time, so memory is one item's audio
  whatever the batch.
- ``ACE_MAX_CHECKPOINT_BYTES`` (default 2 GiB): the store space one run's checkpoints take
  (state and guidance momentum of every batch item per checkpoint). Checkpoints are stored as
  they are taken, so memory holds one at a time.

Each item's length is capped separately at the model's 15,000 frames (600 s): a repaint or lego
window that outpaints past it is refused by ``engine.context.output_frames``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from prefect_acestep.stages.engine.variants import VARIANTS
from prefect_acestep.stages.errors import BudgetExceeded, InvalidStageRequest
from prefect_acestep.stages.geometry import FRAME_RATE, LATENT_DIM, MAX_FRAMES
from prefect_acestep.stages.params import StageParams

AUDIO_BUDGET_ENV = "ACE_MAX_STAGE_AUDIO_S"
CHECKPOINT_BUDGET_ENV = "ACE_MAX_CHECKPOINT_BYTES"
DEFAULT_AUDIO_BUDGET_S = 7200.0
DEFAULT_CHECKPOINT_BUDGET_BYTES = 2 * 1024**3
_FLOAT32_BYTES = 4


@dataclass(frozen=True)
class StageBudget:
    audio_s: float = DEFAULT_AUDIO_BUDGET_S
    checkpoint_bytes: int = DEFAULT_CHECKPOINT_BUDGET_BYTES

    @classmethod
    def from_env(cls) -> StageBudget:
        """The worker's budgets (the defaults where its environment sets none)."""
        return cls(
            audio_s=_env_number(AUDIO_BUDGET_ENV, DEFAULT_AUDIO_BUDGET_S),
            checkpoint_bytes=int(_env_number(CHECKPOINT_BUDGET_ENV, DEFAULT_CHECKPOINT_BUDGET_BYTES)),
        )


def _env_number(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    if raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise InvalidStageRequest(f"{name}={raw!r}: must be a positive number")
    return value


def checkpoint_bytes(params: StageParams, frames: int, checkpoints: int) -> int:
    """Store space of ``checkpoints`` checkpoints of a run: each holds every batch item's state
    ``x_t`` and, when the run is guided with APG, its momentum of the same size."""
    momentum = VARIANTS[params.variant].uses_cfg and params.effective_guidance_scale > 1.0 and not params.use_adg
    per_state = params.batch_size * frames * LATENT_DIM * _FLOAT32_BYTES
    return checkpoints * per_state * (2 if momentum else 1)


def check_stage_size(params: StageParams, frames: int, checkpoints: int, budget: StageBudget | None = None) -> None:
    """Refuse a stage whose output (``frames`` per item) or checkpoints exceed the budgets."""
    if frames > MAX_FRAMES:
        raise InvalidStageRequest(
            f"duration: the result would be {frames / FRAME_RATE:g} s ({frames} frames); a stage makes at most "
            f"{MAX_FRAMES / FRAME_RATE:g} s ({MAX_FRAMES} frames)"
        )
    what = f"batch_size x duration: {params.batch_size} x {frames / FRAME_RATE:g} s ="
    _check_total([(params, frames, checkpoints)], what, "lower batch_size or duration", budget)


def check_fan_out_size(runs: list[tuple[StageParams, int, int]], budget: StageBudget | None = None) -> None:
    """Refuse stages that run side by side (variations) whose outputs or checkpoints together
    exceed the budgets: ``runs`` holds each stage's params, frames per item and checkpoints."""
    for params, frames, checkpoints in runs:
        check_stage_size(params, frames, checkpoints, budget)
    what = f"{len(runs)} variations of batch_size x duration make"
    _check_total(runs, what, "run fewer variations, a smaller batch or a shorter duration", budget)


def _check_total(
    runs: list[tuple[StageParams, int, int]], what: str, lower: str, budget: StageBudget | None
) -> None:
    budget = StageBudget.from_env() if budget is None else budget
    where = " in one stage" if len(runs) == 1 else " together"
    seconds = sum(frames * params.batch_size for params, frames, _ in runs) / FRAME_RATE
    if seconds > budget.audio_s:
        raise BudgetExceeded(
            f"{what} {seconds:g} s of audio{where}, over the budget of {budget.audio_s:g} s ({AUDIO_BUDGET_ENV}); "
            f"{lower}, or raise {AUDIO_BUDGET_ENV} on the worker"
        )
    needed = sum(checkpoint_bytes(params, frames, count) for params, frames, count in runs)
    if needed > budget.checkpoint_bytes:
        params, frames, count = runs[0]
        shape = f"{count} checkpoints of {params.batch_size} x {frames} frames" if len(runs) == 1 else "their checkpoints"
        raise BudgetExceeded(
            f"checkpoint_steps: {shape} take {needed / 1e9:.2f} GB of store space, over the budget of "
            f"{budget.checkpoint_bytes / 1e9:.2f} GB ({CHECKPOINT_BUDGET_ENV}); take fewer checkpoints or a "
            f"smaller batch, or raise {CHECKPOINT_BUDGET_ENV} on the worker"
        )
