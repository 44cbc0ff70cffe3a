"""Stage models: validation errors that name their field, the None/"" merge, source precedence,
legacy requests, and the form metadata (descriptions, bounds) that the Prefect UI renders."""

from __future__ import annotations

import ast
import itertools
from pathlib import Path
from typing import get_args

import pytest
from pydantic import BaseModel, ValidationError

from prefect_acestep.stages.backends.acestep.prompt import instruction, lyrics_text, prompt_text
from prefect_acestep.stages.backends.identity import BackendIdentity
from prefect_acestep.stages.engine.variants import VARIANTS
from prefect_acestep.stages.params import StageParams
from prefect_acestep.stages.records import LatentRecord
from prefect_acestep.stages.requests import (
    SHARED_FIELDS,
    GenerateRequest,
    PipelineRequest,
    PipelineStage,
    SimpleRequest,
    StageSource,
    resolve_source,
)
from prefect_acestep.stages.results import CheckpointRef, StageResult
from prefect_acestep.stages.vocabulary import (
    KEYS,
    MODEL_VARIANTS,
    STAGE_KINDS,
    TRACK_NAMES,
    ModelVariant,
    StageKind,
    StageType,
)

MY_MODULES = ["params.py", "requests.py", "conversions.py", "results.py"]


def error_text(model: type[BaseModel], **fields) -> str:
    with pytest.raises(ValidationError) as caught:
        model(**fields)
    return str(caught.value)


def pipeline_error(**fields) -> str:
    return error_text(PipelineRequest, **fields)


# --- validation errors name their field -------------------------------------------------------


@pytest.mark.parametrize("model", [StageParams, GenerateRequest, PipelineStage])
def test_unknown_stage_type(model):
    assert "stage_type" in error_text(model, stage_type="remix")


def test_unknown_stage_type_under_its_legacy_name():
    assert "stage_type" in pipeline_error(stages=[{"type": "remix"}])


def test_refine_without_source():
    assert "src_latent_id" in error_text(StageParams, stage_type="refine")
    assert "init_latent_id" in error_text(GenerateRequest, stage_type="refine")
    message = pipeline_error(stages=[{"stage_type": "refine"}])  # the first stage has none before it
    assert "stage 0 (refine) · Stage type (stage_type): 'refine' needs a source" in message
    assert "src_latent_id" in message


@pytest.mark.parametrize("stage_type", ["cover", "repaint", "extract", "lego", "complete"])
def test_audio_stage_without_source(stage_type):
    fields = {"stage_type": stage_type, "variant": "base", "track_name": "drums"}
    message = error_text(StageParams, **fields)
    assert f"Stage type (stage_type): '{stage_type}' needs a source" in message and "src_audio_id" in message
    StageParams(**fields, src_audio_id="imported")  # the same stage with a source is valid


@pytest.mark.parametrize("stage_type", ["extract", "lego"])
def test_track_stage_without_track_name(stage_type):
    message = error_text(StageParams, stage_type=stage_type, variant="base", src_latent_id="x")
    assert "Track (track_name): required for stage type" in message


def test_track_names_outside_the_list():
    assert "track_name" in error_text(StageParams, track_name="kazoo")
    assert "complete_track_classes" in error_text(StageParams, complete_track_classes=["drums", "kazoo"])
    assert "track_name" in error_text(PipelineStage, track_name="kazoo")


@pytest.mark.parametrize("t_start", [0.0, -0.5, 1.0001, 2])
def test_t_start_outside_unit_interval(t_start):
    assert "t_start" in error_text(StageParams, t_start=t_start, src_latent_id="x")
    assert "t_start" in error_text(GenerateRequest, t_start=t_start, init_latent_id="x")
    assert "denoise" in error_text(PipelineStage, denoise=t_start)


def test_t_start_bounds_are_inclusive_of_one():
    assert StageParams(t_start=1.0).t_start == 1.0
    assert StageParams(t_start=1e-6, src_latent_id="x").t_start == 1e-6


def test_partial_t_start_needs_a_source():
    assert "Denoise (t_start): 0.5 < 1 partially denoises" in error_text(GenerateRequest, t_start=0.5)


def test_negative_sample_index():
    assert "resume_sample_index" in error_text(StageParams, resume_sample_index=-1)
    assert "resume_sample_index" in error_text(PipelineStage, resume_sample_index=-1)


