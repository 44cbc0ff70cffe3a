"""Lossless conversions between the modes: simple -> custom, custom -> pipeline stage or one-stage
pipeline ("add to pipeline"), pipeline stage -> custom ("send to custom"), stored latent -> custom
("restore").

``StageParams`` is the pivot: every conversion goes through it, so a field added to ``StageParams``
travels through all of them without touching this module. The only renames are the latent source
(custom ``init_latent_id`` = stage ``src_latent_id``) and the start level (custom ``t_start`` = stage
``denoise``).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from pydantic import ValidationError

from prefect_acestep.stages.errors import IncompatibleLatent, InvalidStageRequest, LatentCorrupt
from prefect_acestep.stages.params import StageParams
from prefect_acestep.stages.records import LatentRecord
from prefect_acestep.stages.requests import (
    EMPTYABLE_FIELDS,
    SHARED_FIELDS,
    STAGE_ONLY_RENAMES,
    GenerateRequest,
    PipelineRequest,
    PipelineStage,
    SimpleRequest,
    resolve_source,
)

_NO_STAGE_LATENTS: Mapping[int, str] = MappingProxyType({})


def custom_to_params(request: GenerateRequest) -> StageParams:
    """The effective params of a custom request: its init latent is the stage's latent source."""
    values = request.model_dump(exclude={"init_latent_id"})
    return StageParams.model_validate({**values, "src_latent_id": request.init_latent_id})


def params_to_custom(
    params: StageParams, *, stage_latent_ids: Mapping[int, str] = _NO_STAGE_LATENTS
) -> GenerateRequest:
    """A custom request that runs ``params``.

    Custom mode has no earlier stages, so a ``src_stage`` source becomes the latent that stage produced,
    looked up in ``stage_latent_ids`` (stage index -> latent ID). A ``src_stage`` shadowed by a
    ``src_latent_id`` is dropped: by precedence it never fed the stage.
    """
    source = resolve_source(params)
    init_latent_id = params.src_latent_id
    if source.kind == "stage":
        if source.value not in stage_latent_ids:
            raise InvalidStageRequest(
                f"src_stage: custom mode needs the latent ID that stage {source.value} produced; "
                f"pass it in stage_latent_ids (given for stages {sorted(stage_latent_ids)})"
            )
        init_latent_id = stage_latent_ids[source.value]
    values = params.model_dump(exclude={"src_latent_id", "src_stage"})
    return GenerateRequest.model_validate({**values, "init_latent_id": init_latent_id})


def params_to_stage(params: StageParams, *, preview: bool = False) -> PipelineStage:
    """A pipeline stage that sets every field itself, so it runs the same in any pipeline: unset
    values are written as "" (explicitly None), never as None (which would inherit)."""
    values = {}
    for name in StageParams.model_fields:
        stage_name = STAGE_ONLY_RENAMES.get(name, name)
        value = getattr(params, name)
        values[stage_name] = "" if value is None and stage_name in EMPTYABLE_FIELDS else value
    return PipelineStage.model_validate({**values, "preview": preview})


def custom_to_pipeline(request: GenerateRequest, *, preview: bool = False) -> PipelineRequest:
    """"Add to pipeline" as a whole request: a one-stage pipeline that runs ``request``, to extend
    with more stages. The conditioning and run settings become the pipeline's shared values, and
    the stage sets only what differs from the defaults (its source latent included), so stages added
    after it inherit the same music."""
    params = custom_to_params(request)
    shared = {name: getattr(params, name) for name in SHARED_FIELDS}
    full = params_to_stage(params, preview=preview)
    defaults = PipelineStage.model_validate(params_to_stage(StageParams()).model_dump())
    own = {
        name: value
        for name, value in full.model_dump().items()
        if name not in SHARED_FIELDS and value != getattr(defaults, name)
    }
    return PipelineRequest.model_validate({**shared, "stages": [own]})


def simple_to_custom(request: SimpleRequest) -> GenerateRequest:
    """The description becomes the caption; instrumental and vocal language keep their names."""
    values = request.model_dump(exclude={"description"})
    return GenerateRequest.model_validate({**values, "caption": request.description})


def custom_to_stage(request: GenerateRequest, *, preview: bool = False) -> PipelineStage:
    """"Add to pipeline": the custom request as a stage, its init latent carried as ``src_latent_id``.
    ``preview`` is pipeline-only (custom mode always decodes), so the caller chooses it."""
    return params_to_stage(custom_to_params(request), preview=preview)


def stage_to_custom(
    pipeline: PipelineRequest, index: int, *, stage_latent_ids: Mapping[int, str] = _NO_STAGE_LATENTS
) -> GenerateRequest:
    """"Send to custom": the effective params of stage ``index`` (shared values filled in) as a custom
    request; see ``params_to_custom`` for ``stage_latent_ids``."""
    return params_to_custom(pipeline.stage_params(index), stage_latent_ids=stage_latent_ids)


def restore(record: LatentRecord, *, sample_index: int = 0) -> GenerateRequest:
    """"Restore": the params a stored latent was made with, as a custom request on that latent.

    The request selects one sample: batch size 1 with that sample's drawn seed, which reproduces it
    (item i of a batch equals a batch-1 run with seed ``seeds[i]``). A checkpoint restores with
    ``t_start`` None, so the run continues at the checkpoint's own step; a final latent keeps the
    recorded ``t_start``.
    """
    if not 0 <= sample_index < record.batch_size:
        raise IncompatibleLatent(record.id, "resume_sample_index", f"0..{record.batch_size - 1}", sample_index)
    try:
        params = StageParams.model_validate(record.params)
    except ValidationError as error:
        raise InvalidStageRequest(
            f"latent {record.id}: its recorded params are not valid StageParams: {error}"
        ) from error
    seed = params.seed
    if record.seeds:
        if len(record.seeds) != record.batch_size:
            raise LatentCorrupt(record.id, f"{len(record.seeds)} seeds recorded for a batch of {record.batch_size}")
        seed = record.seeds[sample_index]
    update = {
        "src_latent_id": record.id,
        "src_stage": None,
        "resume_sample_index": sample_index,
        "batch_size": 1,
        "seed": seed,
    }
    if record.is_checkpoint:
        update["t_start"] = None
    return params_to_custom(StageParams.model_validate({**params.model_dump(), **update}))
