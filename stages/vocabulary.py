"""The vocabulary: every stage type, the model task it runs, what it reads, which variants run it; and
the musical keys.

This is the one place where stage types, model tasks, track names, model variants and keys are named.
The request models' ``Literal`` types and rules, the runner's source modes, the loop's checks, the
task context and both backends' refusals are all read from the tables below, so they cannot drift
apart. The module imports nothing else of the project, so every layer may use it.

Adding a stage type is one row of ``STAGES`` plus its conditioning: the instruction text the
ACE-Step backend writes for its task (``backends/acestep/prompt.py``), and, for a new task, how the
embedded model reads it (``backends/embedded/observation.py``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

TRACK_NAMES: tuple[str, ...] = (
    "woodwinds", "brass", "fx", "synth", "strings", "percussion",
    "keyboard", "guitar", "bass", "drums", "backing_vocals", "vocals",
)  # fmt: skip
"""The track (stem) names ACE-Step 1.5 was trained on, in its own order."""
TrackName = Literal[TRACK_NAMES]  # type: ignore[valid-type]  # Literal[tuple] spreads the names


# --- model variants ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    """Checkpoints trained alike. Its variants share weights and differ only in how they are sampled."""

    name: str
    variants: tuple[str, ...]
    """The variant names it can be sampled as; the first is what its config means by default."""
    guided: bool
    """Trained for classifier-free guidance; turbo checkpoints are guidance-distilled (no uncond branch)."""


FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        Family("base", ("base",), guided=True),
        Family("sft", ("sft",), guided=True),
        # The turbo sampling flavours ship with one config (model_version "turbo").
        Family("turbo", ("turbo", "turbo-shift1", "turbo-shift3", "turbo-continuous"), guided=False),
    )
}
"""Keyed by the ``model_version`` a checkpoint's transformer config names."""

VARIANT_FAMILY: dict[str, str] = {variant: family.name for family in FAMILIES.values() for variant in family.variants}
"""Model variant -> its family."""

MODEL_VARIANTS: tuple[str, ...] = tuple(VARIANT_FAMILY)
ModelVariant = Literal[MODEL_VARIANTS]  # type: ignore[valid-type]

ALL_FAMILIES: frozenset[str] = frozenset(FAMILIES)
BASE_ONLY: frozenset[str] = frozenset({"base"})


def is_guided(variant: str) -> bool:
    """Whether ``variant`` has an unconditional branch that classifier-free guidance can use."""
    return FAMILIES[VARIANT_FAMILY[variant]].guided


# --- stage types and model tasks ----------------------------------------------------------------

Context = Literal["silence", "source", "codes"]
"""What the model is given as context besides the noisy latent:

- ``silence``: nothing (the silence latent): text2music, whether from noise or from an init latent;
- ``source``: the source latents, with a chunk mask saying which frames to generate;
- ``codes``: the source's VQ codes for the first ``audio_cover_strength`` of the steps, then
  nothing (cover).
"""
Window = Literal["none", "optional", "required"]
"""Whether a task takes a window ``[start, end)`` of the source to generate (the rest is kept);
without an optional window the whole source is generated."""
Tracks = Literal["none", "one", "any"]
"""How many tracks a task's instruction names: none, exactly one, or any number (none included)."""


@dataclass(frozen=True)
class Stage:
    """One stage type: the model task it runs and what it needs (one row of ``STAGES``)."""

    kind: str
    task: str
    """The conditioning task as the model sees it."""
    needs_source: bool
    """A stage without a source latent (or imported audio) is refused before any work."""
    context: Context
    window: Window
    tracks: Tracks
    families: frozenset[str]
    """Variant families trained for the task (upstream offers extract, lego, complete on base only)."""

    @property
    def reads_audio(self) -> bool:
        """The source is audio to the model (decoded and re-encoded, then given as context), not
        an init latent to partially denoise."""
        return self.context != "silence"


STAGES: dict[str, Stage] = {
    stage.kind: stage
    for stage in (
        #     kind        task          needs_source context    window      tracks  families
        Stage("generate", "text2music", False, "silence", "none", "none", ALL_FAMILIES),
        Stage("refine", "text2music", True, "silence", "none", "none", ALL_FAMILIES),
        Stage("cover", "cover", True, "codes", "none", "none", ALL_FAMILIES),
        Stage("repaint", "repaint", True, "source", "required", "none", ALL_FAMILIES),
        Stage("extract", "extract", True, "source", "none", "one", BASE_ONLY),
        Stage("lego", "lego", True, "source", "optional", "one", BASE_ONLY),
        Stage("complete", "complete", True, "source", "none", "any", BASE_ONLY),
    )
}  # fmt: skip

STAGE_KINDS: tuple[str, ...] = tuple(STAGES)
PLANNED_STAGES: frozenset[str] = frozenset(kind for kind, stage in STAGES.items() if stage.context == "silence")
"""Stages the planner (the 5 Hz LM) serves: the text2music ones, which read no source context.
Audio stages take their context from their source, as upstream skips its LM for them (its codes
would silently turn them into covers)."""
StageKind = Literal[STAGE_KINDS]  # type: ignore[valid-type]
"""Stage types that run a diffusion pass."""