def test_sample_index_beyond_the_source_stage_batch():
    stages = [{"batch_size": 2}, {"stage_type": "refine", "src_stage": 0, "resume_sample_index": 2}]
    message = pipeline_error(stages=stages)
    assert "stage 1 (refine) · Source sample (resume_sample_index): 2 is out of range" in message
    assert "makes 2 sample(s)" in message
    stages[1]["resume_sample_index"] = 1
    assert PipelineRequest(stages=stages).stage_params(1).resume_sample_index == 1


def test_sample_index_is_not_checked_against_a_stage_that_is_not_the_source():
    stages = [{}, {"stage_type": "refine", "src_stage": 0, "src_latent_id": "x", "resume_sample_index": 3}]
    assert PipelineRequest(stages=stages).stage_params(1).resume_sample_index == 3


def test_negative_checkpoint_step():
    assert "checkpoint_steps" in error_text(StageParams, checkpoint_steps=[2, -1])


@pytest.mark.parametrize(
    ("variant", "steps", "last_valid"),
    [("turbo", None, 7), ("turbo-shift3", None, 7), ("base", None, 31), ("sft", None, 49), ("turbo", 20, 19)],
)
def test_checkpoint_step_must_be_below_the_inference_steps(variant, steps, last_valid):
    params = StageParams(variant=variant, inference_steps=steps, checkpoint_steps=[last_valid])
    assert params.checkpoint_steps == [last_valid]
    assert params.planned_steps == last_valid + 1
    message = error_text(StageParams, variant=variant, inference_steps=steps, checkpoint_steps=[0, last_valid + 1])
    assert "checkpoint_steps" in message and f"allow 0..{last_valid}" in message


def test_checkpoint_step_range_uses_the_inherited_variant():
    stages = [{"checkpoint_steps": [20]}]
    assert PipelineRequest(variant="base", stages=stages).stage_params(0).checkpoint_steps == [20]
    assert "stage 0 (generate) · Checkpoint steps (checkpoint_steps)" in pipeline_error(variant="turbo", stages=stages)


def test_checkpoint_steps_are_sorted_and_distinct():
    assert StageParams(checkpoint_steps=[5, 1, 3]).checkpoint_steps == [1, 3, 5]
    assert "repeated" in error_text(StageParams, checkpoint_steps=[3, 3])


@pytest.mark.parametrize(("index", "src_stage"), [(0, 0), (1, 1), (1, 2), (2, 5)])
def test_src_stage_must_point_to_an_earlier_stage(index, src_stage):
    stages = [{} for _ in range(max(index + 1, 3))]
    stages[index] = {"stage_type": "refine", "src_stage": src_stage}
    assert f"stage {index} (refine) · Source stage (src_stage): {src_stage} is not an earlier stage" in pipeline_error(
        stages=stages
    )


def test_src_stage_that_points_back_is_valid():
    request = PipelineRequest(stages=[{}, {}, {"stage_type": "refine", "src_stage": 1, "denoise": 0.4}])
    assert resolve_source(request.stage_params(2)) == StageSource(kind="stage", value=1)


def test_src_stage_is_validated_even_when_shadowed():
    assert "src_stage" in pipeline_error(stages=[{"src_latent_id": "x", "src_stage": 0}])


@pytest.mark.parametrize(("start", "end"), [(10.0, 10.0), (10.0, 5.0), (-3.0, -4.0)])
def test_repaint_end_not_after_start(start, end):
    fields = {"stage_type": "repaint", "src_latent_id": "x", "repainting_start": start, "repainting_end": end}
    assert "repainting_end" in error_text(StageParams, **fields)


def test_repaint_end_none_or_legacy_minus_one_means_end_of_source():
    assert StageParams(repainting_start=30.0, repainting_end=-1).repainting_end is None
    assert StageParams(repainting_start=-5.0, repainting_end=2.5).repainting_end == 2.5


def test_task_must_be_supported_by_the_variant():
    message = error_text(StageParams, stage_type="extract", track_name="drums", src_latent_id="x", variant="turbo")
    assert "variant 'turbo'" in message
    StageParams(stage_type="extract", track_name="drums", src_latent_id="x", variant="base")


def test_cfg_interval_order():
    assert "cfg_interval_end" in error_text(StageParams, cfg_interval_start=0.6, cfg_interval_end=0.4)


def test_instruction_cannot_be_set():
    assert "instruction" in error_text(GenerateRequest, instruction="Do something else:")
    assert "instruction" in error_text(PipelineStage, instruction="Do something else:")


