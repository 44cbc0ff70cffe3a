"""Conditioning of the embedded model: the caption's style and the table of scenes (tempo, metre,
mode, tonic) the prior mixes over, from the stage's metas, and the scenes built from that table.

Metas that are given pin the scene; metas left unset (None, or "" which ACE-Step's prompt also
renders as N/A) leave the prior to mix over candidates. The unconditional prior (CFG's uncond
branch) drops caption and metas. Guided variants (base, sft) are not guidance-distilled: their
conditional prior keeps a share of the unconditional one, which is what makes guidance scale > 1
sharpen key and tempo adherence, as with the real model; turbo variants are sharp on their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from prefect_acestep.stages.backends.embedded.harmony import MODES, Key, Mode, check_bpm, parse_keyscale, parse_timesignature
from prefect_acestep.stages.backends.embedded.prior import Scene, ScenePrior
from prefect_acestep.stages.backends.embedded.style import Style, parse_style
from prefect_acestep.stages.backends.embedded.templates import Timing, cover_factors, harmony_factor, melody_factor, rhythm_factor
from prefect_acestep.stages.backends.embedded.vq import CoverCodes
from prefect_acestep.stages.backends.protocol import ConditionSpec
from prefect_acestep.stages.errors import InvalidStageRequest
from prefect_acestep.stages.geometry import FRAME_RATE

TEMPO_CANDIDATES = (80, 100, 120, 140)
METRE_CANDIDATES = {4: 0.8, 3: 0.2}
SIGMA = 0.02
"""Spread of each arrangement around its template (latent units; templates are ~0.5-1)."""
GUIDED_BLEND = 0.35
"""Share of the unconditional scene table in the conditional prior of the guided variants."""

SceneTable = tuple[tuple[Timing, Mode, tuple[float, ...]], ...]
"""(timing, mode, probability of each of the 12 tonics); all entries sum to one."""


@dataclass(frozen=True)
class EmbeddedCondition:
    """What ``encode_condition`` returns: opaque to the loop, read by the embedded prior."""

    spec: ConditionSpec
    batch_size: int
    style: Style
    table: SceneTable
    active_seconds: float | None


def _meta(value: str | None) -> str | None:
    """Metas render "" as N/A in ACE-Step's prompt: unset, like None."""
    return None if value is None or value.strip() == "" else value


def _table(
    keys: list[Key], tempos: dict[int, float], metres: dict[int, float]
) -> dict[tuple[Timing, Mode], np.ndarray]:
    """Probability of every (timing, mode, tonic) with keys uniform over ``keys``."""
    table: dict[tuple[Timing, Mode], np.ndarray] = {}
    for bpm, p_tempo in tempos.items():
        for beats, p_metre in metres.items():
            for key in keys:
                tonics = table.setdefault((Timing(bpm, beats), key.mode), np.zeros(12))
                tonics[key.tonic] += p_tempo * p_metre / len(keys)
    return table


ALL_KEYS = [Key(tonic, mode) for mode in MODES for tonic in range(12)]


def unconditional_table() -> dict[tuple[Timing, Mode], np.ndarray]:
    tempos = {bpm: 1.0 / len(TEMPO_CANDIDATES) for bpm in TEMPO_CANDIDATES}
    return _table(ALL_KEYS, tempos, METRE_CANDIDATES)


def scene_table(spec: ConditionSpec, blend: float) -> SceneTable:
    keyscale, timesignature = _meta(spec.keyscale), _meta(spec.timesignature)
    keys = [parse_keyscale(keyscale)] if keyscale is not None else ALL_KEYS
    if spec.bpm is not None:
        tempos = {check_bpm(spec.bpm): 1.0}
    else:
        tempos = {bpm: 1.0 / len(TEMPO_CANDIDATES) for bpm in TEMPO_CANDIDATES}
    metres = {parse_timesignature(timesignature): 1.0} if timesignature is not None else dict(METRE_CANDIDATES)
    table = {k: (1.0 - blend) * v for k, v in _table(keys, tempos, metres).items()}
    if blend > 0:
        for k, v in unconditional_table().items():
            table[k] = table.get(k, np.zeros(12)) + blend * v
    return tuple((timing, mode, tuple(float(p) for p in probs)) for (timing, mode), probs in table.items())


def build_condition(spec: ConditionSpec, batch_size: int, blend: float) -> EmbeddedCondition:
    if spec.duration_s is not None and not spec.duration_s > 0:
        raise InvalidStageRequest(f"duration_s {spec.duration_s!r} must be positive")
    sings = bool(spec.lyrics.strip()) and not spec.instrumental
    return EmbeddedCondition(
        spec=spec,
        batch_size=batch_size,
        style=parse_style(spec.caption, sings),
        table=scene_table(spec, blend),
        active_seconds=spec.duration_s,
    )


def null_condition(cond: EmbeddedCondition) -> EmbeddedCondition:
    """Caption, lyrics and metas dropped; the task and its tracks stay (they say how to read the
    context, which the unconditional branch still sees, as in ACE-Step)."""
    table = unconditional_table()
    return EmbeddedCondition(
        spec=ConditionSpec(task=cond.spec.task, track_names=cond.spec.track_names),
        batch_size=cond.batch_size,
        style=parse_style("", sings=False),
        table=tuple((timing, mode, tuple(float(p) for p in probs)) for (timing, mode), probs in table.items()),
        active_seconds=None,
    )


def active_frames(cond: EmbeddedCondition, frames: int) -> int:
    """Frames the arrangement plays in; the rest (past the requested duration) is silence."""
    if cond.active_seconds is None:
        return frames
    return min(frames, max(1, round(cond.active_seconds * FRAME_RATE)))


def build_prior(cond: EmbeddedCondition, style: Style, frames: int, cover: CoverCodes | None) -> ScenePrior:
    """The prior of ``cond`` played in ``style`` over ``frames``; a cover's follows ``cover``."""
    active = active_frames(cond, frames)
    if cover is None:
        return _arrangement_prior(cond.table, style, frames, active)
    timings: dict[Timing, float] = {}
    for timing, _, probs in cond.table:
        timings[timing] = timings.get(timing, 0.0) + sum(probs)
    scenes = []
    for timing, p in timings.items():
        factors = cover_factors(style, cover, timing, frames, active)
        rhythm = rhythm_factor(style, timing, frames, active)
        scenes.append(Scene(tuple(factors + ([rhythm] if rhythm else [])), (0,), (float(np.log(p)),)))
    return ScenePrior(scenes, SIGMA)


@lru_cache(maxsize=4)
def _arrangement_prior(table: SceneTable, style: Style, frames: int, active: int) -> ScenePrior:
    """Cached: a stage calls the model with the same condition at every step."""
    scenes: list[Scene] = []
    for timing, mode, probs in table:
        tonics = tuple(i for i, p in enumerate(probs) if p > 0)
        factors = [
            harmony_factor(style, timing, mode, frames, active),
            melody_factor(style, timing, mode, frames, active),
            rhythm_factor(style, timing, frames, active),
        ]
        weights = tuple(float(np.log(probs[i])) for i in tonics)
        scenes.append(Scene(tuple(f for f in factors if f is not None), tonics, weights))
    return ScenePrior(scenes, SIGMA)
