"""The canonical parameter set of one diffusion pass (``StageParams``) and its field vocabularies.

Every request model (custom, simple, pipeline) is assembled from the field groups defined here, so a
field's type, bounds and description exist once. The groups are separate classes only so that other
models can take part of them: ``PipelineRequest`` shares ``Conditioning`` and ``RunSettings`` with its
stages, ``GenerateRequest`` takes all of ``StageFields``. These models are also the Prefect UI's run
forms, which is why every field carries a description and a bound or an enum.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from typing_extensions import Self

from prefect_acestep.stages.backends.protocol import ConditionSpec
from prefect_acestep.stages.engine.repaint import DEFAULT_REPAINT_MODE, DEFAULT_REPAINT_STRENGTH, RepaintMode
from prefect_acestep.stages.engine.variants import VARIANTS, InferMethod, SchedulerMode
from prefect_acestep.stages.forms import Problem, field_label, form_schema, request_problems
from prefect_acestep.stages.geometry import MAX_DURATION_S
from prefect_acestep.stages.planning.codes import CODES_PER_SECOND, MAX_CODE_STRING, code_count, parse_audio_codes
from prefect_acestep.stages.vocabulary import (
    KEYS,
    PLANNED_STAGES,
    STAGES,
    TRACK_NAMES,
    ModelVariant,
    StageKind,
    TaskKind,
    TrackName,
    normalise_keyscale,
    refusal,
)

VaeEncode = Literal["mean", "sample"]
"""How an audio task's source becomes latents: the posterior mean, or a seeded posterior sample."""

VOCAL_LANGUAGES: tuple[str, ...] = (
    "ar", "az", "bg", "bn", "ca", "cs", "da", "de", "el", "en",
    "es", "fa", "fi", "fr", "he", "hi", "hr", "ht", "hu", "id",
    "is", "it", "ja", "ko", "la", "lt", "ms", "ne", "nl", "no",
    "pa", "pl", "pt", "ro", "ru", "sa", "sk", "sr", "sv", "sw",
    "ta", "te", "th", "tl", "tr", "uk", "ur", "vi", "yue", "zh",
    "unknown",
)  # fmt: skip
"""ACE-Step 1.5's vocal languages (``acestep/constants.py``); ``unknown`` lets the model decide."""
VocalLanguage = Literal[VOCAL_LANGUAGES]  # type: ignore[valid-type]



def _one_spelling(value: Any) -> Any:
    """A key typed any way (``f# MINOR``, ``G♭ major``, ACE-Step's ``E# minor``) in its one spelling."""
    return normalise_keyscale(value) if isinstance(value, str) else value


KeyScale = Annotated[Literal[("",) + KEYS], BeforeValidator(_one_spelling)]  # type: ignore[valid-type]
"""One of the 24 keys in its one spelling (``vocabulary.KEYS``), or "" for none; other spellings and
any case are accepted and normalised."""

TIME_SIGNATURES: tuple[str, ...] = ("2", "3", "4", "6")
"""Beats per bar as ACE-Step writes them in the metas (2 = 2/4, 3 = 3/4, 4 = 4/4, 6 = 6/8)."""
TimeSignature = Literal[("",) + TIME_SIGNATURES]  # type: ignore[valid-type]

MAX_SEED = 2**32 - 1
DEFAULT_GUIDANCE_SCALE = 7.0
"""ACE-Step's default CFG scale for the guided variants."""
MAX_BATCH = 64
MAX_STAGES = 64
DEFAULT_DURATION_S = 30.0
"""Length of a run from noise (and of a plan's codes) when neither the request, a source nor a
planner gives one."""

LEGACY_FIELD_NAMES: dict[str, str] = {
    "type": "stage_type",
    "steps": "inference_steps",
    "input_stage": "src_stage",
    "checkpoint_step": "checkpoint_steps",
    "model": "variant",
}
"""Old field names that requests written for the web-app form of these schemas still send (old -> new)."""

_LEGACY_MODEL_PREFIX = "acestep-v15-"


def _minus_one_is_none(value: Any) -> Any:
    """ACE-Step's ``-1`` sentinel ("auto" duration, "end of source" repaint end) is our ``None``."""
    return None if isinstance(value, int | float) and not isinstance(value, bool) and value == -1 else value


