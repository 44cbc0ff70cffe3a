"""Keys, scales, chords and the tonal weights the embedded prior draws progressions from.

Everything is relative to the tonic (pitch class 0), because the prior transposes by rotating
pitch classes; parsing turns the user's metas (``keyscale``, ``timesignature``, ``bpm``) into the
numbers the templates need, with a typed error naming the field when they cannot be read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from prefect_acestep.stages.errors import InvalidStageRequest

Mode = Literal["major", "minor"]
MODES: tuple[Mode, ...] = ("major", "minor")

SCALES: dict[str, tuple[int, ...]] = {
    "major": (0, 2, 4, 5, 7, 9, 11),
    "minor": (0, 2, 3, 5, 7, 8, 10),  # natural minor: the scale the key tests check against
}

NOTE_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
_LETTERS = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
_ACCIDENTALS = {"": 0, "#": 1, "♯": 1, "b": -1, "♭": -1}
_MODE_WORDS = {"major": "major", "maj": "major", "minor": "minor", "min": "minor", "m": "minor"}

CHORD_WEIGHTS: dict[str, tuple[float, ...]] = {
    # scale degrees I..VII (triads built on each degree of the mode's scale); the diminished triad
    # and the major mode's iii are left out: they blur the key more than they colour it.
    "major": (0.25, 0.10, 0.0, 0.22, 0.25, 0.18, 0.0),
    "minor": (0.25, 0.0, 0.12, 0.20, 0.15, 0.15, 0.13),
}
CADENCE_TONIC_WEIGHT = 1.0
"""Weight of the tonic in the first and last bar (and the melody's last note): the piece opens and
closes on its key. It is certain, not just likely, because few-step sampling follows the initial
noise more than the prior's weights."""
PHRASE_BARS = 4
PHRASE_TONIC_WEIGHT = 0.6
"""Weight of the tonic chord at the start of every later 4-bar phrase."""

DEGREE_WEIGHTS = (0.22, 0.10, 0.16, 0.10, 0.16, 0.10, 0.06)
"""Melody notes by scale degree: tonic, third and fifth most often."""

TEMPO_RANGE = (30, 300)
BEATS_PER_BAR = (2, 3, 4, 6)


@dataclass(frozen=True)
class Key:
    tonic: int
    mode: Mode

    @property
    def name(self) -> str:
        return f"{NOTE_NAMES[self.tonic]} {self.mode}"


def parse_keyscale(text: str) -> Key:
    """``"F# minor"``, ``"Bb major"``, ``"a min"``, ``"C#m"`` -> Key."""
    match = re.fullmatch(r"\s*([A-Ga-g])\s*([#♯b♭]?)\s*(major|minor|maj|min|m)?\s*", text, flags=re.IGNORECASE)
    if match is None or match.group(3) is None:
        raise InvalidStageRequest(f"keyscale {text!r} is not a key: expected e.g. 'C major' or 'F# minor'")
    letter, accidental, mode = match.groups()
    tonic = (_LETTERS[letter.upper()] + _ACCIDENTALS[accidental.lower()]) % 12
    return Key(tonic=tonic, mode=_MODE_WORDS[mode.lower()])  # type: ignore[arg-type]


def parse_timesignature(text: str) -> int:
    """Beats per bar from ``"4"``, ``"4/4"``, ``"3/4"``, ``"6/8"`` ..."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:/\s*(\d+))?\s*", text)
    beats = int(match.group(1)) if match else None
    if beats not in BEATS_PER_BAR:
        raise InvalidStageRequest(
            f"timesignature {text!r} is not supported: expected one of {BEATS_PER_BAR} beats per bar "
            "(e.g. '4' or '3/4')"
        )
    return beats


def check_bpm(bpm: int) -> int:
    if isinstance(bpm, bool) or not isinstance(bpm, int) or not TEMPO_RANGE[0] <= bpm <= TEMPO_RANGE[1]:
        raise InvalidStageRequest(f"bpm {bpm!r} is out of range: expected an integer in {list(TEMPO_RANGE)}")
    return bpm


def triad(mode: Mode, degree: int) -> tuple[int, int, int]:
    """Pitch classes (relative to the tonic) of the diatonic triad on ``degree`` (0 = tonic)."""
    scale = SCALES[mode]
    return scale[degree % 7], scale[(degree + 2) % 7], scale[(degree + 4) % 7]


def scale_pitch_classes(key: Key) -> frozenset[int]:
    return frozenset((key.tonic + step) % 12 for step in SCALES[key.mode])
