"""What a caption asks of the arrangement: which parts play, how the harmony is comped, and which
groove the drums follow. Deterministic word matching: the embedded model has no text encoder, and a
rule table is something a test (and a user) can reason about."""

from __future__ import annotations

import re
from dataclasses import dataclass

from prefect_acestep.stages.backends.embedded.tracks import PARTS

DEFAULT_PARTS = frozenset({"bass", "low", "mid", "lead", "drums"})
"""The band when a caption names no instrument: bass, two comping registers, a lead, drums."""

PART_WORDS: dict[str, tuple[str, ...]] = {
    "bass": ("bass", "bassline", "808", "sub"),
    "low": ("guitar", "guitars", "strings", "cello", "cellos", "viola", "piano", "keys", "organ", "orchestra",
            "orchestral"),
    "mid": ("piano", "keys", "keyboard", "organ", "rhodes", "synth", "synths", "pad", "pads", "choir", "strings",
            "violin", "violins", "harp"),
    "lead": ("vocal", "vocals", "voice", "singer", "singing", "sung", "lead", "melody", "flute", "sax", "saxophone",
             "trumpet", "brass", "horn", "horns", "woodwind", "woodwinds", "clarinet", "whistle"),
    "drums": ("drum", "drums", "beat", "beats", "kit", "breakbeat", "groove"),
    "percussion": ("percussion", "percussive", "shaker", "conga", "congas", "bongo", "bongos", "tabla", "latin",
                   "cowbell"),
    "fx": ("fx", "sfx", "effects", "glitch", "sweeps", "risers", "cinematic"),
}
NEGATIONS = ("no", "without", "minus", "zero")

SUSTAIN_WORDS = ("ambient", "calm", "chill", "slow", "soft", "dreamy", "pad", "pads", "drone", "cinematic", "ballad",
                 "lofi", "peaceful", "relaxing", "meditation", "orchestral", "sad", "gentle")
PULSE_WORDS = ("energetic", "upbeat", "rock", "punk", "metal", "dance", "edm", "house", "techno", "disco", "funk",
               "fast", "driving", "pop", "electro", "bouncy", "happy")

GROOVE_WORDS: dict[str, tuple[str, ...]] = {
    "dance": ("edm", "house", "techno", "disco", "dance", "club", "trance", "electro"),
    "halftime": ("hiphop", "hip", "trap", "rnb", "boom", "dub", "lofi", "dubstep"),
    "sparse": ("ambient", "calm", "ballad", "soft", "minimal", "chill", "gentle", "peaceful"),
}
GROOVES = ("rock", "dance", "halftime", "sparse")


@dataclass(frozen=True)
class Style:
    parts: frozenset[str]
    sustain: float
    """Prior weight of held chords (against chords re-struck on every beat)."""
    groove: str

    def with_parts(self, extra: frozenset[str]) -> "Style":
        return Style(parts=self.parts | extra, sustain=self.sustain, groove=self.groove)


def _words(caption: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", caption.lower().replace("lo-fi", "lofi").replace("hip-hop", "hiphop"))


def parse_style(caption: str, sings: bool) -> Style:
    """Style of ``caption``; ``sings`` (lyrics given, not instrumental) adds the lead voice."""
    words = _words(caption)
    named: set[str] = set()
    negated: set[str] = set()
    for i, word in enumerate(words):
        hit = {part for part, vocabulary in PART_WORDS.items() if word in vocabulary}
        if not hit:
            continue
        if any(w in NEGATIONS for w in words[max(0, i - 2) : i]):
            negated |= hit
        else:
            named |= hit
    parts = (frozenset(named) if named else DEFAULT_PARTS) - negated
    if sings:
        parts |= {"lead"}
    sustain_votes = sum(w in SUSTAIN_WORDS for w in words) - sum(w in PULSE_WORDS for w in words)
    sustain = 0.5 if sustain_votes == 0 else (0.8 if sustain_votes > 0 else 0.2)
    groove_votes = {g: sum(w in vocabulary for w in words) for g, vocabulary in GROOVE_WORDS.items()}
    best = max(groove_votes, key=lambda g: (groove_votes[g], -GROOVES.index(g)))
    groove = best if groove_votes[best] > 0 else "rock"
    return Style(parts=frozenset(p for p in PARTS if p in parts), sustain=sustain, groove=groove)