@pytest.mark.parametrize("model", [StageParams, GenerateRequest, PipelineStage, PipelineRequest, SimpleRequest])
def test_unknown_field_is_named(model):
    assert "guidence_scale" in error_text(model, guidence_scale=3.0)


def test_empty_latent_id_is_rejected_where_it_cannot_mean_unset():
    assert "src_latent_id" in error_text(StageParams, src_latent_id="")
    assert "init_latent_id" in error_text(GenerateRequest, init_latent_id="")


def test_several_rule_violations_are_reported_together():
    message = error_text(StageParams, stage_type="lego", variant="turbo", repainting_start=5, repainting_end=1)
    for part in ("needs a source", "track_name", "variant 'turbo'", "repainting_end"):
        assert part in message


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"bpm": 29}, "bpm"),
        ({"bpm": 301}, "bpm"),
        ({"keyscale": "H major"}, "keyscale"),
        ({"timesignature": "5"}, "timesignature"),
        ({"vocal_language": "klingon"}, "vocal_language"),
        ({"duration": 0}, "duration"),
        ({"duration": 601}, "duration"),
        ({"batch_size": 0}, "batch_size"),
        ({"seed": -2}, "seed"),
        ({"inference_steps": 0}, "inference_steps"),
        ({"guidance_scale": 0.5}, "guidance_scale"),
        ({"audio_cover_strength": 1.5}, "audio_cover_strength"),
        ({"timesteps": [1.2]}, "timesteps"),
        ({"infer_method": "euler"}, "infer_method"),
        ({"scheduler": "cosine"}, "scheduler"),
        ({"variant": "xl"}, "variant"),
        ({"backend": "../evil"}, "backend"),
        ({"lm_temperature": 2.5}, "lm_temperature"),
        ({"lm_cfg_scale": 0.5}, "lm_cfg_scale"),
        ({"lm_top_k": -1}, "lm_top_k"),
        ({"lm_top_p": 0.0}, "lm_top_p"),
        ({"audio_code_string": "<|audio_code_64000|>"}, "audio_code_string"),
        ({"audio_code_string": "<|audio_code_1|> oops"}, "audio_code_string"),
    ],
)
def test_field_bounds(fields, needle):
    assert needle in error_text(StageParams, **fields)
    assert needle in error_text(PipelineStage, **fields)


# --- merge: None inherits, "" is explicitly empty ----------------------------------------------

SHARED_SAMPLE = {
    "caption": "shared caption",
    "lyrics": "[verse] shared",
    "instrumental": True,
    "vocal_language": "de",
    "bpm": 90,
    "keyscale": "D minor",
    "timesignature": "3",
    "duration": 30.0,
    "variant": "base",
    "backend": "other-backend",
    "batch_size": 3,
    "thinking": True,
    "use_cot_metas": False,
    "use_cot_caption": True,
    "use_cot_language": False,
    "lm_temperature": 0.5,
    "lm_cfg_scale": 3.0,
    "lm_top_k": 20,
    "lm_top_p": 0.8,
    "lm_negative_prompt": "noise",
}
STAGE_SAMPLE = {
    "caption": "stage caption",
    "lyrics": "[chorus] stage",
    "instrumental": False,
    "vocal_language": "ja",
    "bpm": 140,
    "keyscale": "F# major",
    "timesignature": "6",
    "duration": 12.5,
    "variant": "sft",
    "backend": "embedded",
    "batch_size": 2,
    "thinking": False,
    "use_cot_metas": True,
    "use_cot_caption": False,
    "use_cot_language": True,
    "lm_temperature": 1.2,
    "lm_cfg_scale": 1.5,
    "lm_top_k": 50,
    "lm_top_p": 0.95,
    "lm_negative_prompt": "harsh",
}


def test_samples_cover_every_shared_field():
    assert set(SHARED_SAMPLE) == set(STAGE_SAMPLE) == set(SHARED_FIELDS)
    defaults = PipelineRequest(stages=[{}])
    for name in SHARED_FIELDS:
        assert SHARED_SAMPLE[name] != getattr(defaults, name), name
        assert STAGE_SAMPLE[name] != SHARED_SAMPLE[name], name


def test_none_inherits_every_shared_field():
    params = PipelineRequest(**SHARED_SAMPLE, stages=[{}]).stage_params(0)
    for name, value in SHARED_SAMPLE.items():
        assert getattr(params, name) == value, name


