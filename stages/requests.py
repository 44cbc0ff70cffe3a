"""Requests of the three modes (custom, simple, pipeline) and the one rule for picking a stage's source.

A pipeline stage stores only what it overrides: every field is ``None`` ("inherit the pipeline's shared
value, else the default") unless set. Fields whose effective value may itself be unset (``bpm``,
``duration``, ``track_name``, ...) also take ``""`` = "explicitly unset", so a stage can unset a value the
pipeline shares; text fields take ``""`` as the empty text. ``PipelineStage`` is derived field by field
from ``StageParams``, so both always have the same fields, bounds and descriptions.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, Optional, Union, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator
from pydantic.fields import FieldInfo
from typing_extensions import Self

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

_RENAMED_TITLES: dict[str, str] = {"denoise": "Denoise (t_start)"}


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
    inherit = "the pipeline's shared value" if name in SHARED_FIELDS else "the default"
    note = f"In a stage: None = inherit {inherit}" + ('; "" = explicitly None.' if _nullable(info) else ".")
    stage_name = STAGE_ONLY_RENAMES.get(name, name)
    title = _RENAMED_TITLES.get(stage_name, info.title)
    return annotation, Field(None, title=title, description=f"{info.description} {note}")


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
    pipeline-only display settings. ``denoise`` is the pipeline's name for ``t_start``."""

    preview: bool = Field(False, title="Preview", description="Decode this stage's result to audio too.")

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

    stages: list[PipelineStage] = Field(
        min_length=1, max_length=MAX_STAGES, title="Stages", description="The stages, run in order."
    )

    def stage_params(self, index: int) -> StageParams:
        """The effective StageParams of stage ``index``: each field from the stage unless it is None,
        else the pipeline's shared value, else the default."""
        shared = {name: getattr(self, name) for name in SHARED_FIELDS}
        return StageParams.model_validate({**shared, **self.stages[index].overrides()})

    @model_validator(mode="after")
    def _check_stages(self) -> Self:
        problems: list[str] = []
        for index in range(len(self.stages)):
            try:
                params = self.stage_params(index)
            except ValidationError as error:
                problems.extend(_describe(index, error))
                continue
            problems.extend(self._source_problems(index, params))
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def _source_problems(self, index: int, params: StageParams) -> list[str]:
        if params.src_stage is None:
            return []
        if params.src_stage >= index:
            earlier = f"0..{index - 1}" if index > 0 else "none: it is the first stage"
            return [f"stages[{index}].src_stage: {params.src_stage} is not an earlier stage (earlier: {earlier})"]
        if resolve_source(params).kind != "stage":
            return []
        source_batch = self.stage_params(params.src_stage).batch_size
        if params.resume_sample_index >= source_batch:
            return [
                f"stages[{index}].resume_sample_index: {params.resume_sample_index} out of range: stage "
                f"{params.src_stage} makes {source_batch} sample(s)"
            ]
        return []


def _describe(index: int, error: ValidationError) -> list[str]:
    lines = []
    for detail in error.errors():
        where = "".join(f".{part}" for part in detail["loc"])
        lines.append(f"stages[{index}]{where}: {detail['msg']}")
    return lines


class GenerateRequest(StageFields):
    """Custom mode: one stage, optionally resumed from a stored latent.

    ``init_latent_id`` is the stage's latent source (a pipeline stage's ``src_latent_id``): the latent to
    partially denoise from ``t_start``, a checkpoint to resume exactly, or an audio task's source.
    """

    SOURCE_FIELDS: ClassVar[tuple[str, ...]] = ("init_latent_id", "src_audio_id")

    init_latent_id: LatentIdField = Field(
        None,
        title="Init latent",
        description="Stored latent to resume from (a checkpoint resumes exactly), or an audio task's source; "
        "None = start from noise (or src_audio_id).",
    )


class SimpleRequest(LmSampling, RunSettings):
    """Simple mode: a description that the backend's planner turns into a custom request (on the
    acestep backend the 5 Hz LM, sampled with the ``lm_*`` settings; the embedded planner ignores them)."""

    description: str = Field(
        "", max_length=2000, title="Description", description="What the music should be, in plain words."
    )
    instrumental: InstrumentalField = False
    vocal_language: VocalLanguageField = "unknown"
    duration: DurationField = None
    seed: SeedField = -1
