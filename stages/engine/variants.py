"""The ACE-Step 1.5 model variants, as the diffusion loop sees them.

The six checkpoints share one network design and differ only in how they are sampled: which
timestep schedule they expect, which shift, and how they treat custom timesteps. Keeping those
differences in one table (instead of six copies of a sampling loop, as upstream does) is what lets
one loop serve every variant. Which variants exist, which are guided and which tasks each runs are
model facts, read from ``prefect_acestep.stages.vocabulary``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from prefect_acestep.stages.errors import InvalidStageRequest
from prefect_acestep.stages.vocabulary import MODEL_VARIANTS, is_guided

SchedulerMode = Literal["linear", "discrete", "continuous"]
"""How a schedule's timesteps are made (custom timesteps aside)."""
InferMethod = Literal["ode", "sde"]
"""ODE (deterministic Euler steps) or SDE (the clean estimate renoised with seeded noise)."""

CustomTimestepsPolicy = Literal["reject", "as_given", "map_turbo", "append_terminal"]
"""How a variant treats user-given timesteps (upstream behaviour, per variant):

- ``reject``: base ignores them upstream; here naming them is an error instead of a silent no-op.
- ``as_given``: sft / turbo-shift1 / turbo-shift3 use the list verbatim, terminal included.
- ``map_turbo``: turbo snaps each value to the nearest of its 20 trained timesteps (at most 20
  values), drops trailing zeros and appends the terminal 0.
- ``append_terminal``: turbo-continuous drops trailing zeros and appends the terminal 0.
"""

@dataclass(frozen=True)
class Variant:
    """How one checkpoint is sampled. ``forced_shift`` wins over ``default_shift``."""

    name: str
    default_steps: int
    scheduler: SchedulerMode
    default_shift: float
    forced_shift: float | None
    custom_timesteps: CustomTimestepsPolicy

    @property
    def uses_cfg(self) -> bool:
        """Trained for classifier-free guidance (base, sft); turbo variants are guidance-distilled."""
        return is_guided(self.name)


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        # base and sft: the steps and shift upstream's UI sets for them (32 and 50 steps, shift 3;
        # its API server's shift default is 3 too).
        Variant("base", 32, "linear", 3.0, None, "reject"),
        Variant("sft", 50, "linear", 3.0, None, "as_given"),
        Variant("turbo", 8, "discrete", 3.0, None, "map_turbo"),
        Variant("turbo-shift1", 8, "linear", 1.0, None, "as_given"),
        Variant("turbo-shift3", 8, "linear", 3.0, 3.0, "as_given"),
        Variant("turbo-continuous", 8, "continuous", 3.0, None, "append_terminal"),
    )
}
if tuple(VARIANTS) != MODEL_VARIANTS:
    raise RuntimeError(f"the sampling table {list(VARIANTS)} must list the model variants {list(MODEL_VARIANTS)}")


def get_variant(name: str) -> Variant:
    """The variant called ``name``; an unknown name is an error that lists the known ones."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise InvalidStageRequest(f"variant: unknown variant {name!r}; known: {sorted(VARIANTS)}") from None