def test_stage_value_overrides_every_shared_field():
    params = PipelineRequest(**SHARED_SAMPLE, stages=[STAGE_SAMPLE]).stage_params(0)
    for name, value in STAGE_SAMPLE.items():
        assert getattr(params, name) == value, name


@pytest.mark.parametrize("name", ["caption", "lyrics", "keyscale", "timesignature"])
def test_empty_string_stays_empty_for_text_fields(name):
    params = PipelineRequest(**SHARED_SAMPLE, stages=[{name: ""}]).stage_params(0)
    assert getattr(params, name) == ""


@pytest.mark.parametrize("name", ["bpm", "duration"])
def test_empty_string_unsets_a_shared_optional_value(name):
    params = PipelineRequest(**SHARED_SAMPLE, stages=[{name: ""}]).stage_params(0)
    assert getattr(params, name) is None


def test_stage_only_fields_inherit_their_defaults():
    params = PipelineRequest(stages=[{}]).stage_params(0)
    assert params == StageParams()


def test_denoise_is_the_pipeline_name_of_t_start():
    request = PipelineRequest(stages=[{}, {"stage_type": "refine", "src_stage": 0, "denoise": 0.35}])
    assert request.stage_params(1).t_start == 0.35
    assert request.stage_params(0).t_start is None


def test_each_stage_merges_independently():
    request = PipelineRequest(caption="shared", stages=[{"caption": ""}, {}, {"caption": "own"}])
    assert [request.stage_params(i).caption for i in range(3)] == ["", "shared", "own"]


def test_no_or_fallbacks_in_the_model_modules():
    """`x or y` treats "" as unset, where "" means explicitly empty. These modules use no `or` at all."""
    root = Path(__file__).resolve().parents[1] / "stages"
    for name in MY_MODULES:
        tree = ast.parse((root / name).read_text())
        ors = [node.lineno for node in ast.walk(tree) if isinstance(node, ast.BoolOp) and isinstance(node.op, ast.Or)]
        assert ors == [], f"{name}: `or` at lines {ors}"


# --- source precedence --------------------------------------------------------------------------


@pytest.mark.parametrize(("latent", "stage", "audio"), list(itertools.product([None, "L"], [None, 0], [None, "A"])))
def test_source_precedence(latent, stage, audio):
    params = StageParams(src_latent_id=latent, src_stage=stage, src_audio_id=audio)
    expected = (
        StageSource(kind="latent", value="L")
        if latent is not None
        else StageSource(kind="stage", value=0)
        if stage is not None
        else StageSource(kind="audio", value="A")
        if audio is not None
        else StageSource(kind="noise")
    )
    assert resolve_source(params) == expected


@pytest.mark.parametrize(
    "fields", [{"kind": "stage", "value": "L"}, {"kind": "latent", "value": 3}, {"kind": "noise", "value": "x"}]
)
def test_stage_source_value_must_match_its_kind(fields):
    assert "value" in error_text(StageSource, **fields)


# --- backward compatibility ----------------------------------------------------------------------


def test_old_pipeline_request_validates():
    old = {
        "caption": "synthwave",
        "lyrics": "",
        "instrumental": False,
        "vocal_language": "unknown",
        "bpm": None,
        "keyscale": "",
        "timesignature": "",
        "duration": -1.0,
        "batch_size": 1,
        "stages": [
            {"type": "generate", "steps": 8, "shift": 3.0, "denoise": 1.0, "seed": -1, "infer_method": "ode",
             "scheduler": None, "guidance_scale": 1.0, "use_adg": False, "cfg_interval_start": 0.0,
             "cfg_interval_end": 1.0, "timesteps": None, "checkpoint_step": 4, "preview": True,
             "model": "acestep-v15-turbo"},
            {"type": "refine", "input_stage": 0, "denoise": 0.6, "caption": None, "lyrics": None},
            {"type": "repaint", "src_stage": 1, "repainting_start": 5.0, "repainting_end": -1,
             "audio_cover_strength": 1.0, "checkpoint_step": None, "src_latent_id": None},
        ],
    }  # fmt: skip
    request = PipelineRequest.model_validate(old)
    first, second, third = (request.stage_params(i) for i in range(3))
    assert request.duration is None
    assert (first.inference_steps, first.checkpoint_steps, first.variant) == (8, [4], "turbo")
    assert request.stages[0].preview is True
    assert (second.stage_type, second.src_stage, second.t_start, second.caption) == ("refine", 0, 0.6, "synthwave")
    assert (third.repainting_end, third.checkpoint_steps) == (None, [])


