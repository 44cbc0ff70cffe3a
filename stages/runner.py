"""``run_stage``: one stage against a store and a backend, framework-free.

It resolves the source by precedence (typed errors, no fallback to noise), checks compatibility,
prepares the loop's inputs per mode, runs the shared loop, and stores the final latent and every
checkpoint with full provenance (backend identity, effective params, seeds, schedule, parents). The
Prefect tasks call exactly this.

Modes, decided by the source:
- noise: no source; a fresh run of ``duration`` seconds.
- init: a final latent feeding generate/refine: partial denoising from ``t_start`` (the fast path:
  no VAE decode or encode at all).
- resume: a checkpoint latent: exact continuation from its step, momentum and generators.
- audio: the stages that read their source as audio (cover, repaint, extract, lego, complete): the
  source goes through audio first (decode, then encode), so that a generated latent feeds them
  exactly as uploaded audio would, unless it already is encoded audio (an ``import`` latent).

Planning (the spec's "LLM phase 1") comes first when a generate/refine asks for it: from noise the
backend's planner plans (or the caller hands in the plan it got, e.g. from a cached Prefect task);
from a source latent its stored plan is reused. The run then goes on with the plan written into
its params (``prefect_acestep.stages.planning.stage.apply_plan``), and the LM's codes, if any,
condition the DiT as upstream's cover-like context.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch

from prefect_acestep.stages.backends.protocol import Backend
from prefect_acestep.stages.backends.registry import load_backend
from prefect_acestep.stages.budgets import check_stage_size
from prefect_acestep.stages.engine.context import output_frames
from prefect_acestep.stages.engine.loop import LoopRequest, LoopState, StepInfo, run_loop
from prefect_acestep.stages.engine.repaint import RepaintSeams
from prefect_acestep.stages.errors import IncompatibleLatent, InvalidStageRequest
from prefect_acestep.stages.geometry import FRAME_RATE, VQ_POOL
from prefect_acestep.stages.latent_audio import latent_audio, stage_window
from prefect_acestep.stages.params import DEFAULT_DURATION_S, StageParams
from prefect_acestep.stages.planning.codes import parse_audio_codes
from prefect_acestep.stages.planning.protocol import Plan
from prefect_acestep.stages.planning.stage import planned
from prefect_acestep.stages.records import LatentRecord
from prefect_acestep.stages.requests import resolve_source
from prefect_acestep.stages.results import CheckpointRef, StageResult
from prefect_acestep.stages.seeds import draw_base_seed, item_seeds
from prefect_acestep.stages.sources import as_float32, check_source
from prefect_acestep.stages.store import LatentStore
from prefect_acestep.stages.vocabulary import IMPORT_STAGE, STAGES

_ENCODE_NOISE_SALT = 0x0E4C_0DE5_A4B1_0001
"""Seeds a ``sample`` VAE encode apart from the diffusion's own noise streams."""
MOMENTUM_KEY = "momentum"
GENERATOR_STATES_KEY = "generator_states"

Mode = Literal["noise", "init", "resume", "audio"]


@dataclass(frozen=True)
class Provenance:
    """Where a run happened, recorded on its latents (Prefect fills the run ids)."""

    pipeline_id: str | None = None
    stage_index: int | None = None
    flow_run_id: str | None = None
    task_run_id: str | None = None


@dataclass
class _Source:
    """The resolved source of a run: its record, the selected sample, and how it will be used."""

    mode: Mode
    record: LatentRecord | None = None
    latent: torch.Tensor | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    sample_index: int = 0


