"""Arrangement templates: the factors (chords per bar, melody notes per beat, drum patterns per bar)
that a scene of the prior is made of, built from the caption's style, the tempo, the metre, the
mode and the length of the piece. Pitched factors are written relative to the tonic (the prior
transposes them by rotating pitch classes).

Cover templates keep the source's coarse structure instead: one chord per 5 Hz VQ code, voiced in
the new caption's parts and comping.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch

from prefect_acestep.stages.backends.embedded.channels import PERCUSSION, PITCH_CLASSES, PITCHED, pitched_channel
from prefect_acestep.stages.backends.embedded.factors import Factor, Separable, normalised_log
from prefect_acestep.stages.backends.embedded.harmony import (
    CADENCE_TONIC_WEIGHT,
    CHORD_WEIGHTS,
    DOMINANT_DEGREE,
    DEGREE_WEIGHTS,
    PHRASE_BARS,
    PHRASE_TONIC_WEIGHT,
    SCALES,
    TONIC_PEDAL_WEIGHT,
    Mode,
    triad,
)
from prefect_acestep.stages.backends.embedded.style import Style
from prefect_acestep.stages.backends.embedded.tracks import PART_CHANNELS
from prefect_acestep.stages.backends.embedded.vq import CoverCodes
from prefect_acestep.stages.geometry import FRAME_RATE, VQ_POOL

PART_AMPLITUDE = {"bass": 1.0, "low": 0.55, "mid": 0.5, "lead": 0.8}
HARMONY_PARTS = ("bass", "low", "mid")
HARMONY_REGISTER = {"bass": 0, "low": 1, "mid": 2}
REST_WEIGHT = 0.12
RHYTHM_VARIANT_WEIGHTS = (0.6, 0.28, 0.12)
"""Main pattern, syncopated variation, fill."""
COVER_LEAD_PLAY = 0.9
"""Cover lead: prior weight of playing the source's lead note in a code (against resting)."""


@dataclass(frozen=True)
class Timing:
    bpm: int
    beats: int
    """Beats per bar."""

    @property
    def beat_frames(self) -> float:
        return FRAME_RATE * 60.0 / self.bpm


def _beat_starts(timing: Timing, active: int) -> list[int]:
    """Frame of every beat that starts inside the active part of the piece."""
    count = int(math.ceil(active / timing.beat_frames)) + 1
    starts = [round(j * timing.beat_frames) for j in range(count)]
    return [s for s in starts if s < active]


def _segments(starts: list[int], frames: int, active: int) -> torch.Tensor:
    """Segment index per frame: segment i spans [starts[i], starts[i+1]); frames past ``active``
    form one more (silent) segment. ``starts[0]`` is 0."""
    f = torch.arange(frames)
    inside = torch.searchsorted(torch.tensor(starts), f, right=True) - 1
    return torch.where(f < active, inside, len(starts))


def _since_beat(timing: Timing, frames: int, active: int) -> torch.Tensor:
    """Frames elapsed since the latest beat start, per frame ``[T]`` (0 past the end)."""
    starts = torch.tensor(_beat_starts(timing, active), dtype=torch.float32)
    f = torch.arange(frames, dtype=torch.float32)
    latest = starts[torch.searchsorted(starts, f, right=True).clamp(min=1) - 1]
    return (f - latest) * (f < active)


def _envelopes(timing: Timing, frames: int, active: int) -> dict[str, torch.Tensor]:
    """Amplitude shapes ``[T]``: held, re-struck on every beat, and the lead's sung notes."""
    since = _since_beat(timing, frames, active)
    on = (torch.arange(frames) < active).to(torch.float32)
    bf = timing.beat_frames
    return {
        "sustain": on,
        "pulse": on * (0.25 + 0.75 * torch.exp(-since / (0.4 * bf))),
        "lead": on * (0.35 + 0.65 * torch.exp(-since / (0.8 * bf))),
    }


