"""Conversions between modes: property tests that custom -> stage -> custom and stage -> custom -> stage
keep every field and latent reference, plus simple -> custom and restore from a stored latent."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from prefect_acestep.stages.conversions import (
    custom_to_params,
    custom_to_stage,
    params_to_custom,
    params_to_stage,
    restore,
    simple_to_custom,
    stage_to_custom,
)
from prefect_acestep.stages.engine.repaint import REPAINT_MODES
from prefect_acestep.stages.engine.variants import VARIANTS
from prefect_acestep.stages.errors import IncompatibleLatent, InvalidStageRequest, LatentCorrupt
from prefect_acestep.stages.geometry import MAX_DURATION_S
from prefect_acestep.stages.params import (
    MAX_SEED,
    TIME_SIGNATURES,
    VOCAL_LANGUAGES,
    StageParams,
)
from prefect_acestep.stages.planning.codes import CODEBOOK_SIZE, format_audio_codes
from prefect_acestep.stages.records import LatentRecord
from prefect_acestep.stages.vocabulary import KEYS
from prefect_acestep.stages.requests import (
    SHARED_FIELDS,
    GenerateRequest,
    PipelineRequest,
    PipelineStage,
    SimpleRequest,
    resolve_source,
)
from prefect_acestep.stages.vocabulary import STAGES, TRACK_NAMES, runs

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])

latent_ids = st.text(alphabet="abcdef0123456789-", min_size=1, max_size=12)
texts = st.text(max_size=20)
finite = {"allow_nan": False, "allow_infinity": False}


def maybe(strategy: st.SearchStrategy) -> st.SearchStrategy:
    return st.none() | strategy


@st.composite
def shared_values(draw) -> dict[str, Any]:
    """Every shared (pipeline-level) field, drawn."""
    values = {
        "caption": draw(texts),
        "lyrics": draw(texts),
        "instrumental": draw(st.booleans()),
        "vocal_language": draw(st.sampled_from(VOCAL_LANGUAGES)),
        "bpm": draw(maybe(st.integers(30, 300))),
        "keyscale": draw(st.sampled_from(("",) + KEYS)),
        "timesignature": draw(st.sampled_from(("",) + TIME_SIGNATURES)),
        "duration": draw(maybe(st.floats(0.04, MAX_DURATION_S, **finite))),
        "variant": draw(st.sampled_from(sorted(VARIANTS))),
        "backend": draw(st.sampled_from(["embedded", "acestep", "other_1"])),
        "batch_size": draw(st.integers(1, 4)),
        "thinking": draw(st.booleans()),
        "use_cot_metas": draw(maybe(st.booleans())),
        "use_cot_caption": draw(maybe(st.booleans())),
        "use_cot_language": draw(maybe(st.booleans())),
        "lm_temperature": draw(st.floats(0.0, 2.0, **finite)),
        "lm_cfg_scale": draw(st.floats(1.0, 10.0, **finite)),
        "lm_top_k": draw(st.integers(0, 1000)),
        "lm_top_p": draw(st.floats(0.0, 1.0, exclude_min=True, **finite)),
        "lm_negative_prompt": draw(texts),
    }
    assert set(values) == set(SHARED_FIELDS)
    return values


@st.composite
def custom_requests(draw) -> GenerateRequest:
    """Valid custom requests with every field drawn (the assert below keeps the list complete)."""
    values = draw(shared_values())
    variant = VARIANTS[values["variant"]]
    kinds = [kind for kind, stage in STAGES.items() if runs(variant.name, stage.task)]
    stage_type = draw(st.sampled_from(kinds))
    init_latent_id = draw(maybe(latent_ids))
    src_audio_id = draw(maybe(latent_ids))
    if STAGES[stage_type].needs_source and init_latent_id is None and src_audio_id is None:
        init_latent_id = draw(latent_ids)
    has_source = init_latent_id is not None or src_audio_id is not None
    t_start = draw(maybe(st.floats(0.0, 1.0, exclude_min=True, **finite)))
    if t_start is not None and t_start < 1.0 and not has_source:
        t_start = 1.0
    track_name = draw(maybe(st.sampled_from(TRACK_NAMES)))
    if STAGES[stage_type].tracks == "one" and track_name is None:
        track_name = draw(st.sampled_from(TRACK_NAMES))
    inference_steps = draw(maybe(st.integers(1, 200)))
    timesteps = draw(maybe(st.lists(st.floats(0.0, 1.0, **finite), min_size=1, max_size=10)))
    steps = inference_steps if inference_steps is not None else variant.default_steps
    top = steps - 1 if timesteps is None else 300
    # A window must fit a clip whose duration is set; without one it may reach outside the source.
    fits = STAGES[stage_type].window != "none" and values["duration"] is not None
    reach = values["duration"] if fits else MAX_DURATION_S
    repainting_start = draw(st.floats(0.0 if fits else -MAX_DURATION_S, reach, exclude_max=True, **finite))
    cfg_start = draw(st.floats(0.0, 1.0, **finite))
    codes = draw(st.lists(st.integers(0, CODEBOOK_SIZE - 1), max_size=5)) if stage_type in ("generate", "refine") else []
    if codes:
        values["duration"] = None  # a duration must match the codes' count; here the codes set the length
    values.update(
        audio_code_string=format_audio_codes(codes),
        stage_type=stage_type,
        track_name=track_name,
        complete_track_classes=draw(st.lists(st.sampled_from(TRACK_NAMES), max_size=3)),
        repainting_start=repainting_start,
        repainting_end=draw(maybe(st.floats(repainting_start, reach, exclude_min=True, **finite))),
        audio_cover_strength=draw(st.floats(0.0, 1.0, **finite)),
        repaint_mode=draw(st.sampled_from(REPAINT_MODES)),
        repaint_strength=draw(st.floats(0.0, 1.0, **finite)),
        vae_encode=draw(st.sampled_from(["mean", "sample"])),
        src_audio_id=src_audio_id,
        resume_sample_index=draw(st.integers(0, 3)),
        inference_steps=inference_steps,
        shift=draw(maybe(st.floats(1.0, 5.0, **finite))),
        seed=draw(st.integers(-1, MAX_SEED)),
        infer_method=draw(st.sampled_from(["ode", "sde"])),
        scheduler=draw(maybe(st.sampled_from(["linear", "discrete", "continuous"]))),
        timesteps=timesteps,
        guidance_scale=draw(maybe(st.floats(1.0, 20.0, **finite))),
        allow_cross_variant=draw(st.booleans()),
        use_adg=draw(st.booleans()),
        cfg_interval_start=cfg_start,
        cfg_interval_end=draw(st.floats(cfg_start, 1.0, **finite)),
        t_start=t_start,
        checkpoint_steps=draw(st.lists(st.integers(0, top), unique=True, max_size=4)),
        init_latent_id=init_latent_id,
    )
    assert set(values) == set(GenerateRequest.model_fields)
    return GenerateRequest(**values)


@st.composite
def pipelines(draw) -> PipelineRequest:
    """Valid pipelines whose stages override some fields, inherit others, and chain by src_stage."""
    stages = []
    for index in range(draw(st.integers(1, 4))):
        stage = custom_to_stage(draw(custom_requests()), preview=draw(st.booleans())).model_dump()
        for name in draw(st.sets(st.sampled_from(sorted(SHARED_FIELDS)))):
            stage[name] = None
        for name in draw(st.sets(st.sampled_from(["caption", "lyrics", "bpm", "duration", "keyscale"]))):
            stage[name] = ""
        if index > 0 and draw(st.booleans()):
            stage["src_stage"] = draw(st.integers(0, index - 1))
            stage["resume_sample_index"] = 0
            if draw(st.booleans()):
                stage["src_latent_id"] = ""
        stages.append(stage)
    try:
        return PipelineRequest(**draw(shared_values()), stages=stages)
    except ValidationError:
        assume(False)
        raise


def stage_latent_ids(pipeline: PipelineRequest) -> dict[int, str]:
    return {index: f"made-by-stage-{index}" for index in range(len(pipeline.stages))}


# --- custom -> stage -> custom ------------------------------------------------------------------


@PROPERTY
@given(custom_requests())
def test_custom_to_params_to_custom_is_identity(request):
    params = custom_to_params(request)
    assert params.src_latent_id == request.init_latent_id
    assert params_to_custom(params) == request


@PROPERTY
@given(custom_requests(), shared_values(), st.booleans())
def test_custom_to_stage_to_custom_keeps_every_field(request, shared, preview):
    stage = custom_to_stage(request, preview=preview)
    assert None not in stage.model_dump().values()  # explicit everywhere: inherits nothing
    expected_latent = "" if request.init_latent_id is None else request.init_latent_id
    assert (stage.src_latent_id, stage.preview) == (expected_latent, preview)
    pipeline = PipelineRequest(**shared, stages=[stage])
    assert stage_to_custom(pipeline, 0) == request


@PROPERTY
@given(custom_requests(), custom_requests())
def test_added_stage_runs_the_same_at_any_position(first, second):
    stage = custom_to_stage(second)
    pipeline = PipelineRequest(stages=[custom_to_stage(first), stage])
    assert stage_to_custom(pipeline, 1) == second


# --- stage -> custom -> stage ------------------------------------------------------------------


@PROPERTY
@given(pipelines())
def test_stage_to_custom_to_stage_keeps_every_field_and_latent_reference(pipeline):
    ids = stage_latent_ids(pipeline)
    for index, stage in enumerate(pipeline.stages):
        effective = pipeline.stage_params(index)
        source = resolve_source(effective)
        custom = stage_to_custom(pipeline, index, stage_latent_ids=ids)
        back = custom_to_stage(custom, preview=stage.preview)

        # the latent reference: the stage's own latent, or the latent its source stage made
        expected_latent = {"latent": effective.src_latent_id, "stage": ids.get(source.value)}.get(source.kind)
        assert custom.init_latent_id == expected_latent
        assert back.src_latent_id == ("" if expected_latent is None else expected_latent)

        # every field the stage set explicitly comes back unchanged
        renamed_source = {"src_stage", "src_latent_id"} if source.kind == "stage" else {"src_stage"}
        for name, value in stage:
            if value is not None and name not in renamed_source:
                assert getattr(back, name) == value, name

        # in its pipeline, the converted stage runs with the same effective params
        stages = [s.model_dump() for s in pipeline.stages]
        stages[index] = back.model_dump()
        rebuilt = PipelineRequest(**pipeline.model_dump(exclude={"stages"}), stages=stages)
        expected = effective.model_copy(update={"src_stage": None, "src_latent_id": expected_latent})
        assert rebuilt.stage_params(index) == expected
        assert stage_to_custom(rebuilt, index, stage_latent_ids=ids) == custom


def test_send_to_custom_needs_the_source_stage_latent():
    pipeline = PipelineRequest(stages=[{}, {"stage_type": "refine", "src_stage": 0, "denoise": 0.5}])
    with pytest.raises(InvalidStageRequest, match="src_stage"):
        stage_to_custom(pipeline, 1)
    assert stage_to_custom(pipeline, 1, stage_latent_ids={0: "L0"}).init_latent_id == "L0"


def test_shadowed_src_stage_is_dropped_not_used():
    pipeline = PipelineRequest(stages=[{}, {"stage_type": "refine", "src_stage": 0, "src_latent_id": "mine"}])
    custom = stage_to_custom(pipeline, 1, stage_latent_ids={0: "L0"})
    assert custom.init_latent_id == "mine"


def test_stage_inherits_shared_values_in_custom_mode():
    pipeline = PipelineRequest(caption="shared", bpm=100, variant="base", stages=[{"caption": ""}, {"bpm": ""}])
    first, second = (stage_to_custom(pipeline, index) for index in range(2))
    assert (first.caption, first.bpm, first.variant) == ("", 100, "base")
    assert (second.caption, second.bpm, second.variant) == ("shared", None, "base")


# --- simple -> custom ---------------------------------------------------------------------------


@PROPERTY
@given(
    st.text(max_size=50),
    st.booleans(),
    st.sampled_from(VOCAL_LANGUAGES),
    maybe(st.floats(1.0, MAX_DURATION_S, **finite)),
    st.integers(-1, MAX_SEED),
    st.sampled_from(sorted(VARIANTS)),
    st.integers(1, 8),
)
def test_simple_to_custom_maps_description_instrumental_and_language(
    description, instrumental, language, duration, seed, variant, batch_size
):
    simple = SimpleRequest(
        description=description,
        instrumental=instrumental,
        vocal_language=language,
        duration=duration,
        seed=seed,
        variant=variant,
        batch_size=batch_size,
    )
    custom = simple_to_custom(simple)
    assert (custom.caption, custom.instrumental, custom.vocal_language) == (description, instrumental, language)
    assert (custom.duration, custom.seed, custom.variant, custom.batch_size) == (duration, seed, variant, batch_size)
    untouched = set(GenerateRequest.model_fields) - set(SimpleRequest.model_fields) - {"caption"}
    assert custom.model_dump(include=untouched) == GenerateRequest().model_dump(include=untouched)


# --- restore ------------------------------------------------------------------------------------


def record_of(params: StageParams, **fields) -> LatentRecord:
    """A record as the store hands it back (through its JSON metadata)."""
    record = LatentRecord(id="rec-1", params=params.model_dump(mode="json"), stage_type=params.stage_type, **fields)
    return LatentRecord.model_validate_json(record.model_dump_json())


@PROPERTY
@given(custom_requests(), st.data())
def test_restore_brings_back_the_params_on_the_latent(request, data):
    params = custom_to_params(request)
    seeds = data.draw(st.lists(st.integers(0, MAX_SEED), min_size=params.batch_size, max_size=params.batch_size))
    is_checkpoint = data.draw(st.booleans())
    sample = data.draw(st.integers(0, params.batch_size - 1))
    record = record_of(params, seeds=seeds, batch_size=params.batch_size, is_checkpoint=is_checkpoint)
    restored = restore(record, sample_index=sample)

    assert restored.init_latent_id == "rec-1"
    assert (restored.resume_sample_index, restored.seed, restored.batch_size) == (sample, seeds[sample], 1)
    assert restored.t_start == (None if is_checkpoint else request.t_start)
    changed = {"init_latent_id", "resume_sample_index", "seed", "batch_size", "t_start"}
    assert restored.model_dump(exclude=changed) == request.model_dump(exclude=changed)
    assert restore(LatentRecord.model_validate_json(record.model_dump_json()), sample_index=sample) == restored


def test_restore_replaces_a_pipeline_source_with_the_latent_itself():
    params = StageParams(stage_type="refine", src_stage=0, src_audio_id="audio-1", t_start=0.4)
    restored = restore(record_of(params, seeds=[7], batch_size=1))
    assert (restored.init_latent_id, restored.src_audio_id, restored.t_start) == ("rec-1", "audio-1", 0.4)


def test_restore_of_an_imported_latent_has_default_params():
    record = LatentRecord(id="imported", stage_type="import")
    restored = restore(record)
    assert restored == GenerateRequest(init_latent_id="imported", batch_size=1)


@pytest.mark.parametrize("sample_index", [-1, 2, 5])
def test_restore_sample_index_out_of_range(sample_index):
    record = record_of(StageParams(batch_size=2), seeds=[1, 2], batch_size=2)
    with pytest.raises(IncompatibleLatent, match="resume_sample_index") as caught:
        restore(record, sample_index=sample_index)
    assert "rec-1" in str(caught.value)


def test_restore_rejects_params_that_are_not_stage_params():
    record = LatentRecord(id="odd", params={"stage_type": "remix"})
    with pytest.raises(InvalidStageRequest, match="odd") as caught:
        restore(record)
    assert "stage_type" in str(caught.value)


def test_restore_rejects_seeds_that_do_not_match_the_batch():
    record = record_of(StageParams(batch_size=2), seeds=[1], batch_size=2)
    with pytest.raises(LatentCorrupt, match="rec-1"):
        restore(record, sample_index=1)


def test_restore_then_add_to_pipeline_carries_the_latent():
    params = StageParams(stage_type="cover", src_audio_id="song", audio_cover_strength=0.6, caption="jazz")
    stage = custom_to_stage(restore(record_of(params, seeds=[3], batch_size=1)))
    pipeline = PipelineRequest(caption="other", stages=[stage])
    effective = pipeline.stage_params(0)
    assert (effective.src_latent_id, effective.caption, effective.audio_cover_strength) == ("rec-1", "jazz", 0.6)
    assert resolve_source(effective).value == "rec-1"


def test_params_to_stage_is_explicit_and_validates_in_a_pipeline():
    params = StageParams(stage_type="repaint", src_latent_id="x", repainting_start=3.0)
    stage = params_to_stage(params, preview=True)
    assert isinstance(stage, PipelineStage) and stage.repainting_end == "" and stage.denoise == ""
    assert PipelineRequest(bpm=99, stages=[stage]).stage_params(0) == params
