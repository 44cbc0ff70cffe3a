"""The diffusion loop shared by every backend and variant.

Flow matching: ``x_t = t * eps + (1 - t) * x0`` (t = 1 is noise), the model predicts
``v = eps - x0``. Each batch item owns a ``torch.Generator`` seeded with its seed, which draws (in
this order) its starting noise and then its SDE noise, so item i of a batch equals a batch-1 run
with that seed, and a checkpoint can carry the generator states for an exact resume.

Where this differs from upstream ACE-Step on purpose (each a defect of upstream's loop):
- partial denoising noises the clean latent to exactly ``schedule[k]`` (upstream: to t_start
  while the loop starts lower), and a t_start with no step left is an error (upstream: full run);
- SDE noise comes from the seeded generators (upstream: the global RNG) and renoises to the next
  level of the schedule actually run (upstream base/sft: the unshifted linear level);
- checkpoints resume without renoise, at the same absolute step, with momentum and generators;
- the cover switch is an absolute step of the full schedule, also for partial and resumed runs.

Resuming with other parameters: a batch item whose seed differs from the checkpoint's gets a fresh
generator from its new seed; APG momentum is restored whenever the new run uses APG; a schedule
that differs (other shift, steps, scheduler or variant) is continued from the checkpoint's own
noise level, inserting that level when the new schedule lacks it (see ``schedules.place_level``),
and the run's full schedule is recorded as such.

Repaint and lego hold the source outside their window for the steps ``request.repaint`` says and
blend the result back into it at the end (``engine.repaint``: upstream's seams by default).

The unconditional branch is only evaluated inside the cfg interval (outside it upstream computes
and discards it). ``backend.reset_cache()`` is called before the first model call of every run and
at the cover switch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import get_args

import torch

from prefect_acestep.stages.backends.protocol import Backend, ConditionSpec
from prefect_acestep.stages.engine.context import build_task_context
from prefect_acestep.stages.engine.guidance import adg, apg
from prefect_acestep.stages.engine.repaint import RepaintSeams, blend_edges
from prefect_acestep.stages.engine.schedules import Schedule, place_level, resolve_schedule, start_index
from prefect_acestep.stages.engine.variants import InferMethod, SchedulerMode, Variant, get_variant
from prefect_acestep.stages.errors import DiffusionError, InvalidStageRequest
from prefect_acestep.stages.geometry import LATENT_DIM
from prefect_acestep.stages.vocabulary import refusal

RESUME_T_TOLERANCE = 1e-6
"""A resume's t_start agrees with the checkpoint's level when closer than this."""
_KEEP_NOISE_SALT = 0x5A17_5EED_C0DE_0001
"""Seeds the repaint/lego noise of the kept region apart from the item's own stream, so that it
is re-drawn identically on resume and needs no state in the checkpoint."""


@dataclass(frozen=True)
class StepInfo:
    """Progress after absolute step ``step`` (0-based) of ``total_steps`` finished."""

    step: int
    total_steps: int
    t: float
    model_calls: int


@dataclass
class LoopState:
    """One checkpoint: the state at the START of absolute step ``step`` (before its model call)."""

    step: int
    x_t: torch.Tensor
    t: float
    schedule: list[float]
    variant: str
    steps: int
    shift: float | None
    """Effective shift of the schedule; ``None`` when custom timesteps made it."""
    momentum: torch.Tensor | None
    generator_states: list[torch.Tensor]
    seeds: list[int]
    scheduler: str = ""
    """How the schedule was made (``Schedule.mode``); lets a resume inherit it unchanged."""


@dataclass(frozen=True)
class LoopRequest:
    """One run of the loop; ``None`` fields inherit the variant's defaults."""

    cond: ConditionSpec
    seeds: list[int]
    frames: int
    variant: str = "turbo"
    steps: int | None = None
    shift: float | None = None
    scheduler: SchedulerMode | None = None
    custom_timesteps: list[float] | None = None
    infer_method: InferMethod = "ode"
    guidance_scale: float = 1.0
    use_adg: bool = False
    cfg_interval: tuple[float, float] = (0.0, 1.0)
    init: torch.Tensor | None = None
    t_start: float | None = None
    """``None``: 1.0 for a fresh run, the checkpoint's own level for a resume."""
    source: torch.Tensor | None = None
    codes: torch.Tensor | None = None
    """5 Hz LM codes ``[1 or B, n, quantizers]`` conditioning a text2music run (see ``build_task_context``)."""
    cover_strength: float = 1.0
    repaint_window: tuple[float, float] | None = None
    repaint: RepaintSeams = RepaintSeams()
    """How repaint/lego join the window to the source (upstream's balanced seams by default)."""
    checkpoint_steps: tuple[int, ...] = ()
    resume: LoopState | None = None
    on_step: Callable[[StepInfo], None] | None = None
    on_checkpoint: Callable[[LoopState, float], None] | None = None
    """Called with each checkpoint as it is taken (and the level the run started at); it is then
    not kept in ``LoopResult.checkpoints``, so a caller that stores it holds one at a time."""


