"""What the model is conditioned on, per task: the ACE-Step context rules in one place.

The context is the source latents concatenated with a 0/1 chunk mask (1 = generate). Tasks differ
only in which source and which mask they pass, and cover additionally switches to plain
text2music conditioning part-way through the schedule; the loop itself stays task-agnostic. Which
regime a task gets is read from its row of the stage vocabulary (context, window, tracks).

A text2music run given 5 Hz LM codes runs as upstream routes them: the codes, detokenized to
25 Hz, are the context of a cover (cover instruction, mask all 1, switching to plain text2music
after ``int(steps * cover_strength)`` steps), exactly the cover path with the source's VQ codes
replaced by the LM's (ACE-Step's handler turns text2music with codes into cover; its model then
uses the precomputed hints in place of tokenizing the source).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch

from prefect_acestep.stages.backends.protocol import Backend, ConditionSpec
from prefect_acestep.stages.errors import InvalidStageRequest
from prefect_acestep.stages.geometry import FRAME_RATE, MAX_FRAMES
from prefect_acestep.stages.vocabulary import MODEL_TASKS, TASKS, Task

_FRAME_EPS = 1e-6
CODES_TASK = next(name for name, task in TASKS.items() if task.context == "codes")
"""The task whose context is VQ codes (cover): what a text2music run on LM codes becomes."""


@dataclass(frozen=True)
class WindowGeometry:
    """A repaint/lego window in frames, after padding the source for outpainting."""

    pad_left: int
    pad_right: int
    start: int
    end: int
    frames: int


def window_geometry(source_frames: int, window: tuple[float, float]) -> WindowGeometry:
    """Frames of the window ``[start, end)`` seconds over a source of ``source_frames``.

    The window covers every frame it touches (floor of start, ceil of end), so the requested
    seconds are always regenerated. A negative start or an end past the source pads the source with
    silence on that side (outpainting); the output is then longer than the source.
    """
    start_s, end_s = (float(v) for v in window)
    if not (math.isfinite(start_s) and math.isfinite(end_s)) or end_s <= start_s:
        raise InvalidStageRequest(f"repaint_window: need start < end (seconds), got {window}")
    start = math.floor(start_s * FRAME_RATE + _FRAME_EPS)
    end = math.ceil(end_s * FRAME_RATE - _FRAME_EPS)
    pad_left = max(0, -start)
    pad_right = max(0, end - source_frames)
    return WindowGeometry(pad_left, pad_right, start + pad_left, end + pad_left, pad_left + source_frames + pad_right)


def task_rules(task: str) -> Task:
    """What ``task`` reads; an unknown task is an error that lists the known ones."""
    if task not in TASKS:
        raise InvalidStageRequest(f"task: unknown task {task!r}; known: {list(MODEL_TASKS)}")
    return TASKS[task]


def output_frames(task: str, source_frames: int, window: tuple[float, float] | None) -> int:
    """Frames a task's output has: the source's, or more when a window outpaints; never more than
    the model's ``MAX_FRAMES`` (a window of -600..600 s over a short source would make 1200 s,
    and a chain of such stages would grow until memory ran out)."""
    if task_rules(task).window == "none" or window is None:
        return source_frames
    frames = window_geometry(source_frames, window).frames
    if frames > MAX_FRAMES:
        raise InvalidStageRequest(
            f"repainting_start/repainting_end: the window [{window[0]:g}, {window[1]:g}) s over a "
            f"{source_frames / FRAME_RATE:g} s source makes a {frames / FRAME_RATE:g} s result ({frames} frames); "
            f"a stage makes at most {MAX_FRAMES / FRAME_RATE:g} s ({MAX_FRAMES} frames)"
        )
    return frames


@dataclass(frozen=True)
class Conditioning:
    """One conditioning regime: the encoded condition, its null (CFG) and the context."""

    cond: Any
    uncond: Any | None
    context: Any


@dataclass(frozen=True)
class TaskContext:
    """Everything the loop needs from the task.

    ``first`` is used for absolute steps ``< switch_step`` and ``after`` from there on (cover only;
    otherwise ``switch_step`` is ``None`` and ``after`` is ``None``). ``keep`` and ``keep_source``
    are set for repaint/lego: where ``keep`` is True the loop holds the source, for as many steps
    as the run's ``RepaintSeams`` say (``engine.repaint``).
    """

    first: Conditioning
    switch_step: int | None
    after: Conditioning | None
    keep: torch.Tensor | None
    keep_source: torch.Tensor | None


def build_task_context(
    backend: Backend,
    spec: ConditionSpec,
    *,
    batch: int,
    frames: int,
    source: torch.Tensor | None,
    window: tuple[float, float] | None,
    cover_strength: float,
    total_steps: int,
    guided: bool,
    codes: torch.Tensor | None = None,
) -> TaskContext:
    """The conditioning regimes, masks and kept source for one run (see the module docstring)."""
    task = spec.task
    rules = task_rules(task)
    _check_fields(rules, source, window, cover_strength, codes)
    device = backend.device
    silence = backend.silence_latent(frames).to(device).unsqueeze(0).expand(batch, -1, -1).contiguous()
    ones = torch.ones(batch, frames, device=device)

    if codes is not None:
        hints = backend.detokenize(codes.expand(batch, -1, -1), frames)
        cover = dataclasses.replace(spec, task=CODES_TASK)
        return _cover_context(backend, cover, batch, hints, silence, ones, cover_strength, total_steps, guided)
    if rules.context == "silence":
        return TaskContext(_regime(backend, spec, batch, silence, ones, guided), None, None, None, None)

    assert source is not None
    expected = output_frames(task, source.shape[1], window)
    if expected != frames:
        raise InvalidStageRequest(
            f"frames: {task} over a source of {source.shape[1]} frames yields {expected} frames, got frames={frames}"
        )
    if rules.window != "none" and window is not None:
        geo = window_geometry(source.shape[1], window)
        padded = torch.cat([silence[:, : geo.pad_left], source, silence[:, geo.pad_left + source.shape[1] :]], dim=1)
    else:
        geo, padded = None, source

    if rules.context == "codes":
        vq = backend.detokenize(backend.tokenize(padded), frames)
        return _cover_context(backend, spec, batch, vq, silence, ones, cover_strength, total_steps, guided)

    if geo is None:  # extract, complete, and lego over the whole source
        return TaskContext(_regime(backend, spec, batch, padded, ones, guided), None, None, None, None)

    mask = torch.zeros(batch, frames, device=device)
    mask[:, geo.start : geo.end] = 1.0
    src = padded
    if rules.tracks == "none":
        # Repaint regenerates all of the window, so the model must not see what played there; lego
        # adds its named track on top of it, so it keeps the window's audio as context.
        src = padded.clone()
        src[:, geo.start : geo.end] = silence[:, geo.start : geo.end]
    keep = (mask == 0).unsqueeze(-1)
    return TaskContext(_regime(backend, spec, batch, src, mask, guided), None, None, keep, padded)


def _cover_context(
    backend: Backend,
    spec: ConditionSpec,
    batch: int,
    vq: torch.Tensor,
    silence: torch.Tensor,
    ones: torch.Tensor,
    cover_strength: float,
    total_steps: int,
    guided: bool,
) -> TaskContext:
    """Cover: the VQ context for the first ``int(steps * strength)`` steps, then plain text2music."""
    switch = int(total_steps * cover_strength)
    first = _regime(backend, spec, batch, vq, ones, guided)
    plain = dataclasses.replace(spec, task="text2music", track_names=())
    after = _regime(backend, plain, batch, silence, ones, guided) if switch < total_steps else None
    return TaskContext(first, switch if after is not None else None, after, None, None)


def _regime(
    backend: Backend, spec: ConditionSpec, batch: int, src: torch.Tensor, mask: torch.Tensor, guided: bool
) -> Conditioning:
    cond = backend.encode_condition(spec, batch)
    return Conditioning(cond, backend.null_condition(cond) if guided else None, backend.make_context(src, mask))


def _check_fields(
    rules: Task,
    source: torch.Tensor | None,
    window: tuple[float, float] | None,
    cover_strength: float,
    codes: torch.Tensor | None,
) -> None:
    task = rules.name
    if codes is not None and rules.context != "silence":
        raise InvalidStageRequest(f"codes: LM codes condition text2music only, not {task} (it has its own context)")
    if rules.context != "silence" and source is None:
        raise InvalidStageRequest(f"source: task {task} needs source latents")
    if rules.context == "silence" and source is not None:
        raise InvalidStageRequest(f"source: task {task} takes no source latents (refine passes init instead)")
    if rules.window == "required" and window is None:
        raise InvalidStageRequest(f"repaint_window: task {task} needs a window [start, end) in seconds")
    if rules.window == "none" and window is not None:
        takers = " and ".join(name for name, other in TASKS.items() if other.window != "none")
        raise InvalidStageRequest(f"repaint_window: task {task} takes no window (only {takers} do)")
    if not 0.0 <= cover_strength <= 1.0:
        raise InvalidStageRequest(f"cover_strength: must lie in [0, 1], got {cover_strength}")
    if rules.context != "codes" and codes is None and cover_strength != 1.0:
        users = " and ".join(name for name, other in TASKS.items() if other.context == "codes")
        raise InvalidStageRequest(f"cover_strength: only the {users} task and runs on LM codes use it (task {task})")