def _sorted_unique(steps: list[int]) -> list[int]:
    """Checkpoints are taken in step order; a repeated step would store the same state twice."""
    if len(set(steps)) != len(steps):
        raise ValueError(f"checkpoint_steps has repeated steps: {steps}")
    return sorted(steps)


MAX_CAPTION_CHARS = 2_000
"""About twice what the DiT's 256 caption tokens take in English (the model refuses more tokens)."""
MAX_LYRICS_CHARS = 6_000
"""Room for the DiT's 2048 lyric tokens in most songs, and small enough that the stage params
(lyrics included) fit the tags of every audio format written by default (a WAV comment keeps about
50 KB; non-ASCII text is stored escaped, up to 6 bytes a character). A length bound also refuses
a lone surrogate (``"\\ud800"``, which JSON and Python allow but UTF-8 does not): pydantic checks the
length on the text as UTF-8, so such text fails validation instead of the text encoder after diffusion."""


def _valid_audio_codes(text: str) -> str:
    parse_audio_codes(text)
    return text


def _legacy_value(old: str, value: Any) -> Any:
    if old == "checkpoint_step":
        return [value]
    if old == "model" and isinstance(value, str) and value.startswith(_LEGACY_MODEL_PREFIX):
        return value[len(_LEGACY_MODEL_PREFIX) :]
    return value


# Field types shared by several models (descriptions and bounds written once).
InstrumentalField = Annotated[
    bool, Field(title="Instrumental", description="No vocals: the lyrics are replaced by [Instrumental].")
]
VocalLanguageField = Annotated[
    VocalLanguage, Field(title="Vocal language", description="Language of the lyrics; 'unknown' lets the model decide.")
]
DurationField = Annotated[
    Annotated[float, Field(gt=0, le=MAX_DURATION_S)] | None,
    BeforeValidator(_minus_one_is_none),
    Field(
        title="Duration (s)",
        description="Length of the result in seconds. Unset (or the legacy -1): the source latent's length, "
        "else chosen by the planner/backend. For repaint and lego, a duration longer than the source extends "
        "it (outpainting).",
    ),
]
SeedField = Annotated[
    int,
    Field(
        ge=-1,
        le=MAX_SEED,
        title="Seed",
        description="Base seed; -1 draws one. Each batch item gets its own seed derived from it (recorded).",
    ),
]
LatentIdField = Annotated[str | None, Field(min_length=1, max_length=200)]