def test_old_generate_request_validates():
    old = {"caption": "jazz", "lyrics": "", "bpm": 100, "keyscale": "", "timesignature": "", "duration": -1,
           "repainting_start": 0.0, "repainting_end": -1, "audio_cover_strength": 1.0, "inference_steps": 8,
           "guidance_scale": 7.0, "seed": -1, "use_adg": False, "cfg_interval_start": 0.0,
           "cfg_interval_end": 1.0, "shift": 1.0, "infer_method": "ode", "timesteps": None, "batch_size": 2,
           "src_audio_id": None, "checkpoint_step": 3}  # fmt: skip
    request = GenerateRequest.model_validate(old)
    assert (request.duration, request.repainting_end, request.checkpoint_steps) == (None, None, [3])
    assert (request.init_latent_id, request.t_start, request.resume_sample_index) == (None, None, 0)


def test_legacy_and_new_name_together_is_an_error():
    message = error_text(StageParams, checkpoint_step=3, checkpoint_steps=[4])
    assert "checkpoint_step" in message and "not both" in message


# --- derived conditioning -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, "Fill the audio semantic mask based on the given conditions:"),
        ({"stage_type": "refine", "src_latent_id": "x"}, "Fill the audio semantic mask based on the given conditions:"),
        ({"stage_type": "cover", "src_latent_id": "x"}, "Generate audio semantic tokens based on the given conditions:"),
        ({"stage_type": "repaint", "src_latent_id": "x"}, "Repaint the mask area based on the given conditions:"),
        ({"stage_type": "extract", "src_latent_id": "x", "track_name": "backing_vocals", "variant": "base"},
         "Extract the BACKING_VOCALS track from the audio:"),
        ({"stage_type": "lego", "src_latent_id": "x", "track_name": "guitar", "variant": "base"},
         "Generate the GUITAR track based on the audio context:"),
        ({"stage_type": "complete", "src_latent_id": "x", "complete_track_classes": ["drums", "bass"],
          "variant": "base"}, "Complete the input track with DRUMS | BASS:"),
        ({"stage_type": "complete", "src_latent_id": "x", "variant": "base"}, "Complete the input track:"),
    ],
)  # fmt: skip
def test_instruction_is_derived(fields, expected):
    assert instruction(StageParams(**fields).condition_spec()) == expected


def test_condition_spec_carries_the_conditioning():
    params = StageParams(
        caption="c", lyrics="l", vocal_language="fr", bpm=128, keyscale="", timesignature="4", duration=42.0
    )
    spec = params.condition_spec()
    assert (spec.task, spec.caption, spec.lyrics, spec.vocal_language) == ("text2music", "c", "l", "fr")
    assert (spec.bpm, spec.keyscale, spec.timesignature, spec.duration_s) == (128, None, "4", 42.0)
    assert "- keyscale: N/A" in prompt_text(spec)
    assert "[Instrumental]" in lyrics_text(StageParams(instrumental=True, lyrics="words").condition_spec())


def test_track_names_only_reach_stages_that_name_tracks():
    params = StageParams(stage_type="cover", src_latent_id="x", track_name="drums")
    assert params.condition_spec().track_names == ()


# --- vocabularies stay in step with the rest of the code ------------------------------------------


def test_variant_names_match_the_engine_table():
    assert set(get_args(ModelVariant)) == set(VARIANTS)


def test_stage_kinds_are_record_stage_types():
    assert set(get_args(StageKind)) == set(get_args(StageType)) - {"import"}


def test_request_fields_take_the_vocabulary():
    fields = StageParams.model_fields
    assert get_args(fields["stage_type"].annotation) == STAGE_KINDS
    assert get_args(fields["variant"].annotation) == MODEL_VARIANTS
    assert set(get_args(LatentRecord.model_fields["stage_type"].annotation)) == {*STAGE_KINDS, "import"}


def test_keyscales_and_tracks():
    assert len(KEYS) == len(set(KEYS)) == 24 and "Bb major" in KEYS and "F# minor" in KEYS
    assert StageParams(track_name="vocals").track_name == "vocals"
    assert len(TRACK_NAMES) == 12


# --- form metadata (the Prefect UI renders these) --------------------------------------------------

FORM_MODELS = [StageParams, PipelineStage, PipelineRequest, GenerateRequest, SimpleRequest, StageResult, CheckpointRef]


