"""Requests of the three modes (custom, simple, pipeline) and the one rule for picking a stage's source.

A pipeline stage stores only what it overrides: every field is ``None`` ("inherit the pipeline's shared
value, else the default"; the form's "Inherit") unless set. Fields whose effective value may itself be
unset (``bpm``, ``duration``, ``track_name``, ...) also take ``""`` = "explicitly unset" (the form's
"Unset"), so a stage can unset a value the pipeline shares; text fields take ``""`` as the empty text.
``PipelineStage`` is derived field by field from ``StageParams``, so both always have the same fields,
bounds and descriptions. A stage that needs a source and names none reads the stage before it.

The whole pipeline is checked at once: every problem of every stage is one line naming the stage's
index and the field's title (``stages.forms``), and a stage whose source stage is broken still says
which stage it is.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, Optional, Union, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator
from pydantic.fields import FieldInfo
from typing_extensions import Self

from prefect_acestep.stages.forms import INHERIT, Problem, field_label, problems_error, rule_problems

from prefect_acestep.stages.params import (
    MAX_STAGES,
    Conditioning,
    DurationField,
    InstrumentalField,
    LatentIdField,
    LmSampling,
    LmSettings,
    RunSettings,
    SeedField,
    StageFields,
    StageParams,
    StrictModel,
    VocalLanguageField,
)
from prefect_acestep.stages.vocabulary import STAGES

SourceKind = Literal["latent", "stage", "audio", "noise"]

SOURCE_PRECEDENCE: tuple[tuple[str, SourceKind], ...] = (
    ("src_latent_id", "latent"),
    ("src_stage", "stage"),
    ("src_audio_id", "audio"),
)
"""Which source field wins when several are set: ``src_latent_id > src_stage > src_audio_id > noise``."""


class StageSource(BaseModel):
    """Where a stage's input comes from: a stored latent, an earlier stage, imported audio, or noise."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: SourceKind = Field(description="latent, stage, audio or noise.")
    value: str | int | None = Field(
        None, description="Latent ID (latent), stage index (stage), audio latent ID (audio); None for noise."
    )

    @model_validator(mode="after")
    def _value_matches_kind(self) -> Self:
        expected = {"latent": str, "audio": str, "stage": int, "noise": type(None)}[self.kind]
        if not isinstance(self.value, expected):
            raise ValueError(f"value: a {self.kind} source takes {expected.__name__}, got {self.value!r}")
        return self


def resolve_source(params: StageParams) -> StageSource:
    """The one place that applies the source precedence. Lower-precedence fields are ignored, never
    used as a fallback: a missing latent fails at load time rather than falling through to noise."""
    for field, kind in SOURCE_PRECEDENCE:
        value = getattr(params, field)
        if value is not None:
            return StageSource(kind=kind, value=value)
    return StageSource(kind="noise")


SHARED_FIELDS: tuple[str, ...] = (
    tuple(Conditioning.model_fields) + tuple(RunSettings.model_fields) + tuple(LmSettings.model_fields)
)
"""Fields a pipeline sets once for all its stages (a stage may override each)."""

STAGE_ONLY_RENAMES: dict[str, str] = {"t_start": "denoise"}
"""The pipeline calls t_start "denoise"; same meaning, same bounds."""


def _nullable(info: FieldInfo) -> bool:
    return type(None) in get_args(info.annotation)


EMPTYABLE_FIELDS: frozenset[str] = frozenset(
    STAGE_ONLY_RENAMES.get(name, name) for name, info in StageParams.model_fields.items() if _nullable(info)
)
"""PipelineStage fields where ``""`` means "explicitly unset" (their effective value may be None)."""


def _per_stage_field(name: str, info: FieldInfo) -> tuple[Any, FieldInfo]:
    """The StageParams field ``name`` as a stage override: same type and bounds, plus None (inherit)
    and, for nullable fields, "" (explicitly unset)."""
    inner: Any = Annotated[info.annotation, *info.metadata] if info.metadata else info.annotation
    annotation = Union[inner, Literal[""], None] if _nullable(info) else Optional[inner]
    if name not in SHARED_FIELDS:
        choices = "Inherit (or Unset)" if _nullable(info) else "Inherit"
        note = f"In a stage: {choices} = the default."
    else:
        unset = " Unset = none, whatever the pipeline shares." if _nullable(info) else ""
        note = f"In a stage: Inherit = the pipeline's shared value.{unset}"
    return annotation, Field(None, title=info.title, description=f"{info.description} {note}")


_StageOverrides = create_model(  # type: ignore[call-overload]
    "_StageOverrides",
    __base__=StrictModel,
    **{
        STAGE_ONLY_RENAMES.get(name, name): _per_stage_field(name, info)
        for name, info in StageParams.model_fields.items()
    },
)


class PipelineStage(_StageOverrides):  # type: ignore[misc,valid-type]
    """One stage of a pipeline: the StageParams fields it overrides (see the module docstring), plus
    pipeline-only display settings. ``denoise`` is the pipeline's name for ``t_start``.

    Its form opens with what a person decides first: the stage's type, where it reads from, how far
    it departs from that source, the seed, whether to hear it; everything else follows."""

    FORM_FIRST: ClassVar[tuple[str, ...]] = (
        "stage_type", "src_stage", "src_latent_id", "denoise", "audio_cover_strength", "seed", "preview",
    )  # fmt: skip
    FORM_NONE_TITLE: ClassVar[str] = INHERIT
    FORM_ITEM: ClassVar[str] = "stage"

    preview: bool = Field(
        False,
        title="Preview",
        description="Decode this stage's result to audio too, with a player and a spectrogram on the run's page "
        "(the last stage always is).",
    )

    def overrides(self) -> dict[str, Any]:
        """The StageParams values this stage sets: inherited fields left out, "" unset fields as None."""
        values: dict[str, Any] = {}
        for name in StageParams.model_fields:
            stage_name = STAGE_ONLY_RENAMES.get(name, name)
            value = getattr(self, stage_name)
            if value is not None:
                values[name] = None if stage_name in EMPTYABLE_FIELDS and value == "" else value
        return values