@dataclass
class LoopResult:
    x0: torch.Tensor
    checkpoints: list[LoopState]
    schedule: list[float]
    start_index: int
    t_start: float
    model_calls: int
    scheduler: str = ""
    """``linear``, ``discrete``, ``continuous`` or ``custom`` (the schedule's making)."""
    shift: float | None = None
    steps: int = 0
    """N of the full schedule (``len(schedule) - 1``)."""


@torch.no_grad()
def run_loop(backend: Backend, request: LoopRequest) -> LoopResult:
    """Run one diffusion: validate, resolve the schedule, set up the start state, denoise.

    Sampling never needs gradients; without ``no_grad`` a backend with trainable parameters would
    build an autograd graph per step.
    """
    req = request
    variant = get_variant(req.variant)
    refused = refusal(variant.name, req.cond.task)
    if refused is not None:
        raise InvalidStageRequest(f"task: {refused}")
    batch = _check_seeds(req.seeds)
    if isinstance(req.frames, bool) or not isinstance(req.frames, int) or req.frames < 1:
        raise InvalidStageRequest(f"frames: must be a positive integer, got {req.frames!r}")
    if req.infer_method not in get_args(InferMethod):
        raise InvalidStageRequest(f"infer_method: must be one of {list(get_args(InferMethod))}, got {req.infer_method!r}")
    guided = _guided(variant, req)
    schedule = _request_schedule(variant, req)
    device = backend.device
    shape = (batch, req.frames, LATENT_DIM)
    gens = [torch.Generator(device=device).manual_seed(s) for s in req.seeds]

    momentum: torch.Tensor | None = None
    if req.resume is not None:
        values, start, x = _resume_start(req, schedule.values, shape, gens)
        if guided and not req.use_adg and req.resume.momentum is not None:
            momentum = req.resume.momentum.to(device)
    else:
        values, start, x = _fresh_start(backend, req, schedule.values, shape, gens)
    n = len(values) - 1
    checkpoint_steps = _check_checkpoints(req.checkpoint_steps, start, n)

    source = None if req.source is None else _as_latents("source", req.source, batch, None, device)
    ctx = build_task_context(
        backend,
        req.cond,
        batch=batch,
        frames=req.frames,
        source=source,
        codes=req.codes,
        window=req.repaint_window,
        cover_strength=req.cover_strength,
        total_steps=n,
        guided=guided,
    )
    keep, keep_source, keep_noise = ctx.keep, ctx.keep_source, None
    inject_until = req.repaint.injection_steps(n) if keep is not None else 0
    if keep is not None and start < inject_until:
        salted = [torch.Generator(device=device).manual_seed(s ^ _KEEP_NOISE_SALT) for s in req.seeds]
        keep_noise = _draw(backend, salted, shape)
        x = torch.where(keep, values[start] * keep_noise + (1.0 - values[start]) * keep_source, x)

    lo, hi = req.cfg_interval
    scale = float(req.guidance_scale)
    regime = ctx.first if ctx.switch_step is None or start < ctx.switch_step else ctx.after
    assert regime is not None
    checkpoints: list[LoopState] = []
    calls = 0
    backend.reset_cache()  # a run never sees cross-attention state cached by an earlier run

    for i in range(start, n):
        t, t_next = values[i], values[i + 1]
        if i in checkpoint_steps:
            # No clone needed: x and momentum are never modified in place, only rebound.
            state = LoopState(
                step=i, x_t=x, t=t, schedule=list(values), variant=variant.name, steps=n, shift=schedule.shift,
                momentum=momentum, generator_states=[g.get_state() for g in gens], seeds=list(req.seeds),
                scheduler=schedule.mode,
            )  # fmt: skip
            if req.on_checkpoint is not None:
                req.on_checkpoint(state, values[start])
            else:
                checkpoints.append(state)
        if i == ctx.switch_step and i > start:
            backend.reset_cache()
            regime = ctx.after
            assert regime is not None
        t_vec = torch.full((batch,), t, device=device, dtype=torch.float32)
        v = backend.velocity(x, t_vec, regime.cond, regime.context)
        calls += 1
        if guided and lo <= t <= hi:
            v_uncond = backend.velocity(x, t_vec, regime.uncond, regime.context)
            calls += 1
            if req.use_adg:
                v = adg(x, v, v_uncond, t, scale)
            else:
                v, momentum = apg(v, v_uncond, scale, momentum)

        if i == n - 1:  # the last step always lands on the clean estimate
            x = torch.add(x, v, alpha=-t)
        elif req.infer_method == "sde":  # x0 estimate, renoised to the next level
            x = torch.add(torch.add(x, v, alpha=-t) * (1.0 - t_next), _draw(backend, gens, shape), alpha=t_next)
        else:  # Euler
            x = torch.add(x, v, alpha=-(t - t_next))
        if keep_noise is not None:
            # Upstream re-injects after each update before its cutoff but never after the last
            # one; strict ends on the source itself.
            if i < min(inject_until, n - 1):
                x = torch.where(keep, t_next * keep_noise + (1.0 - t_next) * keep_source, x)
            elif i == n - 1 and req.repaint.strict:
                x = torch.where(keep, keep_source, x)
        if req.on_step is not None:
            req.on_step(StepInfo(step=i, total_steps=n, t=t, model_calls=calls))

    if keep is not None and req.repaint.blend_frames > 0:
        x = blend_edges(x, keep_source, ~keep[..., 0], req.repaint.blend_frames)
    _check_output(x)
    return LoopResult(
        x0=x,
        checkpoints=checkpoints,
        schedule=list(values),
        start_index=start,
        t_start=values[start],
        model_calls=calls,
        scheduler=schedule.mode,
        shift=schedule.shift,
        steps=n,
    )


