"""The ACE-Step 1.5 model variants, as the diffusion loop sees them.

The six checkpoints share one network design and differ only in how they are sampled: whether they
were trained for classifier-free guidance, which timestep schedule they expect, which shift, and
which tasks they were trained on. Keeping those differences in one table (instead of six copies of
a sampling loop, as upstream does) is what lets one loop serve every variant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from prefect_acestep.stages.backends.protocol import TaskKind
from prefect_acestep.stages.errors import InvalidStageRequest

SchedulerMode = Literal["linear", "discrete", "continuous"]

CustomTimestepsPolicy = Literal["reject", "as_given", "map_turbo", "append_terminal"]
"""How a variant treats user-given timesteps (upstream behaviour, per variant):

- ``reject``: base ignores them upstream; here naming them is an error instead of a silent no-op.
- ``as_given``: sft / turbo-shift1 / turbo-shift3 use the list verbatim, terminal included.
- ``map_turbo``: turbo snaps each value to the nearest of its 20 trained timesteps (at most 20
  values), drops trailing zeros and appends the terminal 0.
- ``append_terminal``: turbo-continuous drops trailing zeros and appends the terminal 0.
"""

ALL_TASKS: frozenset[TaskKind] = frozenset({"text2music", "cover", "repaint", "extract", "lego", "complete"})
TURBO_TASKS: frozenset[TaskKind] = frozenset({"text2music", "repaint", "cover"})


@dataclass(frozen=True)
class Variant:
    """How one checkpoint is sampled. ``forced_shift`` wins over ``default_shift``."""

    name: str
    default_steps: int
    uses_cfg: bool
    scheduler: SchedulerMode
    default_shift: float
    forced_shift: float | None
    custom_timesteps: CustomTimestepsPolicy
    tasks: frozenset[TaskKind]


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("base", 30, True, "linear", 1.0, None, "reject", ALL_TASKS),
        # Upstream's supported_tasks_for_model: extract/lego/complete run on base only.
        Variant("sft", 30, True, "linear", 1.0, None, "as_given", TURBO_TASKS),
        Variant("turbo", 8, False, "discrete", 3.0, None, "map_turbo", TURBO_TASKS),
        Variant("turbo-shift1", 8, False, "linear", 1.0, None, "as_given", TURBO_TASKS),
        Variant("turbo-shift3", 8, False, "linear", 3.0, 3.0, "as_given", TURBO_TASKS),
        Variant("turbo-continuous", 8, False, "continuous", 3.0, None, "append_terminal", TURBO_TASKS),
    )
}


def get_variant(name: str) -> Variant:
    """The variant called ``name``; an unknown name is an error that lists the known ones."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise InvalidStageRequest(f"variant: unknown variant {name!r}; known: {sorted(VARIANTS)}") from None