class PipelineRequest(LmSettings, RunSettings, Conditioning):
    """A linear pipeline: shared conditioning and run settings, then the stages in order."""

    FORM_FIRST: ClassVar[tuple[str, ...]] = (*Conditioning.model_fields, "stages")

    stages: list[PipelineStage] = Field(
        min_length=1,
        max_length=MAX_STAGES,
        title="Stages",
        description="The stages, run in order and numbered from 0 (the first is stage 0). A stage reads its source "
        "stage by that number.",
    )

    def stage_params(self, index: int) -> StageParams:
        """The effective StageParams of stage ``index``: each field from the stage unless it is None,
        else the pipeline's shared value, else the default. A stage that needs a source and names
        none reads the stage before it (as the web app's ``input_stage`` defaults to it)."""
        shared = {name: getattr(self, name) for name in SHARED_FIELDS}
        values = {**shared, **self.stages[index].overrides()}
        stage_type = values.get("stage_type", StageParams.model_fields["stage_type"].default)
        named = any(values.get(name) is not None for name in StageParams.SOURCE_FIELDS)
        if index > 0 and not named and STAGES[stage_type].needs_source:
            values["src_stage"] = index - 1
        return StageParams.model_validate(values)

    @model_validator(mode="after")
    def _check_stages(self) -> Self:
        lines: list[str] = []
        effective: dict[int, StageParams] = {}
        for index in range(len(self.stages)):
            try:
                effective[index] = params = self.stage_params(index)
            except ValidationError as error:
                lines.extend(self._stage_lines(index, error))
                continue
            problems = self._source_problems(index, params, effective)
            lines.extend(self._stage_line(index, problem) for problem in problems)
        if lines:
            raise problems_error(lines)
        return self

    def _stage_prefix(self, index: int) -> str:
        stage_type = self.stages[index].stage_type
        kind = stage_type if stage_type is not None else StageParams.model_fields["stage_type"].default
        return f"stage {index} ({kind}) · "

    def _stage_line(self, index: int, problem: Problem) -> str:
        field, message = problem
        label = field_label(PipelineStage, STAGE_ONLY_RENAMES.get(field, field))
        return f"{self._stage_prefix(index)}{label}: {message}"

    def _stage_lines(self, index: int, error: ValidationError) -> list[str]:
        problems = rule_problems(error)
        if problems is not None:
            return [self._stage_line(index, problem) for problem in problems]
        return [
            f"{self._stage_prefix(index)}{'.'.join(str(part) for part in detail['loc'])}: {detail['msg']}"
            for detail in error.errors()
        ]

    def _source_problems(self, index: int, params: StageParams, effective: dict[int, StageParams]) -> list[Problem]:
        if params.src_stage is None:
            return []
        if params.src_stage >= index:
            earlier = {0: "this is the first stage", 1: "the only earlier one is 0"}.get(index, f"the earlier ones are 0 to {index - 1}")
            message = f"{params.src_stage} is not an earlier stage (stages are numbered from 0; {earlier})"
            return [("src_stage", message)]
        if resolve_source(params).kind != "stage":
            return []
        source = effective.get(params.src_stage)
        if source is None:
            return []  # a broken source stage has its own lines
        source_batch = source.batch_size
        if params.resume_sample_index >= source_batch:
            return [
                ("resume_sample_index", f"{params.resume_sample_index} is out of range: stage {params.src_stage} "
                 f"makes {source_batch} sample(s), numbered from 0")
            ]  # fmt: skip
        return []


class GenerateRequest(StageFields):
    """Custom mode: one stage, optionally resumed from a stored latent.

    ``init_latent_id`` is the stage's latent source (a pipeline stage's ``src_latent_id``): the latent to
    partially denoise from ``t_start``, a checkpoint to resume exactly, or an audio task's source.
    """

    SOURCE_FIELDS: ClassVar[tuple[str, ...]] = ("init_latent_id", "src_audio_id")
    FORM_FIRST: ClassVar[tuple[str, ...]] = (
        "stage_type", "init_latent_id", "src_audio_id", "t_start", "audio_cover_strength", "seed",
    )  # fmt: skip

    init_latent_id: LatentIdField = Field(
        None,
        title="Init latent",
        description="A stored latent ID to resume from (a checkpoint resumes exactly; a final latent is denoised "
        "again from Denoise (t_start)), or an audio task's source; Unset = start from noise (or the source audio).",
    )


class SimpleRequest(LmSampling, RunSettings):
    """Simple mode: a description that the backend's planner turns into a custom request (on the
    acestep backend the 5 Hz LM, sampled with the ``lm_*`` settings; the embedded planner ignores them)."""

    FORM_FIRST: ClassVar[tuple[str, ...]] = ("description", "duration", "seed", "instrumental", "vocal_language")

    description: str = Field(
        "", max_length=2000, title="Description", description="What the music should be, in plain words."
    )
    instrumental: InstrumentalField = False
    vocal_language: VocalLanguageField = "unknown"
    duration: DurationField = None
    seed: SeedField = -1
