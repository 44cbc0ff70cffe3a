"""Timestep schedules: which noise levels a run evaluates the model at.

A schedule is ``N + 1`` floats from (near) 1 down to a terminal value (normally 0): ``N``
evaluation levels and the terminal. Values are Python floats (float64) so that the same request
always yields bit-identical levels, which is what makes a checkpoint's recorded schedule usable for
an exact resume.

Deviation from upstream, on purpose: upstream silently snaps, clamps, forces or truncates requested
values (turbo shift snapped to 1/2/3, continuous shift clamped, timesteps cut at 20, steps != 8
falling back to another scheduler). Here a request that names a value the schedule cannot honour is
an ``InvalidStageRequest`` naming the field; defaults, forced values and ranges are only applied to
what the request left unset (``None``). The one mapping kept is turbo's custom-timestep snapping,
which the turbo checkpoint needs (it was distilled on those 20 levels); it is logged and the
effective schedule is recorded.
"""

from __future__ import annotations

from dataclasses import dataclass

from loguru import logger

from prefect_acestep.stages.engine.variants import SchedulerMode, Variant
from prefect_acestep.stages.errors import InvalidStageRequest

TURBO_STEPS = 8
TURBO_SHIFTS: tuple[float, ...] = (1.0, 2.0, 3.0)
CONTINUOUS_SHIFT_RANGE: tuple[float, float] = (1.0, 5.0)
MAX_TURBO_TIMESTEPS = 20
LEVEL_TOLERANCE = 1e-9
"""Two noise levels closer than this are the same level (absorbs float64 rounding of t_start)."""


def shifted_linear(steps: int, shift: float) -> list[float]:
    """``t = linspace(1, 0, N + 1)`` then, if shift != 1, ``shift * t / (1 + (shift - 1) * t)``."""
    values = [1.0 - i / steps for i in range(steps)] + [0.0]
    if shift == 1.0:
        return values
    return [shift * t / (1.0 + (shift - 1.0) * t) for t in values]


def turbo_table(shift: float) -> list[float]:
    """The turbo checkpoint's 8-step table for shift 1, 2 or 3 (terminal 0 included).

    Upstream hard-codes these; they are exactly the shift formula at N = 8, so they are computed.
    """
    if shift not in TURBO_SHIFTS:
        raise InvalidStageRequest(f"shift: the discrete scheduler has tables for shifts {TURBO_SHIFTS}, got {shift}")
    return shifted_linear(TURBO_STEPS, shift)


def _turbo_valid_timesteps() -> tuple[float, ...]:
    levels: list[float] = []
    for shift in TURBO_SHIFTS:
        for t in turbo_table(shift)[:-1]:
            if all(abs(t - seen) > LEVEL_TOLERANCE for seen in levels):
                levels.append(t)
    return tuple(sorted(levels, reverse=True))


TURBO_VALID_TIMESTEPS: tuple[float, ...] = _turbo_valid_timesteps()
"""The 20 levels the turbo checkpoint was distilled on: the union of its three tables."""


@dataclass(frozen=True)
class Schedule:
    """A resolved schedule and how it was made (recorded with every latent)."""

    values: tuple[float, ...]
    mode: str
    """``linear``, ``discrete``, ``continuous`` or ``custom``."""
    shift: float | None
    """Effective shift; ``None`` for custom timesteps, which no shift touches."""

    @property
    def steps(self) -> int:
        return len(self.values) - 1


def resolve_schedule(
    variant: Variant,
    *,
    steps: int | None = None,
    shift: float | None = None,
    scheduler: SchedulerMode | None = None,
    custom_timesteps: list[float] | None = None,
) -> Schedule:
    """The full schedule a request asks for under ``variant`` (``None`` = the variant's default)."""
    if custom_timesteps is not None:
        return _custom(variant, custom_timesteps, steps=steps, shift=shift, scheduler=scheduler)
    n = variant.default_steps if steps is None else steps
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InvalidStageRequest(f"steps: must be a positive integer, got {steps!r}")
    s = _resolve_shift(variant, shift)
    mode = variant.scheduler if scheduler is None else scheduler
    if mode == "discrete":
        if n == TURBO_STEPS and s in TURBO_SHIFTS:
            return Schedule(tuple(turbo_table(s)), "discrete", s)
        if scheduler is not None:
            field = "steps" if n != TURBO_STEPS else "shift"
            raise InvalidStageRequest(
                f"{field}: the discrete scheduler only runs {TURBO_STEPS} steps at shift 1, 2 or 3 "
                f"(got steps={n}, shift={s}); choose scheduler 'linear' or 'continuous'"
            )
        # The variant's default scheduler, not chosen by the request: the shift formula is the
        # table's own generalisation, so it honours exactly the steps and shift that were asked for.
        mode = "linear"
    if mode == "continuous":
        lo, hi = CONTINUOUS_SHIFT_RANGE
        if not lo <= s <= hi:
            raise InvalidStageRequest(f"shift: the continuous scheduler takes shifts in [{lo}, {hi}], got {s}")
    elif mode != "linear":
        raise InvalidStageRequest(f"scheduler: unknown scheduler {scheduler!r}; use linear, discrete or continuous")
    return Schedule(tuple(shifted_linear(n, s)), mode, s)