def run_stage(
    params: StageParams,
    store: LatentStore,
    *,
    backend: Backend | None = None,
    stage_latents: Mapping[int, str] | None = None,
    provenance: Provenance = Provenance(),
    plan: Plan | None = None,
    on_step: Callable[[StepInfo], None] | None = None,
) -> list[StageResult]:
    """Run one stage and return one ``StageResult`` per batch item.

    ``stage_latents`` maps earlier pipeline stage indices to their final latent IDs (for
    ``src_stage``). ``plan`` is the plan of a generate from noise that asks for one, made by the
    caller; None plans here when needed. The run's size is checked before any model work
    (``budgets``). Checkpoints are stored as they are taken, so memory holds one at a time (a run
    that fails later leaves them to resume from, or to expire with their TTL); the final latent is
    stored only when the whole run succeeds.
    """
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    model = backend if backend is not None else load_backend(params.backend, variant=params.variant)
    if model.identity.variant != params.variant:
        raise InvalidStageRequest(
            f"variant: params ask for {params.variant!r}, the backend is {model.identity.variant!r}"
        )
    source_id = source_latent_id(params, stage_latents)
    source = _load_source(params, store, model, source_id)
    check_stage_size(params, _output_frames(params, source), len(_pending_checkpoints(params, source)))
    timings["load"] = time.perf_counter() - clock

    clock = time.perf_counter()
    base_seed = draw_base_seed(params.seed)
    seeds = item_seeds(base_seed, params.batch_size)
    params, plan = planned(params, source.record, plan, base_seed)
    lm_metadata = None if plan is None else plan.record_metadata()
    timings["plan"] = time.perf_counter() - clock

    snapshot = _params_snapshot(params, base_seed, source_id)
    common: dict[str, Any] = dict(
        backend=model.identity,
        stage_type=params.stage_type,
        params=snapshot.model_dump(mode="json"),
        seeds=seeds,
        batch_size=params.batch_size,
        pipeline_id=provenance.pipeline_id,
        stage_index=provenance.stage_index,
        flow_run_id=provenance.flow_run_id,
        task_run_id=provenance.task_run_id,
        lm_metadata=lm_metadata,
    )
    parents = [] if source_id is None else [source_id]
    checkpoints: list[CheckpointRef] = []

    def store_checkpoint(state: LoopState, t_start: float) -> None:
        """Stored as it is taken, so the run holds one checkpoint in memory at a time."""
        schedule = dict(total_steps=state.steps, schedule=state.schedule, t_start=t_start, shift=state.shift,
                        scheduler=state.scheduler)  # fmt: skip
        checkpoints.append(_store_checkpoint(store, state, parents, {**common, **schedule}))

    clock = time.perf_counter()
    request = _loop_request(params, store, model, source, base_seed, on_step, store_checkpoint)
    timings["prepare"] = time.perf_counter() - clock

    clock = time.perf_counter()
    result = run_loop(model, request)
    timings["diffusion"] = time.perf_counter() - clock

    clock = time.perf_counter()
    final_id = store.put(
        result.x0.detach().cpu().contiguous(),
        parent_ids=parents,
        total_steps=result.steps,
        schedule=result.schedule,
        t_start=result.t_start,
        shift=result.shift,
        scheduler=result.scheduler,
        **common,
    )
    timings["store"] = time.perf_counter() - clock

    return [
        StageResult(
            latent_id=final_id,
            sample_index=index,
            seed=seed,
            checkpoints=checkpoints,
            params=snapshot,
            stage_index=provenance.stage_index,
            backend=model.identity,
            total_steps=result.steps,
            start_step=result.start_index,
            t_start=result.t_start,
            timings=timings,
            lm_metadata=lm_metadata,
        )
        for index, seed in enumerate(seeds)
    ]


def source_latent_id(params: StageParams, stage_latents: Mapping[int, str] | None) -> str | None:
    """The latent a stage reads, by the one precedence rule (``None`` for noise)."""
    source = resolve_source(params)
    if source.kind == "noise":
        return None
    if source.kind == "stage":
        known = {} if stage_latents is None else stage_latents
        if source.value not in known:
            raise InvalidStageRequest(f"src_stage: stage {source.value} has no result in this pipeline")
        return known[source.value]
    assert isinstance(source.value, str)
    return source.value


def stage_size(params: StageParams, store: LatentStore, stage_latents: Mapping[int, str] | None = None) -> tuple[int, int]:
    """Frames per batch item a stage would make and the checkpoints it would take, from records
    alone (no tensor is read): what ``budgets`` measures before a fan-out starts."""
    source_id = source_latent_id(params, stage_latents)
    if source_id is None:
        source = _Source(mode="noise")
    else:
        record = store.record(source_id)
        mode: Mode = "resume" if record.is_checkpoint else "audio" if STAGES[params.stage_type].reads_audio else "init"
        source = _Source(mode=mode, record=record)
    return _output_frames(params, source), len(_pending_checkpoints(params, source))


def _load_source(params: StageParams, store: LatentStore, model: Backend, source_id: str | None) -> _Source:
    if source_id is None:
        return _Source(mode="noise")
    record = store.record(source_id)
    check_source(
        record, model.identity, sample_index=params.resume_sample_index, allow_cross_variant=params.allow_cross_variant
    )
    index = params.resume_sample_index
    latent = as_float32(source_id, store.get(source_id))[index : index + 1]
    if record.is_checkpoint:
        if record.stage_type != params.stage_type:
            raise InvalidStageRequest(
                f"stage_type: checkpoint {source_id} belongs to a {record.stage_type} run; resume it as "
                f"{record.stage_type}, not {params.stage_type}"
            )
        extras = {name: tensor[index : index + 1] for name, tensor in store.get_extras(source_id).items()}
        return _Source(mode="resume", record=record, latent=latent, extras=extras, sample_index=index)
    mode: Mode = "audio" if STAGES[params.stage_type].reads_audio else "init"
    return _Source(mode=mode, record=record, latent=latent, sample_index=index)