IMPORT_STAGE = "import"
"""The stage type recorded on a latent encoded from user audio rather than diffused."""
RECORD_STAGE_TYPES: tuple[str, ...] = (*STAGE_KINDS, IMPORT_STAGE)
StageType = Literal[RECORD_STAGE_TYPES]  # type: ignore[valid-type]
"""Stage types a stored latent records."""


@dataclass(frozen=True)
class Task:
    """What a model task reads, whichever stage type runs it (derived from ``STAGES``)."""

    name: str
    context: Context
    window: Window
    tracks: Tracks
    families: frozenset[str]


def _tasks() -> dict[str, Task]:
    tasks: dict[str, Task] = {}
    for stage in STAGES.values():
        task = Task(stage.task, stage.context, stage.window, stage.tracks, stage.families)
        if tasks.setdefault(stage.task, task) != task:
            raise RuntimeError(f"stage {stage.kind!r} reads task {stage.task!r} unlike the stages before it")
    return tasks


TASKS: dict[str, Task] = _tasks()
MODEL_TASKS: tuple[str, ...] = tuple(TASKS)
TaskKind = Literal[MODEL_TASKS]  # type: ignore[valid-type]
"""Conditioning task as the model sees it (generate and refine are both text2music)."""


def runs(variant: str, task: str) -> bool:
    """Whether model ``variant`` was trained for ``task``."""
    return VARIANT_FAMILY[variant] in TASKS[task].families


def tasks_of(variant: str) -> tuple[str, ...]:
    """The tasks ``variant`` runs, in table order."""
    return tuple(task for task in MODEL_TASKS if runs(variant, task))


def refusal(variant: str, task: str) -> str | None:
    """Why ``variant`` may not run ``task`` (one sentence for every layer's error), else None."""
    if task not in TASKS:
        return f"unknown task {task!r}; known: {list(MODEL_TASKS)}"
    if runs(variant, task):
        return None
    trained = " and ".join(sorted(TASKS[task].families))
    return (
        f"task {task!r} is not supported by variant {variant!r}: only {trained} checkpoints were trained "
        f"for it; variant {variant!r} runs {list(tasks_of(variant))}"
    )


# --- keys ---------------------------------------------------------------------------------------

KeyMode = Literal["major", "minor"]
KEY_MODES: tuple[KeyMode, ...] = ("major", "minor")
SCALES: dict[str, tuple[int, ...]] = {
    "major": (0, 2, 4, 5, 7, 9, 11),
    "minor": (0, 2, 3, 5, 7, 8, 10),  # natural minor
}
"""Semitones above the tonic of each mode's seven scale degrees."""

KEY_SPELLINGS: dict[str, tuple[str, ...]] = {
    "major": ("C", "Db", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B"),
    "minor": ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "G#", "A", "Bb", "B"),
}
"""The one spelling of each tonic (pitch class 0 = C): the key signature with the fewest accidentals,
sharps for F# major and F# minor and flats for Eb minor (six either way), ASCII ``#`` and ``b``."""

KEYS: tuple[str, ...] = tuple(
    f"{KEY_SPELLINGS[mode][tonic]} {mode}" for tonic in range(12) for mode in KEY_MODES
)
"""The 24 keys as the forms list them, by tonic: ``C major``, ``C minor``, ``Db major``, ``C# minor``, ..."""

ACESTEP_KEYSCALES: tuple[str, ...] = tuple(
    f"{note}{accidental} {mode}" for note in "ABCDEFG" for accidental in ("", "#", "b", "♯", "♭") for mode in KEY_MODES
)
"""ACE-Step 1.5's 70 key/scale names (``B♭ major``, ``E# minor``, ...): the spellings its 5 Hz LM was
trained to write, so its constrained decoding allows exactly these. Each names one of ``KEYS``, which
is what a request stores."""

_LETTERS = {"c": 0, "d": 2, "e": 4, "f": 5, "g": 7, "a": 9, "b": 11}
_ACCIDENTALS = {"": 0, "#": 1, "♯": 1, "b": -1, "♭": -1}
_MODE_WORDS: dict[str, KeyMode] = {"major": "major", "maj": "major", "minor": "minor", "min": "minor", "m": "minor"}
_KEY_PATTERN = re.compile(r"\s*([a-g])\s*([#♯b♭]?)\s*(major|minor|maj|min|m)\s*", flags=re.IGNORECASE)


def key_parts(text: str) -> tuple[int, KeyMode]:
    """``(tonic pitch class, mode)`` of a key written any common way, in any case: ``F# minor``,
    ``f♯ MINOR``, ``Gb major``, ``B♭ maj``, ``C#m``; ACE-Step's own spellings (``E# minor``, ``Cb
    major``) included. Anything else is a ``ValueError`` that shows the expected form."""
    match = _KEY_PATTERN.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not a key: expected a note and major or minor, e.g. 'C major' or 'F# minor'")
    letter, accidental, mode = match.groups()
    return (_LETTERS[letter.lower()] + _ACCIDENTALS[accidental.lower()]) % 12, _MODE_WORDS[mode.lower()]


def key_name(tonic: int, mode: KeyMode) -> str:
    """The one spelling of a key (one of ``KEYS``)."""
    return f"{KEY_SPELLINGS[mode][tonic % 12]} {mode}"


def normalise_keyscale(text: str) -> str:
    """A key in its one spelling (``"f# MINOR"`` -> ``"F# minor"``); ``""`` (no key) stays ``""``."""
    return "" if text == "" else key_name(*key_parts(text))