def _resolve_shift(variant: Variant, shift: float | None) -> float:
    if shift is None:
        return variant.forced_shift if variant.forced_shift is not None else variant.default_shift
    if isinstance(shift, bool) or not isinstance(shift, int | float) or not shift > 0:
        raise InvalidStageRequest(f"shift: must be a positive number, got {shift!r}")
    if variant.forced_shift is not None and float(shift) != variant.forced_shift:
        raise InvalidStageRequest(
            f"shift: variant {variant.name} is fixed at shift {variant.forced_shift}, got {shift}"
        )
    return float(shift)


def _custom(
    variant: Variant,
    timesteps: list[float],
    *,
    steps: int | None,
    shift: float | None,
    scheduler: SchedulerMode | None,
) -> Schedule:
    if variant.custom_timesteps == "reject":
        raise InvalidStageRequest(
            f"custom_timesteps: variant {variant.name} does not take custom timesteps (upstream ignores them)"
        )
    if shift is not None:
        raise InvalidStageRequest("shift: custom_timesteps define the schedule; a shift would be ignored")
    if scheduler is not None:
        raise InvalidStageRequest("scheduler: custom_timesteps define the schedule; a scheduler would be ignored")
    values = [float(t) for t in timesteps]
    if variant.custom_timesteps == "as_given":
        if len(values) < 2:
            raise InvalidStageRequest("custom_timesteps: need at least two values (evaluation levels + terminal)")
    else:
        while values and values[-1] == 0.0:
            values.pop()
        if not values:
            raise InvalidStageRequest("custom_timesteps: no evaluation level left after dropping trailing zeros")
        if variant.custom_timesteps == "map_turbo":
            if len(values) > MAX_TURBO_TIMESTEPS:
                raise InvalidStageRequest(
                    f"custom_timesteps: turbo takes at most {MAX_TURBO_TIMESTEPS} timesteps, got {len(values)}"
                )
            mapped = [min(TURBO_VALID_TIMESTEPS, key=lambda v, t=t: abs(v - t)) for t in values]
            if mapped != values:
                logger.warning("custom_timesteps mapped to turbo's trained levels: {} -> {}", values, mapped)
            values = mapped
        values.append(0.0)
    _check_monotone(values)
    if steps is not None and steps != len(values) - 1:
        raise InvalidStageRequest(f"steps: custom_timesteps give {len(values) - 1} steps, got steps={steps}")
    return Schedule(tuple(values), "custom", None)


def _check_monotone(values: list[float]) -> None:
    if not all(0.0 <= t <= 1.0 for t in values):
        raise InvalidStageRequest(f"custom_timesteps: values must lie in [0, 1], got {values}")
    if not all(a > b for a, b in zip(values, values[1:])):
        raise InvalidStageRequest(f"custom_timesteps: values must be strictly decreasing, got {values}")
    if values[-2] <= 0.0:
        raise InvalidStageRequest(f"custom_timesteps: evaluation levels must be above 0, got {values}")


def start_index(values: tuple[float, ...] | list[float], t_start: float) -> int:
    """First evaluation index k with ``values[k] <= t_start``; an error if no step would run.

    Upstream ran the full schedule from noise when nothing matched; that silently discards the
    source, so it is an error here.
    """
    if not 0.0 < t_start <= 1.0:
        raise InvalidStageRequest(f"t_start: must lie in (0, 1], got {t_start}")
    for k, t in enumerate(values[:-1]):
        if t <= t_start + LEVEL_TOLERANCE:
            return k
    raise InvalidStageRequest(
        f"t_start: {t_start} is below the schedule's last evaluation level {values[-2]}: no step left to run"
    )


def place_level(values: tuple[float, ...], level: float) -> tuple[tuple[float, ...], int]:
    """Where a state at noise ``level`` continues on ``values``: (schedule, index of ``level``).

    Used when a checkpoint resumes on a different schedule (other shift, steps or variant). The
    state is left exactly as it is (no renoise): if ``values`` has ``level`` the run continues
    there, otherwise ``level`` is inserted so that the first step evaluates the model at the
    state's true noise level and then follows ``values``. The returned schedule is the run's full
    schedule (recorded; a later resume from it is exact).
    """
    if not 0.0 < level <= 1.0:
        raise InvalidStageRequest(f"resume: checkpoint noise level must lie in (0, 1], got {level}")
    for k, t in enumerate(values[:-1]):
        if abs(t - level) <= LEVEL_TOLERANCE:
            return values[:k] + (level,) + values[k + 1 :], k
        if t < level:
            return values[:k] + (level,) + values[k:], k
    if values[-1] >= level:
        raise InvalidStageRequest(
            f"resume: checkpoint noise level {level} is not above the schedule's terminal {values[-1]}"
        )
    n = len(values) - 1
    return values[:n] + (level,) + values[n:], n