class StrictModel(BaseModel):
    """Base of every request model: unknown fields are errors (a typo must not be silently ignored),
    while the web app's old field names are still understood. Its JSON schema is dressed as a form
    (``stages.forms``): ``FORM_FIRST`` fields first, titled choices for fields that may be empty."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=form_schema)
    FORM_FIRST: ClassVar[tuple[str, ...]] = ()

    @model_validator(mode="before")
    @classmethod
    def _accept_legacy_names(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        fields = cls.model_fields
        if "instruction" in data and "stage_type" in fields:
            raise ValueError("instruction: it is derived from stage_type and the track names and cannot be set")
        renamed = dict(data)
        legacy = {old: new for old, new in LEGACY_FIELD_NAMES.items() if new in fields and old not in fields}
        for old, new in legacy.items():
            if old not in renamed:
                continue
            if new in renamed:
                raise ValueError(f"{old}: legacy name of {new}; give one of them, not both")
            value = renamed.pop(old)
            if value is not None:
                renamed[new] = _legacy_value(old, value)
        return renamed


class Conditioning(StrictModel):
    """What the music should be: text and musical metas (the model's conditioning)."""

    caption: str = Field(
        "", max_length=MAX_CAPTION_CHARS, title="Caption", description="Style/content description of the music; empty = no caption."
    )
    lyrics: str = Field(
        "", max_length=MAX_LYRICS_CHARS, title="Lyrics", description="Lyrics with optional [verse]/[chorus] tags; empty = none."
    )
    instrumental: InstrumentalField = False
    vocal_language: VocalLanguageField = "unknown"
    bpm: int | None = Field(None, ge=30, le=300, title="BPM", description="Tempo in beats per minute.")
    keyscale: KeyScale = Field(
        "",
        title="Key / scale",
        description="One of the 24 keys, e.g. 'F# minor'; other spellings ('Gb major', 'f♯ min') are accepted "
        "and stored under the key's one name. Empty = no key.",
    )
    timesignature: TimeSignature = Field(
        "", title="Time signature", description="Beats per bar: 2 (2/4), 3 (3/4), 4 (4/4), 6 (6/8); empty = unset."
    )
    duration: DurationField = None


class RunSettings(StrictModel):
    """Which model runs, and how many samples: shared by every stage of a pipeline unless overridden."""

    variant: ModelVariant = Field(
        "turbo", title="Model variant", description="ACE-Step 1.5 variant; sets default steps, shift, schedule and CFG."
    )
    backend: str = Field(
        "embedded",
        min_length=1,
        max_length=100,
        pattern=r"^[A-Za-z0-9_.-]+$",
        title="Backend",
        description="Model backend, by its 'prefect_acestep.backends' entry point name.",
    )
    batch_size: int = Field(
        1, ge=1, le=MAX_BATCH, title="Batch size", description="Samples generated at once, one seed each."
    )


class LmSampling(StrictModel):
    """How the 5 Hz LM samples (upstream's ``lm_*`` parameters and defaults)."""

    lm_temperature: float = Field(
        0.85, ge=0.0, le=2.0, title="LM temperature", description="Sampling temperature of the 5 Hz LM; 0 = greedy."
    )
    lm_cfg_scale: float = Field(
        2.0,
        ge=1.0,
        le=10.0,
        title="LM guidance",
        description="Classifier-free guidance of the LM against the negative prompt; 1 = none.",
    )
    lm_top_k: int = Field(0, ge=0, le=1000, title="LM top-k", description="Keep the k likeliest tokens; 0 = off.")
    lm_top_p: float = Field(
        0.9, gt=0.0, le=1.0, title="LM top-p", description="Nucleus sampling: keep tokens up to this mass; 1 = off."
    )
    lm_negative_prompt: str = Field(
        "NO USER INPUT",
        max_length=2000,
        title="LM negative prompt",
        description="Caption of the LM's unconditional branch; 'NO USER INPUT' (upstream's default) drops the caption.",
    )


class LmSettings(LmSampling):
    """Whether the 5 Hz LM plans a run before diffusion, and what it may decide (upstream's
    ``thinking`` and ``use_cot_*``). Off by default: the LM folder is optional, and a request that
    needs it fails when it is missing rather than running without it."""

    thinking: bool = Field(
        False,
        title="Thinking (5 Hz LM)",
        description="The 5 Hz LM writes the song's audio codes, which condition the DiT (generate/refine from noise; "
        "needs the LM folder, ACESTEP_LM_DIR). A source latent's stored plan is reused, never re-planned.",
    )
    use_cot_metas: bool | None = Field(
        None,
        title="LM writes metas",
        description="The LM fills bpm, key, time signature and duration left unset. None = same as thinking.",
    )
    use_cot_caption: bool | None = Field(
        None, title="LM rewrites caption", description="The DiT gets the LM's rewritten caption. None = same as thinking."
    )
    use_cot_language: bool | None = Field(
        None,
        title="LM detects language",
        description="The LM writes the vocal language when it is 'unknown'. None = same as thinking.",
    )

    @property
    def cot_fields(self) -> tuple[bool, bool, bool]:
        """Effective (metas, caption, language) switches: unset ones follow ``thinking``."""
        return tuple(  # type: ignore[return-value]
            self.thinking if value is None else value
            for value in (self.use_cot_metas, self.use_cot_caption, self.use_cot_language)
        )

    @property
    def wants_plan(self) -> bool:
        """Upstream's rule for running the LM at all: thinking, or any chain-of-thought field."""
        return any((self.thinking, *self.cot_fields))


class StageFields(LmSettings, RunSettings, Conditioning):
    """Fields shared by ``StageParams`` and ``GenerateRequest``, and the rules that tie them together.

    Not a request by itself: the two subclasses differ only in how they name their latent source
    (``SOURCE_FIELDS``), which is why the rules read the source through that list.
    """

    SOURCE_FIELDS: ClassVar[tuple[str, ...]] = ()

    stage_type: StageKind = Field(
        "generate",
        title="Stage type",
        description="generate (from noise, or resume a checkpoint), refine (partially denoise a latent), "
        "cover, repaint, extract, lego, complete (audio tasks that need a source).",
    )
    track_name: TrackName | None = Field(
        None, title="Track", description="Track for extract/lego: the one track to extract or add."
    )
    complete_track_classes: list[TrackName] = Field(
        default_factory=list, title="Tracks to complete", description="Tracks that complete adds; none = unspecified."
    )
    repainting_start: float = Field(
        0.0,
        ge=-MAX_DURATION_S,
        le=MAX_DURATION_S,
        title="Repaint start (s)",
        description="Start of the repaint/lego window in seconds from the start of the source; negative extends "
        "the clip before it (outpainting: set the duration to the longer length).",
    )
    repainting_end: Annotated[
        Annotated[float, Field(ge=-MAX_DURATION_S, le=MAX_DURATION_S)] | None, BeforeValidator(_minus_one_is_none)
    ] = Field(
        None,
        title="Repaint end (s)",
        description="End of the window in seconds (exclusive); Unset (or the legacy -1) = the end of the source. "
        "Past the end extends the clip (outpainting: set the duration to the longer length); past a duration "
        "that is set, it is an error.",
    )
    audio_cover_strength: float = Field(
        1.0,
        ge=0.0,
        le=1.0,
        title="Cover strength",
        description="Cover: the first int(steps * strength) steps are conditioned on the source's VQ codes.",
    )
    repaint_mode: RepaintMode = Field(
        DEFAULT_REPAINT_MODE,
        title="Repaint seams",
        description="How repaint/lego join the window to the source. balanced (upstream's default): the source "
        "is held for the first 1 - strength of the steps, then the window's edges are blended back into it over "
        "a few frames and its waveform spliced back with a short crossfade; conservative: held every step, the "
        "widest blend; aggressive: no holding, blend or splice; strict: exactly the source outside the window, "
        "hard edges.",
    )
    repaint_strength: float = Field(
        DEFAULT_REPAINT_STRENGTH,
        ge=0.0,
        le=1.0,
        title="Repaint strength",
        description="balanced seams only: 0 keeps the most of the source around the window, 1 is pure diffusion.",
    )
    vae_encode: VaeEncode = Field(
        "mean",
        title="VAE encode",
        description="How an audio task's source becomes latents: mean (the posterior mean: deterministic) or "
        "sample (a posterior sample as upstream draws it, seeded from the stage seed so a replay repeats it).",
    )
    src_audio_id: LatentIdField = Field(
        None, title="Source audio", description="Latent ID of imported audio to use as the source."
    )
    resume_sample_index: int = Field(
        0,
        ge=0,
        le=MAX_BATCH - 1,
        title="Source sample",
        description="Batch item of the source latent to use (0 = first).",
    )
    inference_steps: int | None = Field(
        None,
        ge=1,
        le=200,
        title="Steps",
        description="Diffusion steps N; Unset = the variant's default (base 32, sft 50, turbo 8).",
    )
    shift: float | None = Field(
        None, ge=1.0, le=5.0, title="Shift", description="Timestep shift; Unset = the variant's default."
    )
    seed: SeedField = -1
    infer_method: InferMethod = Field("ode", title="Sampler", description="ode (deterministic Euler) or sde.")
    scheduler: SchedulerMode | None = Field(
        None, title="Scheduler", description="Timestep schedule; Unset = the variant's own."
    )
    timesteps: list[Annotated[float, Field(ge=0.0, le=1.0)]] | None = Field(
        None,
        min_length=1,
        max_length=201,
        title="Custom timesteps",
        description="Custom schedule (t in [0, 1], 1 = noise), treated per variant; Unset = computed.",
    )
    guidance_scale: float | None = Field(
        None,
        ge=1.0,
        le=20.0,
        title="Guidance scale",
        description="CFG scale for guided variants (base/sft); 1 = no guidance. Unset = the variant's default "
        f"({DEFAULT_GUIDANCE_SCALE:g} for base/sft, no guidance for turbo variants, which reject any other value).",
    )
    use_adg: bool = Field(False, title="Use ADG", description="Angle-clipped guidance (ADG) instead of APG.")
    cfg_interval_start: float = Field(
        0.0, ge=0.0, le=1.0, title="CFG interval start", description="Guidance applies while t >= this (t: 1 = noise)."
    )
    cfg_interval_end: float = Field(
        1.0, ge=0.0, le=1.0, title="CFG interval end", description="Guidance applies while t <= this."
    )
    t_start: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        title="Denoise (t_start)",
        description="Noise level to start from (1 = pure noise): below 1 keeps that much of the source latent and "
        "partially denoises it (0.3 stays close, 0.8 strays far). Unset = 1, or a checkpoint's own step when "
        "resuming one.",
    )
    checkpoint_steps: Annotated[list[Annotated[int, Field(ge=0)]], AfterValidator(_sorted_unique)] = Field(
        default_factory=list,
        title="Checkpoint steps",
        description="Absolute step indices K at which to store the state x_t (start of step K), to resume or "
        "branch from later; none = no checkpoints.",
    )
    audio_code_string: Annotated[str, AfterValidator(_valid_audio_codes)] = Field(
        "",
        max_length=MAX_CODE_STRING,
        title="Audio codes",
        description="5 Hz LM codes ('<|audio_code_N|>' tokens, 5 per second) conditioning a generate/refine as "
        "upstream's cover-like context; '' = none. A planned latent records its LM's codes here.",
    )
    allow_cross_variant: bool = Field(
        False,
        title="Allow cross-variant source",
        description="Let a latent made by another variant of the same latent space feed this stage "
        "(quality is unpredictable; off by default).",
    )

    @property
    def planned_steps(self) -> int:
        """Steps N before custom timesteps are applied (those may change N; the engine decides)."""
        return self.inference_steps if self.inference_steps is not None else VARIANTS[self.variant].default_steps

    @property
    def effective_guidance_scale(self) -> float:
        """The scale the loop runs with: the given one, else the variant's default."""
        if self.guidance_scale is not None:
            return self.guidance_scale
        return DEFAULT_GUIDANCE_SCALE if VARIANTS[self.variant].uses_cfg else 1.0

    @property
    def task(self) -> TaskKind:
        """The model's task (generate and refine are both text2music)."""
        return STAGES[self.stage_type].task

    def condition_spec(self) -> ConditionSpec:
        """The structured conditioning. The track names reach only stages that name tracks: one
        ``track_name``, or any number of ``complete_track_classes``."""
        tracks: tuple[str, ...] = ()
        naming = STAGES[self.stage_type].tracks
        if naming == "one" and self.track_name is not None:
            tracks = (self.track_name,)
        elif naming == "any":
            tracks = tuple(self.complete_track_classes)
        return ConditionSpec(
            task=self.task,
            caption=self.caption,
            lyrics=self.lyrics,
            instrumental=self.instrumental,
            vocal_language=self.vocal_language,
            bpm=self.bpm,
            keyscale=None if self.keyscale == "" else self.keyscale,
            timesignature=None if self.timesignature == "" else self.timesignature,
            duration_s=self.duration,
            track_names=tracks,
        )

    @model_validator(mode="after")
    def _check_rules(self) -> Self:
        problems = self.rule_problems()
        if problems:
            raise request_problems(type(self), problems)
        return self

    def _label(self, name: str) -> str:
        return field_label(type(self), name)

    def rule_problems(self) -> list[Problem]:
        """The rules that tie several fields together, broken ones as ``(field, message)`` pairs."""
        labels = [self._label(name) for name in self.SOURCE_FIELDS]
        sources = " or ".join(labels) if len(labels) < 3 else f"{', '.join(labels[:-1])} or {labels[-1]}"
        has_source = any(getattr(self, name) is not None for name in self.SOURCE_FIELDS)
        stage = STAGES[self.stage_type]
        problems: list[Problem] = []
        if stage.needs_source and not has_source:
            problems.append(("stage_type", f"{self.stage_type!r} needs a source: set {sources}"))
        if self.t_start is not None and self.t_start < 1.0 and not has_source:
            problems.append(("t_start", f"{self.t_start:g} < 1 partially denoises a source latent: set {sources}"))
        if stage.tracks == "one" and self.track_name is None:
            problems.append(("track_name", f"required for stage type {self.stage_type!r} (one of {list(TRACK_NAMES)})"))
        refused = refusal(self.variant, self.task)
        if refused is not None:
            problems.append(("stage_type", f"{self.stage_type!r}: {refused}"))
        if self.repainting_end is not None and self.repainting_end <= self.repainting_start:
            problems.append(
                ("repainting_end", f"{self.repainting_end:g} s must be after {self._label('repainting_start')} "
                 f"{self.repainting_start:g} s")
            )  # fmt: skip
        problems.extend(self._window_problems(stage.window != "none"))
        problems.extend(self._code_problems())
        if self.cfg_interval_end < self.cfg_interval_start:
            problems.append(
                ("cfg_interval_end", f"{self.cfg_interval_end:g} is below {self._label('cfg_interval_start')} "
                 f"{self.cfg_interval_start:g}")
            )  # fmt: skip
        if self.timesteps is None:
            out_of_range = [step for step in self.checkpoint_steps if step >= self.planned_steps]
            if out_of_range:
                problems.append(
                    ("checkpoint_steps", f"{out_of_range} out of range: {self.planned_steps} inference steps "
                     f"allow 0..{self.planned_steps - 1}")
                )  # fmt: skip
        return problems

    def _window_problems(self, takes_window: bool) -> list[Problem]:
        """A repaint/lego window must fit in the clip whose duration is set: the output is exactly
        ``duration`` long, so a window past it would silently lengthen the clip (outpainting) that the
        user asked to be shorter. Extending is asked for by setting the longer duration."""
        if self.duration is None:
            return []
        if not takes_window:
            return []
        before = max(0.0, -self.repainting_start)  # seconds added before the source (outpainting left)
        if self.repainting_start >= self.duration:
            return [
                ("repainting_start", f"{self.repainting_start:g} s is at or past the end of the clip: its "
                 f"{self._label('duration')} is {self.duration:g} s")
            ]  # fmt: skip
        if self.repainting_end is not None and self.repainting_end + before > self.duration + 1e-9:
            reach = self.repainting_end + before
            return [
                ("repainting_end", f"{self.repainting_end:g} s is past the end of the clip: its "
                 f"{self._label('duration')} is {self.duration:g} s. Shorten the window, or set the duration to "
                 f"{reach:g} s to extend the clip (outpainting)")
            ]  # fmt: skip
        return []


    def _code_problems(self) -> list[Problem]:
        if self.audio_code_string == "":
            return []
        if self.stage_type not in PLANNED_STAGES:
            return [
                ("audio_code_string", f"stage type {self.stage_type!r} takes its context from its source; only "
                 f"{sorted(PLANNED_STAGES)} take LM codes")
            ]  # fmt: skip
        count = len(parse_audio_codes(self.audio_code_string))
        if count == 0:
            return []
        if self.duration is not None and code_count(self.duration) != count:
            return [
                ("audio_code_string", f"{count} codes make {count / CODES_PER_SECOND:g} s, but duration "
                 f"{self.duration:g} s needs {code_count(self.duration)}")
            ]  # fmt: skip
        return []


class StageParams(StageFields):
    """The effective parameters of one diffusion pass: what a stage runs with and what a latent records.

    Sources follow the precedence ``src_latent_id > src_stage > src_audio_id > noise``
    (``prefect_acestep.stages.requests.resolve_source``). Task-specific fields (track names, repaint window, cover
    strength) are kept, not rejected, on stages that ignore them, so that switching a stage's type and
    back loses nothing.
    """

    SOURCE_FIELDS: ClassVar[tuple[str, ...]] = ("src_latent_id", "src_stage", "src_audio_id")

    src_latent_id: LatentIdField = Field(
        None,
        title="Source latent",
        description="A stored latent ID (from a stage table or 'prefect-acestep latents ls') to start from: what "
        "refine/generate denoise (a checkpoint resumes exactly), or an audio task's source. Wins over a source "
        "stage.",
    )
    src_stage: int | None = Field(
        None,
        ge=0,
        le=MAX_STAGES - 1,
        title="Source stage",
        description="Index of an earlier stage of this pipeline whose result is the source; stages are numbered "
        "from 0 in the order listed. Left unset in a stage that needs a source (refine, cover, repaint, ...): "
        "the stage just before it.",
    )