def _audio_source(
    store: LatentStore, model: Backend, record: LatentRecord, latent: torch.Tensor, sample_index: int,
    params: StageParams, base_seed: int,
) -> torch.Tensor:
    """An audio task's source latents: imported audio is already encoded; any other latent goes
    through its audio (decode, encode) so that cover keeps the VQ path exactly as for uploaded audio.
    A ``sample`` encode draws from the stage's base seed, so the run that made a checkpoint and its
    resume encode alike."""
    if record.stage_type == IMPORT_STAGE:
        return latent
    audio = latent_audio(store, model, record, latent, [sample_index])
    if params.vae_encode == "mean":
        return model.vae_encode(audio).to(torch.float32)
    generator = torch.Generator().manual_seed(base_seed ^ _ENCODE_NOISE_SALT)
    return model.vae_encode(audio, generator).to(torch.float32)


def _resume_task_source(store: LatentStore, model: Backend, checkpoint: LatentRecord) -> torch.Tensor | None:
    """The audio source of the run a checkpoint came from (its parent), for resuming audio tasks."""
    if checkpoint.stage_type == IMPORT_STAGE or not STAGES[checkpoint.stage_type].reads_audio:
        return None
    if not checkpoint.parent_ids:
        raise IncompatibleLatent(checkpoint.id, "source of the checkpointed audio task", "a parent latent", "none")
    parent_id = checkpoint.parent_ids[0]
    parent = store.record(parent_id)
    made_with = StageParams.model_validate(checkpoint.params)
    index = made_with.resume_sample_index
    latent = as_float32(parent_id, store.get(parent_id))[index : index + 1]
    return _audio_source(store, model, parent, latent, index, made_with, made_with.seed)


def _output_frames(params: StageParams, source: _Source) -> int:
    """Frames per batch item of the run's output, from the source's record alone, so that its size
    is known (and checked, ``budgets``) before any model work."""
    if source.record is None:
        codes = parse_audio_codes(params.audio_code_string)
        if codes:  # the codes set the length, as upstream decodes them into the target latents
            return len(codes) * VQ_POOL
        duration = params.duration if params.duration is not None else DEFAULT_DURATION_S
        return max(1, round(duration * FRAME_RATE))
    frames = source.record.shape[1]
    if STAGES[params.stage_type].window != "none":
        # A resumed checkpoint already is the windowed output's state; the loop checks that it fits.
        return frames if source.mode == "resume" else _window_frames(params, frames)
    if params.duration is not None and abs(params.duration * FRAME_RATE - frames) >= 1:
        raise IncompatibleLatent(source.record.id, "duration (frames at 25 Hz)", params.duration * FRAME_RATE, frames)
    return frames


def _window_frames(params: StageParams, source_frames: int) -> int:
    """Frames of a windowed task's output. A window reaching outside the source extends the clip
    (outpainting) only when the duration asks for the longer clip; unasked, it is an error naming
    both numbers, never a silently longer result."""
    window = stage_window(params, source_frames)
    frames = output_frames(params.task, source_frames, window)
    source_s, out_s = source_frames / FRAME_RATE, frames / FRAME_RATE
    if params.duration is None and frames != source_frames:
        assert window is not None
        raise InvalidStageRequest(
            f"repainting window {window[0]:g}-{window[1]:g} s reaches outside the source's {source_s:g} s; "
            f"to extend the clip to {out_s:g} s (outpainting), set the duration to {out_s:g} s"
        )
    if params.duration is not None and abs(params.duration * FRAME_RATE - frames) >= 1:
        raise InvalidStageRequest(
            f"duration {params.duration:g} s: a {source_s:g} s source with this repainting window makes a "
            f"{out_s:g} s clip; set the duration to {out_s:g} s, or leave it unset"
        )
    return frames


