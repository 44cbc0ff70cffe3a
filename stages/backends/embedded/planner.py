"""Simple mode for the embedded model: a free-text description becomes the structured request
(caption, bpm, keyscale, timesignature, duration, instrumental) that ACE-Step's language model
would otherwise write, plus the metadata it would report.

Rules, not a model: what the text says explicitly wins ("in F# minor", "128 bpm", "waltz",
"90 seconds"), mood and genre words come next ("sad" -> minor, "house" -> 124 bpm), and whatever
the text leaves open is drawn from a hash of the description, so the same description always gives
the same plan and different descriptions give varied ones.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from pydantic import BaseModel, ConfigDict

from prefect_acestep.stages.backends.embedded.harmony import TEMPO_RANGE, Key, parse_keyscale
from prefect_acestep.stages.errors import InvalidStageRequest
from prefect_acestep.stages.geometry import MAX_DURATION_S

PLANNER = "embedded-rules-1"

TEMPO_WORDS: tuple[tuple[tuple[str, ...], int], ...] = (
    (("drum and bass", "dnb", "jungle"), 172),
    (("techno",), 130),
    (("house", "edm", "disco", "dance", "club"), 124),
    (("very slow",), 60),
    (("hip hop", "hip-hop", "hiphop", "boom bap"), 90),
    (("lofi", "lo-fi", "chill", "relaxed"), 84),
    (("slow", "ballad", "calm", "ambient", "gentle"), 72),
    (("fast", "energetic", "upbeat", "punk", "driving"), 140),
    (("rock", "pop", "funk"), 116),
)
MINOR_WORDS = ("minor", "sad", "dark", "melancholic", "melancholy", "moody", "somber", "sombre", "tense", "eerie")
MAJOR_WORDS = ("major", "happy", "bright", "uplifting", "cheerful", "joyful", "sunny", "triumphant")
VOCAL_WORDS = ("vocal", "vocals", "singing", "singer", "sung", "lyrics", "choir", "rap", "rapping")
INSTRUMENTAL_PHRASES = ("instrumental", "no vocals", "without vocals", "no singing", "no voice")
GENRES = ("rock", "pop", "jazz", "blues", "funk", "house", "techno", "edm", "disco", "hip hop", "lofi", "ambient",
          "classical", "folk", "country", "metal", "punk", "reggae", "soul", "waltz", "cinematic", "ballad")
DEFAULT_TEMPOS = (90, 100, 110, 120, 128)
DEFAULT_DURATIONS = (30.0, 45.0, 60.0, 90.0)


class SimplePlan(BaseModel):
    """The structured request simple mode hands to a generate stage."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    caption: str
    bpm: int
    keyscale: str
    timesignature: str
    duration: float
    instrumental: bool
    lm_metadata: dict[str, Any]


def _choice(digest: bytes, slot: int, options: tuple) -> Any:
    return options[digest[slot] % len(options)]


def _has(text: str, phrase: str) -> bool:
    return re.search(rf"(?<![a-z0-9]){re.escape(phrase)}(?![a-z0-9])", text) is not None


def plan(description: str) -> SimplePlan:
    text = " ".join(description.split())
    if not text:
        raise InvalidStageRequest("caption: the embedded planner reads a description, got an empty one")
    lower = text.lower()
    digest = hashlib.sha256(lower.encode()).digest()
    sources: dict[str, str] = {}
    spans: list[tuple[int, int]] = []

    bpm_match = re.search(r"(?:\bat\s+|@\s*)?\b(\d{2,3})\s*bpm\b", lower)
    if bpm_match:
        bpm = int(bpm_match.group(1))
        if not TEMPO_RANGE[0] <= bpm <= TEMPO_RANGE[1]:
            raise InvalidStageRequest(f"description asks for {bpm} bpm: expected {TEMPO_RANGE[0]}-{TEMPO_RANGE[1]}")
        sources["bpm"] = "text"
        spans.append(bpm_match.span())
    else:
        worded = [tempo for words, tempo in TEMPO_WORDS if any(_has(lower, w) for w in words)]
        bpm = worded[0] if worded else _choice(digest, 0, DEFAULT_TEMPOS)
        sources["bpm"] = "words" if worded else "hash"

    key_match = re.search(r"\b(?:in|key of)\s+([a-g][#b♯♭]?)\s*(major|minor|maj|min)\b", lower) or re.search(
        r"\b([A-G][#b♯♭]?)\s+(major|minor)\b", text
    )
    if key_match:
        key = parse_keyscale(f"{key_match.group(1)} {key_match.group(2)}")
        sources["keyscale"] = "text"
        spans.append(key_match.span())
    else:
        minor = sum(_has(lower, w) for w in MINOR_WORDS)
        major = sum(_has(lower, w) for w in MAJOR_WORDS)
        mode = "minor" if minor > major else "major" if major > minor else _choice(digest, 1, ("major", "minor"))
        key = Key(tonic=digest[2] % 12, mode=mode)
        sources["keyscale"] = "words+hash" if minor != major else "hash"

    metre_match = re.search(r"\b([2346])\s*/\s*(4|8)\b", lower)
    if metre_match:
        timesignature = metre_match.group(1)
        sources["timesignature"] = "text"
        spans.append(metre_match.span())
    else:
        timesignature = "3" if _has(lower, "waltz") else "4"
        sources["timesignature"] = "words" if timesignature == "3" else "default"

    # A bare "s" is no unit here: "80s" is a decade far more often than a length.
    duration_match = re.search(
        r"(?:\b(?:lasting|for|of)\s+)?(\d+(?:\.\d+)?)\s*(seconds|second|secs|sec|minutes|minute|mins|min)\b", lower
    )
    if duration_match:
        amount = float(duration_match.group(1))
        duration = amount * 60.0 if duration_match.group(2).startswith("m") else amount
        if not 1.0 <= duration <= MAX_DURATION_S:
            raise InvalidStageRequest(f"description asks for {duration:g} s: expected 1-{MAX_DURATION_S:g} s")
        sources["duration"] = "text"
        spans.append(duration_match.span())
    else:
        if _has(lower, "short") or _has(lower, "long"):
            duration = 30.0 if _has(lower, "short") else 180.0
        else:
            duration = _choice(digest, 3, DEFAULT_DURATIONS)
        sources["duration"] = "words" if _has(lower, "short") or _has(lower, "long") else "hash"

    if any(_has(lower, p) for p in INSTRUMENTAL_PHRASES):
        instrumental = True
    else:
        instrumental = not any(_has(lower, w) for w in VOCAL_WORDS)

    caption = text
    for start, end in sorted(spans, reverse=True):
        caption = caption[:start] + caption[end:]
    caption = re.sub(r"\s+([,.;:!?])", r"\1", " ".join(caption.split()))
    caption = re.sub(r"([,;:])(?:\s*[,;:])+", r"\1", caption).strip(" ,;:-")
    genres = [g for g in GENRES if _has(lower, g)]
    metadata = {
        "planner": PLANNER,
        "caption": caption,
        "bpm": bpm,
        "keyscale": key.name,
        "timesignature": timesignature,
        "duration": duration,
        "instrumental": instrumental,
        "genres": genres,
        "sources": sources,
    }
    return SimplePlan(
        caption=caption,
        bpm=bpm,
        keyscale=key.name,
        timesignature=timesignature,
        duration=duration,
        instrumental=instrumental,
        lm_metadata=metadata,
    )