def _request_schedule(variant: Variant, req: LoopRequest) -> Schedule:
    """The request's full schedule. A resume that names no schedule field (``None`` = inherit) on
    the checkpoint's variant inherits the checkpoint's schedule, so that it is exact by default."""
    state = req.resume
    fields = (req.steps, req.shift, req.scheduler, req.custom_timesteps)
    if state is not None and state.variant == variant.name and all(f is None for f in fields):
        return Schedule(tuple(state.schedule), state.scheduler, state.shift)
    return resolve_schedule(
        variant, steps=req.steps, shift=req.shift, scheduler=req.scheduler, custom_timesteps=req.custom_timesteps
    )


def _guided(variant: Variant, req: LoopRequest) -> bool:
    scale = req.guidance_scale
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not 1.0 <= scale < float("inf"):
        raise InvalidStageRequest(f"guidance_scale: must be a finite number >= 1, got {scale!r}")
    if not variant.uses_cfg:
        if scale != 1.0:
            raise InvalidStageRequest(
                f"guidance_scale: variant {variant.name} is not guided (no CFG); got guidance_scale={scale}"
            )
        if req.use_adg:
            raise InvalidStageRequest(f"use_adg: variant {variant.name} is not guided (no CFG)")
    lo, hi = req.cfg_interval
    if not 0.0 <= lo <= hi <= 1.0:
        raise InvalidStageRequest(f"cfg_interval: need 0 <= start <= end <= 1, got {req.cfg_interval}")
    return variant.uses_cfg and scale > 1.0


def _check_seeds(seeds: list[int]) -> int:
    if not seeds:
        raise InvalidStageRequest("seeds: need one seed per batch item, got none")
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < 2**64:
            raise InvalidStageRequest(f"seeds: each seed must be an integer in [0, 2**64), got {s!r}")
    return len(seeds)


def _check_checkpoints(steps: tuple[int, ...], start: int, n: int) -> frozenset[int]:
    for k in steps:
        if isinstance(k, bool) or not isinstance(k, int) or not start <= k < n:
            raise InvalidStageRequest(
                f"checkpoint_steps: step {k!r} is not one this run executes (absolute steps {start}..{n - 1})"
            )
    return frozenset(steps)


def _as_latents(
    name: str, value: torch.Tensor, batch: int, frames: int | None, device: torch.device
) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.dim() != 3 or value.shape[2] != LATENT_DIM:
        got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise InvalidStageRequest(f"{name}: expected latents [B, T, {LATENT_DIM}], got {got}")
    if value.dtype != torch.float32:
        raise InvalidStageRequest(f"{name}: expected float32 latents, got {value.dtype} (cast before the loop)")
    if value.shape[0] not in (1, batch):
        raise InvalidStageRequest(f"{name}: batch {value.shape[0]} does not match {batch} seeds")
    if frames is not None and value.shape[1] != frames:
        raise InvalidStageRequest(f"{name}: has {value.shape[1]} frames, request has frames={frames}")
    value = value.to(device)
    return value if value.shape[0] == batch else value.expand(batch, -1, -1).contiguous()