def _loop_request(
    params: StageParams,
    store: LatentStore,
    model: Backend,
    source: _Source,
    base_seed: int,
    on_step: Callable[[StepInfo], None] | None,
    on_checkpoint: Callable[[LoopState, float], None] | None = None,
) -> LoopRequest:
    seeds = item_seeds(base_seed, params.batch_size)
    init: torch.Tensor | None = None
    task_source: torch.Tensor | None = None
    resume: LoopState | None = None
    if source.mode == "init":
        init = source.latent
    elif source.mode == "audio":
        assert source.record is not None and source.latent is not None
        task_source = _audio_source(store, model, source.record, source.latent, source.sample_index, params, base_seed)
    elif source.mode == "resume":
        assert source.record is not None
        task_source = _resume_task_source(store, model, source.record)
        resume = _resume_state(source, len(seeds))
    codes = parse_audio_codes(params.audio_code_string)
    frames = _output_frames(params, source)
    checkpoint_steps = _pending_checkpoints(params, source)
    check_stage_size(params, frames, len(checkpoint_steps))  # again: a plan may have set the duration
    if codes and -(-frames // VQ_POOL) != len(codes):
        assert source.record is not None
        raise IncompatibleLatent(source.record.id, "frames for the audio codes", len(codes) * VQ_POOL, frames)
    cond = params.condition_spec()
    if cond.duration_s is None or source.latent is not None:
        cond = replace(cond, duration_s=frames / FRAME_RATE)
    window_frames = task_source.shape[1] if task_source is not None else frames
    return LoopRequest(
        cond=cond,
        seeds=seeds,
        frames=frames,
        variant=params.variant,
        steps=params.inference_steps,
        shift=params.shift,
        scheduler=params.scheduler,
        custom_timesteps=params.timesteps,
        infer_method=params.infer_method,
        guidance_scale=params.effective_guidance_scale,
        use_adg=params.use_adg,
        cfg_interval=(params.cfg_interval_start, params.cfg_interval_end),
        init=init,
        t_start=params.t_start,
        source=task_source,
        codes=torch.tensor(codes, dtype=torch.long).view(1, -1, 1) if codes else None,
        cover_strength=params.audio_cover_strength if STAGES[params.stage_type].context == "codes" or codes else 1.0,
        repaint_window=stage_window(params, window_frames),
        repaint=RepaintSeams(params.repaint_mode, params.repaint_strength),
        checkpoint_steps=checkpoint_steps,
        resume=resume,
        on_step=on_step,
        on_checkpoint=on_checkpoint,
    )


def _pending_checkpoints(params: StageParams, source: _Source) -> tuple[int, ...]:
    """The checkpoint steps this run takes. A resumed checkpoint's params (what ``restore`` gives)
    still list the steps its own run stored before it; those were taken already and are skipped.
    Any other step before the resume point stays in, so the loop rejects it by name."""
    steps = tuple(params.checkpoint_steps)
    if source.mode != "resume":
        return steps
    assert source.record is not None and source.record.checkpoint_step is not None
    taken = set(source.record.params.get("checkpoint_steps", []))
    return tuple(step for step in steps if not (step < source.record.checkpoint_step and step in taken))


def _resume_state(source: _Source, batch: int) -> LoopState:
    """The checkpoint as the loop's state, for ``batch`` items continuing the one stored sample
    (items whose seed equals the stored one continue its noise stream exactly)."""
    record, latent = source.record, source.latent
    assert record is not None and latent is not None
    if record.checkpoint_step is None or record.schedule is None or record.total_steps is None:
        raise IncompatibleLatent(record.id, "checkpoint fields", "step, schedule and steps", "missing")
    states = source.extras.get(GENERATOR_STATES_KEY)
    if states is None:
        raise IncompatibleLatent(record.id, "checkpoint generator states", GENERATOR_STATES_KEY, "missing")
    sample_seed = record.seeds[source.sample_index]
    momentum = source.extras.get(MOMENTUM_KEY)
    return LoopState(
        step=record.checkpoint_step,
        x_t=latent.expand(batch, -1, -1).contiguous(),
        t=record.noise_level,
        schedule=list(record.schedule),
        variant=record.backend.variant,
        steps=record.total_steps,
        shift=record.shift,
        momentum=None if momentum is None else momentum.to(torch.float32).expand(batch, -1, -1).contiguous(),
        generator_states=[states[0].contiguous()] * batch,
        seeds=[sample_seed] * batch,
        scheduler=record.scheduler if record.scheduler is not None else "",
    )


def _store_checkpoint(
    store: LatentStore, state: LoopState, parents: list[str], common: dict[str, Any]
) -> CheckpointRef:
    extras = {GENERATOR_STATES_KEY: torch.stack([s.cpu() for s in state.generator_states])}
    if state.momentum is not None:
        extras[MOMENTUM_KEY] = state.momentum.detach().cpu().contiguous()
    latent_id = store.put(
        state.x_t.detach().cpu().contiguous(),
        extras=extras,
        parent_ids=parents,
        is_checkpoint=True,
        checkpoint_step=state.step,
        noise_level=state.t,
        **common,
    )
    return CheckpointRef(step=state.step, latent_id=latent_id, t=state.t)


def _params_snapshot(params: StageParams, base_seed: int, source_id: str | None) -> StageParams:
    """The effective params a latent records: the drawn seed, and a pipeline-relative ``src_stage``
    replaced by the latent it resolved to, so the record replays outside its pipeline."""
    update: dict[str, Any] = {"seed": base_seed}
    if params.src_stage is not None and params.src_latent_id is None:
        update.update(src_stage=None, src_latent_id=source_id)
    return StageParams.model_validate({**params.model_dump(), **update})