def _towards_tonic(usual: torch.Tensor, share: float) -> torch.Tensor:
    """``usual`` weights with ``share`` of the mass moved onto option 0 (the tonic)."""
    weights = (1 - share) * usual / usual.sum()
    weights[0] += share
    return weights


def _pedal_degrees(mode: Mode) -> list[int]:
    """The chords besides the tonic's that hold the tonic (IV and vi; iv and VI in minor): under
    them the bass may keep the tonic as a pedal and still sound a note of the chord."""
    return [degree for degree in range(1, 7) if 0 in triad(mode, degree)]


def _bar_starts(timing: Timing, active: int) -> list[int]:
    beats = _beat_starts(timing, active)
    return beats[:: timing.beats]


def _closing_bar(bars: list[int], timing: Timing, active: int) -> int:
    """Index of the bar the piece closes in: the last whole bar (a bar cut short by the end of the
    piece belongs to it), or the last bar when none is whole."""
    bar_frames = timing.beat_frames * timing.beats
    whole = [index for index, start in enumerate(bars) if start + bar_frames <= active + 1]
    return whole[-1] if whole else len(bars) - 1


@lru_cache(maxsize=64)
def harmony_factor(style: Style, timing: Timing, mode: Mode, frames: int, active: int) -> Factor | None:
    """One chord per bar over the bass/low/mid registers, held or re-struck on each beat, over its
    root or, under the chords that hold the tonic, a tonic pedal in the bass (``_pedal_degrees``)."""
    parts = [p for p in HARMONY_PARTS if p in style.parts]
    if not parts or active == 0:
        return None
    channels = [c for p in parts for c in PART_CHANNELS[p]]
    position = {c: i for i, c in enumerate(channels)}
    # One vector per (chord, bass note): every degree over its root, then the pedal degrees over the tonic.
    pedals = _pedal_degrees(mode)
    voicings = [(degree, None) for degree in range(7)] + [(degree, 0) for degree in pedals]
    vectors = torch.zeros(len(voicings), len(channels))
    for row, (degree, bass_note) in enumerate(voicings):
        root, third, fifth = triad(mode, degree)
        for part in parts:
            register = HARMONY_REGISTER[part]
            notes = ((root if bass_note is None else bass_note),) if part == "bass" else (root, third, fifth)
            for pc in notes:
                vectors[row, position[pitched_channel(register, pc)]] = PART_AMPLITUDE[part]
    env = _envelopes(timing, frames, active)
    shapes = torch.stack([env["sustain"], env["pulse"]])  # [2, T]
    count = 2 * len(voicings)  # option = 2 * voicing + comping
    patterns = (vectors[:, None, None, :] * shapes[None, :, :, None]).reshape(count, frames, len(channels))
    options = torch.arange(count)
    separable = Separable(vectors, shapes, options // 2, options % 2, (timing, frames, active))
    bars = _bar_starts(timing, active)
    usual = torch.tensor(CHORD_WEIGHTS[mode], dtype=torch.float64)
    chord_w = usual.repeat(len(bars) + 1, 1)
    chord_w[0 : len(bars) : PHRASE_BARS] = _towards_tonic(usual, PHRASE_TONIC_WEIGHT)
    chord_w[1 : len(bars) : PHRASE_BARS, DOMINANT_DEGREE] = 0.0  # tonic, then away from it, then the dominant
    chord_w[0] = _towards_tonic(usual, CADENCE_TONIC_WEIGHT)
    closing = _closing_bar(bars, timing, active)
    chord_w[closing : len(bars)] = _towards_tonic(usual, CADENCE_TONIC_WEIGHT)
    pedal = torch.zeros(7, dtype=torch.float64)
    pedal[pedals] = TONIC_PEDAL_WEIGHT
    voicing_w = torch.cat([chord_w * (1 - pedal), chord_w[:, pedals] * TONIC_PEDAL_WEIGHT], dim=1)
    comp_w = torch.tensor([style.sustain, 1 - style.sustain], dtype=torch.float64).repeat(len(bars) + 1, 1)
    if closing > 0:  # after a progression, the closing chord rings out
        comp_w[closing : len(bars)] = torch.tensor([1.0, 0.0], dtype=torch.float64)
    weights = (voicing_w[:, :, None] * comp_w[:, None, :]).reshape(len(bars) + 1, count)
    return Factor(
        channels=torch.tensor(channels),
        segment=_segments(bars, frames, active),
        patterns=patterns[None].contiguous(),
        log_weights=normalised_log(weights),
        transposes=True,
        separable=separable,
    )


@lru_cache(maxsize=64)
def melody_factor(style: Style, timing: Timing, mode: Mode, frames: int, active: int) -> Factor | None:
    """One lead note (a scale degree) or a rest per beat; the last beat returns to the tonic."""
    if "lead" not in style.parts or active == 0:
        return None
    channels = list(PART_CHANNELS["lead"])
    notes = torch.zeros(8, PITCH_CLASSES)
    for degree, pc in enumerate(SCALES[mode]):
        notes[degree, pc] = PART_AMPLITUDE["lead"]
    env = _envelopes(timing, frames, active)["lead"]
    patterns = notes[:, None, :] * env[None, :, None]
    separable = Separable(notes, env[None], torch.arange(8), torch.zeros(8, dtype=torch.long), (timing, frames, active))
    beats = _beat_starts(timing, active)
    weights = torch.tensor([w * (1 - REST_WEIGHT) for w in DEGREE_WEIGHTS] + [REST_WEIGHT], dtype=torch.float64)
    weights = weights.repeat(len(beats) + 1, 1)
    weights[len(beats) - 1] = _towards_tonic(weights[0], CADENCE_TONIC_WEIGHT)
    return Factor(
        channels=torch.tensor(channels),
        segment=_segments(beats, frames, active),
        patterns=patterns[None].contiguous(),
        log_weights=normalised_log(weights),
        transposes=True,
        separable=separable,
    )


def _groove_hits(groove: str, n: int) -> list[dict[str, list[tuple[float, float]]]]:
    """Hits (beat position in the bar, amplitude) per percussion channel, for the three variants."""
    beats = list(range(n))
    halves = [j + 0.5 for j in beats]
    back = [j for j in beats if j % 2 == 1] or [n - 1]
    if groove == "dance":
        main = {"kick": [(j, 1.0) for j in beats], "clap": [(j, 0.6) for j in back],
                "open_hat": [(h, 0.18) for h in halves]}
    elif groove == "halftime":
        main = {"kick": [(0, 1.0)], "snare": [(n // 2, 0.8)] if n > 1 else [],
                "closed_hat": [(j, 0.45) for j in beats] + [(h, 0.1) for h in halves]}
    elif groove == "sparse":
        main = {"kick": [(0, 0.9)], "ride": [(j, 0.3) for j in beats]}
    else:
        main = {"kick": [(j, 1.0) for j in beats if j % 2 == 0], "snare": [(j, 0.8) for j in back],
                "closed_hat": [(j, 0.45) for j in beats] + [(h, 0.12) for h in halves]}
    # Off-beat hits stay soft: the beat, not the eighth, has to be the strongest pulse.
    main |= {"shaker": [(h - 0.5, 0.3) for h in halves] + [(h, 0.12) for h in halves],
             "conga": [(j + 0.5, 0.45) for j in back], "fx_bell": [(0, 0.5)], "fx_blip": [(n - 1 + 0.5, 0.3)]}
    syncopated = {k: list(v) for k, v in main.items()}
    syncopated["kick"] = main["kick"] + [(n - 1 + 0.5, 0.7)]
    syncopated["cowbell"] = [(0, 0.35)]
    syncopated["fx_bell"] = []
    syncopated["fx_burst"] = [(0, 0.5)]
    fill = {k: [(b, a) for b, a in v if b < n - 1] for k, v in main.items()}
    fill["low_tom"] = [(n - 1, 0.7)]
    fill["high_tom"] = [(n - 0.5, 0.6)]
    fill["clave"] = [(n - 1 + 0.5, 0.4)]
    fill["fx_zap"] = [(n - 0.5, 0.5)]
    fill["open_hat"] = fill.get("open_hat", []) + [(0, 0.4)]
    return [main, syncopated, fill]


@lru_cache(maxsize=64)
def rhythm_factor(style: Style, timing: Timing, frames: int, active: int) -> Factor | None:
    """One pattern variant per bar over the percussion parts the style plays."""
    channels = [c for p in ("drums", "percussion", "fx") if p in style.parts for c in PART_CHANNELS[p]]
    if not channels or active == 0:
        return None
    position = {c: i for i, c in enumerate(channels)}
    bars = _bar_starts(timing, active)
    variants = _groove_hits(style.groove, timing.beats)
    patterns = torch.zeros(len(variants), frames, len(channels))
    for v, hits in enumerate(variants):
        for name, notes in hits.items():
            channel = PITCHED + PERCUSSION.index(name)
            if channel not in position:
                continue
            for bar in range(len(bars)):
                for beat, amplitude in notes:
                    frame = round((bar * timing.beats + beat) * timing.beat_frames)
                    if frame < active:
                        patterns[v, frame, position[channel]] = amplitude
    weights = torch.tensor(RHYTHM_VARIANT_WEIGHTS, dtype=torch.float64).repeat(len(bars) + 1, 1)
    return Factor(
        channels=torch.tensor(channels),
        segment=_segments(bars, frames, active),
        patterns=patterns[None],
        log_weights=normalised_log(weights),
        transposes=False,
    )


def cover_factors(style: Style, reading: CoverCodes, timing: Timing, frames: int, active: int) -> list[Factor]:
    """Harmony and lead that follow each item's source codes (one chord per code), voiced in the
    caption's parts and comping. Patterns are per batch item: each item covers its own source."""
    factors: list[Factor] = []
    if active == 0:
        return factors
    env = _envelopes(timing, frames, active)
    pools = reading.chord.shape[1]
    starts = [i * VQ_POOL for i in range(pools) if i * VQ_POOL < active]
    segment = _segments(starts, frames, active)
    per_frame = (torch.arange(frames) // VQ_POOL).clamp(max=pools - 1)
    sounding = reading.sounding.to(torch.float32)[..., None]
    bass = torch.nn.functional.one_hot(reading.bass, PITCH_CLASSES).to(torch.float32) * sounding
    chord = reading.chord.to(torch.float32) * sounding
    parts = [p for p in HARMONY_PARTS if p in style.parts]
    if parts:
        voicing = torch.cat([(bass if p == "bass" else chord) * PART_AMPLITUDE[p] for p in parts], dim=-1)[:, per_frame]
        patterns = torch.stack([voicing * env["sustain"][:, None], voicing * env["pulse"][:, None]], dim=1)
        weights = torch.tensor([style.sustain, 1 - style.sustain], dtype=torch.float64).repeat(len(starts) + 1, 1)
        channels = torch.tensor([c for p in parts for c in PART_CHANNELS[p]])
        factors.append(Factor(channels, segment, patterns.contiguous(), normalised_log(weights), transposes=False))
    if "lead" in style.parts:
        lead = (torch.nn.functional.one_hot(reading.lead, PITCH_CLASSES).to(torch.float32) * sounding)[:, per_frame]
        played = lead * PART_AMPLITUDE["lead"] * env["lead"][:, None]
        patterns = torch.stack([played, torch.zeros_like(played)], dim=1)
        weights = torch.tensor([COVER_LEAD_PLAY, 1 - COVER_LEAD_PLAY], dtype=torch.float64).repeat(len(starts) + 1, 1)
        channels = torch.tensor(PART_CHANNELS["lead"])
        factors.append(Factor(channels, segment, patterns.contiguous(), normalised_log(weights), transposes=False))
    return factors