@pytest.mark.parametrize("model", FORM_MODELS)
def test_every_field_has_a_description(model):
    missing = [name for name, info in model.model_fields.items() if not info.description]
    assert missing == []


@pytest.mark.parametrize("model", [StageParams, PipelineStage, PipelineRequest, GenerateRequest, SimpleRequest])
def test_every_number_has_bounds(model):
    schema = model.model_json_schema()
    props = schema["properties"]
    for name, prop in props.items():
        branches = prop.get("anyOf", [prop])
        for branch in branches:
            if branch.get("type") in ("integer", "number"):
                assert {"minimum", "exclusiveMinimum"} & set(branch), f"{name} has no lower bound"
                assert {"maximum", "exclusiveMaximum"} & set(branch), f"{name} has no upper bound"


def test_prefect_builds_a_run_form_from_the_requests():
    from prefect.utilities.callables import parameter_schema

    def flow_entry(pipeline: PipelineRequest, custom: GenerateRequest, simple: SimpleRequest) -> None:
        """Stand-in for a flow signature."""

    schema = parameter_schema(flow_entry).model_dump()
    stage = schema["definitions"]["PipelineStage"]["properties"]
    assert stage["denoise"]["title"] == "Denoise (t_start)"
    assert set(stage) == set(PipelineStage.model_fields)
    assert "Inherit = the pipeline's shared value" in stage["caption"]["description"]


# --- results --------------------------------------------------------------------------------------

BACKEND = BackendIdentity(name="embedded", variant="turbo", latent_space="embedded-v1", weights_digest="d")


def make_result(**overrides) -> StageResult:
    fields = {
        "latent_id": "L",
        "sample_index": 1,
        "seed": 42,
        "checkpoints": [{"step": 2, "latent_id": "C", "t": 0.9}, {"step": 5, "latent_id": "C2", "t": 0.5}],
        "params": StageParams(batch_size=2, checkpoint_steps=[2, 5]),
        "backend": BACKEND,
        "total_steps": 8,
        "start_step": 0,
        "t_start": 1.0,
        "timings": {"diffusion": 0.25},
    }
    return StageResult(**{**fields, **overrides})


def test_stage_result_round_trips_through_json():
    result = make_result(lm_metadata={"bpm": 120})
    assert StageResult.model_validate_json(result.model_dump_json()) == result


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"seed": -1}, "seed"),
        ({"sample_index": 2}, "sample_index"),
        ({"start_step": 8}, "start_step"),
        ({"start_step": 3}, "checkpoints"),
        ({"checkpoints": [{"step": 5, "latent_id": "a", "t": 0.5}, {"step": 2, "latent_id": "b", "t": 0.9}]}, "checkpoints"),
        ({"checkpoints": [{"step": 8, "latent_id": "a", "t": 0.1}]}, "checkpoints"),
        ({"timings": {"diffusion": -0.1}}, "timings"),
        ({"latent_id": ""}, "latent_id"),
    ],
)  # fmt: skip
def test_stage_result_rejects(overrides, needle):
    with pytest.raises(ValidationError) as caught:
        make_result(**overrides)
    assert needle in str(caught.value)


@pytest.mark.parametrize(
    ("model", "field", "value", "reason"),
    [
        (StageParams, "lyrics", "la " * 20_000, "at most 6000 characters"),  # 60 KB: failed only at decode
        (StageParams, "caption", "c" * 2_001, "at most 2000 characters"),
        (StageParams, "caption", "warm piano \ud800", "unicode"),  # failed in the text encoder, after diffusion
        (StageParams, "lyrics", "[verse]\udfff", "unicode"),
        (GenerateRequest, "lyrics", "x" * 512 * 1024, "at most 6000 characters"),  # Prefect's 422 before
    ],
)
def test_free_text_is_bounded_and_must_be_text_at_validation(model, field: str, value: str, reason: str) -> None:
    """Issue 14, item 7: caption and lyrics had no bound, and a lone surrogate passed validation."""
    with pytest.raises(ValidationError, match=reason) as caught:
        model.model_validate({field: value})
    assert caught.value.errors()[0]["loc"] == (field,)
    with pytest.raises(ValidationError, match=reason):  # the same in a pipeline stage's override
        PipelineRequest.model_validate({"stages": [{"stage_type": "generate", field: value}]})
    model.model_validate({field: "[verse] ünïcödé ✓ 音楽 " * 10})