def _draw(backend: Backend, gens: list[torch.Generator], shape: tuple[int, int, int]) -> torch.Tensor:
    """One noise tensor, item i drawn from its own generator (the only per-item Python loop)."""
    per_item = shape[1:]
    if len(gens) == 1:
        return backend.noise(per_item, gens[0]).unsqueeze(0)
    return torch.stack([backend.noise(per_item, g) for g in gens])


def _fresh_start(
    backend: Backend,
    req: LoopRequest,
    values: tuple[float, ...],
    shape: tuple[int, int, int],
    gens: list[torch.Generator],
) -> tuple[tuple[float, ...], int, torch.Tensor]:
    noise = _draw(backend, gens, shape)
    if req.t_start is not None and not 0.0 < req.t_start <= 1.0:
        raise InvalidStageRequest(f"t_start: must lie in (0, 1], got {req.t_start}")
    if req.init is None:
        if req.t_start is not None and req.t_start != 1.0:
            raise InvalidStageRequest(f"t_start: {req.t_start} needs an init latent to partially denoise")
        return values, 0, noise
    init = _as_latents("init", req.init, shape[0], shape[1], backend.device)
    k = start_index(values, 1.0 if req.t_start is None else req.t_start)
    t = values[k]
    return values, k, t * noise + (1.0 - t) * init


def _resume_start(
    req: LoopRequest,
    values: tuple[float, ...],
    shape: tuple[int, int, int],
    gens: list[torch.Generator],
) -> tuple[tuple[float, ...], int, torch.Tensor]:
    state = req.resume
    assert state is not None
    if req.init is not None:
        raise InvalidStageRequest("init: a resume continues from the checkpoint's x_t; give init or resume, not both")
    if tuple(state.x_t.shape) != shape:
        raise InvalidStageRequest(
            f"resume: checkpoint x_t has shape {tuple(state.x_t.shape)}, the request needs {shape}"
        )
    if state.x_t.dtype != torch.float32:
        raise InvalidStageRequest(f"resume: checkpoint x_t is {state.x_t.dtype}, expected float32")
    if len(state.seeds) != shape[0] or len(state.generator_states) != shape[0]:
        raise InvalidStageRequest(
            f"resume: checkpoint has {len(state.seeds)} seeds / {len(state.generator_states)} generator states, "
            f"the request has {shape[0]} seeds"
        )
    if not 0 <= state.step < len(state.schedule) - 1 or abs(state.schedule[state.step] - state.t) > RESUME_T_TOLERANCE:
        raise InvalidStageRequest(
            f"resume: checkpoint step {state.step} / level {state.t} do not match its schedule {state.schedule}"
        )
    if req.t_start is not None and abs(req.t_start - state.t) > RESUME_T_TOLERANCE:
        raise InvalidStageRequest(
            f"t_start: {req.t_start} disagrees with the checkpoint's noise level {state.t} (step {state.step}); "
            "leave t_start unset to continue from the checkpoint"
        )
    if values == tuple(state.schedule):
        placed, start = values, state.step
    else:
        placed, start = place_level(values, state.t)
    for gen, seed, old_seed, gen_state in zip(gens, req.seeds, state.seeds, state.generator_states):
        if seed == old_seed:
            try:
                gen.set_state(gen_state)
            except RuntimeError as exc:  # a state from another device type's generator
                raise InvalidStageRequest(
                    f"resume: generator state of seed {seed} does not fit a {gen.device} generator ({exc}); "
                    "an exact resume needs the device type the checkpoint was made on"
                ) from exc
    return placed, start, state.x_t.to(gens[0].device)


def _check_output(x: torch.Tensor) -> None:
    """NaN/Inf or an all-zero item means the model or its inputs broke.

    One reduction and one device sync: ``max |x|`` per item is NaN for NaN, inf for Inf, 0 when
    all zero (bool reductions such as ``isfinite().all()`` are several times slower).
    """
    peaks = x.abs().amax(dim=(1, 2)).tolist()
    bad_finite = [i for i, p in enumerate(peaks) if not math.isfinite(p)]
    bad_zero = [i for i, p in enumerate(peaks) if p == 0.0]
    if bad_finite:
        raise DiffusionError(f"diffusion produced NaN/Inf latents for batch items {bad_finite}")
    if bad_zero:
        raise DiffusionError(f"diffusion produced all-zero latents for batch items {bad_zero}")
