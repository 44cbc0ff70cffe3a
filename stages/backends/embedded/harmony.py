"""Keys, scales, chords and the tonal weights the embedded prior draws progressions from.

Everything is relative to the tonic (pitch class 0), because the prior transposes by rotating
pitch classes; parsing turns the user's metas (``keyscale``, ``timesignature``, ``bpm``) into the
numbers the templates need, with a typed error naming the field when they cannot be read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from prefect_acestep.stages.errors import InvalidStageRequest
from prefect_acestep.stages.vocabulary import KEY_MODES as MODES
from prefect_acestep.stages.vocabulary import SCALES, key_name, key_parts
from prefect_acestep.stages.vocabulary import KeyMode as Mode

CHORD_WEIGHTS: dict[str, tuple[float, ...]] = {
    # scale degrees I..VII (triads built on each degree of the mode's scale); the diminished triad
    # and the major mode's iii are left out: they blur the key more than they colour it.
    "major": (0.25, 0.10, 0.0, 0.22, 0.25, 0.18, 0.0),
    "minor": (0.25, 0.0, 0.12, 0.20, 0.15, 0.15, 0.13),
}
CADENCE_TONIC_WEIGHT = 1.0
"""Weight of the tonic in the first bar, in the closing bar (the last whole one, with any bar cut
short after it) and on the melody's last note: the piece opens and closes on its key, and the
closing chord is held. It is certain, not just likely, because few-step sampling follows the
initial noise more than the prior's weights."""
TONIC_PEDAL_WEIGHT = 0.8
"""Under a chord that holds the tonic (IV and vi; iv and VI in minor), the share of bars in which the
bass keeps the tonic as a pedal (IV/I, vi/I) instead of the chord's root: the bass is the loudest
pitched part, and a key is heard from its bass more than from anything else. (Under chords without
the tonic the bass plays the root, so a bass line always sounds a note of its chord.)"""
PHRASE_BARS = 4
PHRASE_TONIC_WEIGHT = 0.6
"""Weight of the tonic chord at the start of every later 4-bar phrase."""
DOMINANT_DEGREE = 4
"""The dominant (V) never follows a phrase's first bar: a phrase moves from the tonic, away from it
(IV, ii, vi), to the dominant and back. Two bars of V in a four-bar piece read as the key of V (its
root is the loudest bass note there, and the tonic chord's fifth too)."""

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
        return key_name(self.tonic, self.mode)


def parse_keyscale(text: str) -> Key:
    """``"F# minor"``, ``"Bb major"``, ``"a min"``, ``"C#m"`` -> Key (see ``vocabulary.key_parts``)."""
    try:
        tonic, mode = key_parts(text)
    except ValueError as error:
        raise InvalidStageRequest(f"keyscale {error}") from error
    return Key(tonic=tonic, mode=mode)


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

