"""The request models as a musician meets them in a run form, and the words a rejected request is
told back in: one spelling per key, the first fields of a stage, named choices for fields that may
be empty, ranges from the bounds, one line per problem naming the stage index and the field's
title, a refine with no source reading the stage before it, a repaint window that must fit the clip,
and "add to pipeline" as a whole request."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from pydantic import ValidationError

from prefect_acestep.stages.conversions import custom_to_params, custom_to_pipeline
from prefect_acestep.stages.errors import InvalidStageRequest
from prefect_acestep.stages.forms import problem_lines
from prefect_acestep.stages.params import StageParams
from prefect_acestep.stages.requests import GenerateRequest, PipelineRequest, PipelineStage, SimpleRequest
from prefect_acestep.stages.runner import run_stage
from prefect_acestep.stages.store import LatentStore
from prefect_acestep.stages.vocabulary import ACESTEP_KEYSCALES, KEYS, key_parts, normalise_keyscale
from test_conversions import custom_requests

# --- keys --------------------------------------------------------------------------------------


def test_one_spelling_per_key_in_the_form() -> None:
    assert len(KEYS) == 24
    assert {key_parts(key) for key in KEYS} == {(tonic, mode) for tonic in range(12) for mode in ("major", "minor")}
    options = StageParams.model_json_schema()["properties"]["keyscale"]["enum"]
    assert options == ["", *KEYS]
    # the key signature with the fewest accidentals, in ASCII
    assert {"Db major", "F# major", "Ab major", "Bb major", "C# minor", "Eb minor", "G# minor", "Bb minor"} <= set(KEYS)
    assert not {"Gb major", "C# major", "D# minor", "A# minor", "B♭ major"} & set(KEYS)


@pytest.mark.parametrize(
    ("typed", "stored"),
    [
        ("F# minor", "F# minor"), ("f# MINOR", "F# minor"), ("Gb major", "F# major"), ("G♭ major", "F# major"),
        ("F♯ min", "F# minor"), ("bb maj", "Bb major"), ("A#m", "Bb minor"), ("c#m", "C# minor"),
        ("Db minor", "C# minor"), ("E# minor", "F minor"), ("Cb major", "B major"), ("B♭ major", "Bb major"),
        ("  d   minor ", "D minor"), ("", ""),
    ],
)  # fmt: skip
def test_any_spelling_and_case_is_accepted_and_stored_in_the_one_spelling(typed: str, stored: str) -> None:
    assert normalise_keyscale(typed) == stored
    assert StageParams(keyscale=typed).keyscale == stored
    assert PipelineRequest(keyscale=typed, stages=[{"keyscale": typed}]).stage_params(0).keyscale == stored


def test_something_that_is_not_a_key_is_refused_with_the_expected_form() -> None:
    with pytest.raises(ValidationError, match="'H major' is not a key: expected a note and major or minor"):
        StageParams(keyscale="H major")
    with pytest.raises(ValueError, match="is not a key"):
        normalise_keyscale("C")  # a key names its mode


def test_every_acestep_spelling_names_one_of_the_keys() -> None:
    """What ACE-Step's 5 Hz LM may write (its 70 spellings) always lands on one of the 24 keys."""
    assert {normalise_keyscale(spelling) for spelling in ACESTEP_KEYSCALES} == set(KEYS)


def test_old_spellings_in_recorded_params_still_restore() -> None:
    """Latents recorded before the one spelling (ACE-Step's 70 names) validate and normalise."""
    assert StageParams.model_validate({"keyscale": "B♭ major"}).keyscale == "Bb major"


# --- the form: order, choices, ranges ------------------------------------------------------------


def _stage_schema() -> dict:
    return PipelineRequest.model_json_schema()["$defs"]["PipelineStage"]


def test_a_stage_opens_with_what_a_person_decides_first_and_the_rest_follows() -> None:
    properties = list(_stage_schema()["properties"])
    assert properties[:7] == list(PipelineStage.FORM_FIRST) == [
        "stage_type", "src_stage", "src_latent_id", "denoise", "audio_cover_strength", "seed", "preview",
    ]  # fmt: skip
    rest = [name for name in PipelineStage.model_fields if name not in PipelineStage.FORM_FIRST]
    assert properties[7:] == rest  # declaration order: a field added later lands here without edits
    assert set(properties) == set(PipelineStage.model_fields)


def test_other_forms_open_with_their_first_fields() -> None:
    custom = list(GenerateRequest.model_json_schema()["properties"])
    assert custom[:6] == ["stage_type", "init_latent_id", "src_audio_id", "t_start", "audio_cover_strength", "seed"]
    assert list(SimpleRequest.model_json_schema()["properties"])[0] == "description"
    pipeline = list(PipelineRequest.model_json_schema()["properties"])
    assert pipeline.index("stages") == pipeline.index("duration") + 1  # the music, then the stages


def _choices(prop: dict) -> list[str]:
    return [member.get("title") for member in prop["anyOf"]]


def test_fields_that_may_be_empty_offer_named_choices() -> None:
    stage = _stage_schema()["properties"]
    assert _choices(stage["bpm"]) == ["Inherit", "Set", "Unset"]  # shared and nullable
    assert _choices(stage["caption"]) == ["Inherit", "Set"]  # "" is the empty text, not a choice
    assert _choices(stage["src_stage"]) == ["Inherit", "Set", "Unset"]
    top = PipelineRequest.model_json_schema()["properties"]
    assert _choices(top["bpm"]) == ["Set", "Unset"] and _choices(top["duration"]) == ["Set", "Unset"]
    custom = GenerateRequest.model_json_schema()["properties"]
    assert _choices(custom["init_latent_id"]) == ["Set", "Unset"]
    for schema in (_stage_schema(), PipelineRequest.model_json_schema(), GenerateRequest.model_json_schema()):
        for name, prop in schema["properties"].items():
            for member in prop.get("anyOf", []):
                assert member.get("title") in {"Inherit", "Set", "Unset"}, (name, member)


def test_the_flat_request_json_is_unchanged_by_the_form() -> None:
    """Titles and order live in the schema only: a request file that worked keeps working."""
    stage = {"stage_type": "refine", "src_stage": 0, "denoise": 0.4, "bpm": "", "seed": 3, "preview": True}
    request = PipelineRequest.model_validate({"bpm": 90, "stages": [{}, stage]})
    assert request.stages[1].model_dump(exclude_defaults=True) == stage
    assert request.stage_params(1).bpm is None and request.stage_params(0).bpm == 90


def test_descriptions_state_the_ranges_from_the_bounds() -> None:
    properties = PipelineRequest.model_json_schema()["properties"]
    assert properties["bpm"]["description"].endswith("Range: 30 to 300.")
    assert properties["duration"]["description"].endswith("Range: above 0, up to 600.")
    stage = _stage_schema()["properties"]
    assert stage["seed"]["description"].endswith("Range: -1 to 4294967295.")
    assert stage["denoise"]["description"].endswith("Range: above 0, up to 1.")
    assert "stages are numbered from 0" in stage["src_stage"]["description"]


# --- problems, in the form's words ----------------------------------------------------------------


def _lines(model, **fields) -> list[str]:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(fields)
    return problem_lines(caught.value, model)


def test_every_problem_of_a_pipeline_is_one_line_naming_stage_index_and_field_title() -> None:
    lines = _lines(
        PipelineRequest,
        bpm=400,
        duration=4,
        stages=[
            {"stage_type": "generate", "seed": "x"},
            {"stage_type": "refine", "src_stage": 3, "denoise": 0.5},
            {"stage_type": "repaint", "repainting_start": 2, "repainting_end": 6},
        ],
    )
    assert lines == [
        "BPM: Input should be less than or equal to 300",
        "stage 0 · Seed: Input should be a valid integer, unable to parse string as an integer",
    ]  # field errors come first; the rules need valid fields
    lines = _lines(
        PipelineRequest,
        duration=4,
        stages=[
            {"stage_type": "generate", "inference_steps": 4, "checkpoint_steps": [6]},
            {"stage_type": "refine", "src_stage": 3, "denoise": 0.5},
            {"stage_type": "repaint", "src_stage": 1, "repainting_start": 2, "repainting_end": 6},
        ],
    )
    assert lines == [
        "stage 0 (generate) · Checkpoint steps (checkpoint_steps): [6] out of range: 4 inference steps allow 0..3",
        "stage 1 (refine) · Source stage (src_stage): 3 is not an earlier stage (stages are numbered from 0; the "
        "only earlier one is 0)",
        "stage 2 (repaint) · Repaint end (s) (repainting_end): 6 s is past the end of the clip: its Duration (s) is "
        "4 s. Shorten the window, or set the duration to 6 s to extend the clip (outpainting)",
    ]


def test_a_stage_that_depends_on_a_broken_stage_keeps_its_own_index() -> None:
    """Stage 1 is broken and stage 2 reads it: stage 2's own problem still names stage 2."""
    lines = _lines(
        PipelineRequest,
        stages=[
            {"batch_size": 2},
            {"stage_type": "extract", "variant": "base", "src_stage": 0},  # needs a track
            {"stage_type": "refine", "src_stage": 1, "src_latent_id": "L", "denoise": 0.4, "checkpoint_steps": [9]},
        ],
    )
    assert [line.split(":")[0] for line in lines] == [
        "stage 1 (extract) · Track (track_name)",
        "stage 2 (refine) · Checkpoint steps (checkpoint_steps)",
    ]


def test_a_field_error_is_one_line_whichever_choices_the_field_offers() -> None:
    lines = _lines(PipelineRequest, stages=[{}, {"track_name": "kazoo", "bpm": 400, "keyscale": "H major",
                                                 "checkpoint_steps": [-1]}])  # fmt: skip
    assert lines == [
        "stage 1 · BPM: Input should be less than or equal to 300",
        "stage 1 · Key / scale (keyscale): 'H major' is not a key: expected a note and major or minor, e.g. 'C major' "
        "or 'F# minor'",
        "stage 1 · Track (track_name): Input should be 'woodwinds', 'brass', 'fx', 'synth', 'strings', 'percussion', "
        "'keyboard', 'guitar', 'bass', 'drums', 'backing_vocals' or 'vocals'",
        "stage 1 · Checkpoint steps (checkpoint_steps) · item 0: Input should be greater than or equal to 0",
    ]


def test_a_rule_broken_in_a_custom_request_names_the_field_title() -> None:
    assert _lines(GenerateRequest, stage_type="refine") == [
        "Stage type (stage_type): 'refine' needs a source: set Init latent (init_latent_id) or Source audio "
        "(src_audio_id)"
    ]


# --- a stage with no source reads the stage before it ---------------------------------------------


def test_a_refine_without_a_source_refines_the_stage_before_it() -> None:
    request = PipelineRequest(stages=[{}, {"stage_type": "refine", "denoise": 0.5}, {"stage_type": "cover"}])
    assert [request.stage_params(i).src_stage for i in range(3)] == [None, 0, 1]


def test_an_explicit_source_still_wins() -> None:
    request = PipelineRequest(
        stages=[{}, {}, {"stage_type": "refine", "src_stage": 0}, {"stage_type": "refine", "src_latent_id": "L"}]
    )
    assert request.stage_params(2).src_stage == 0
    assert (request.stage_params(3).src_stage, request.stage_params(3).src_latent_id) == (None, "L")


def test_a_generate_without_a_source_stays_a_generate_from_noise() -> None:
    assert PipelineRequest(stages=[{}, {"seed": 2}]).stage_params(1).src_stage is None


# --- the repaint window fits the clip ---------------------------------------------------------


def test_a_window_past_a_shortened_duration_is_an_error_naming_both_numbers() -> None:
    """The demo's 2-6 s window after the user shortens the clip to 4 s."""
    message = str(_lines(StageParams, stage_type="repaint", src_latent_id="x", duration=4, repainting_start=2.0,
                         repainting_end=6.0))  # fmt: skip
    assert "6 s is past the end of the clip: its Duration (s) is 4 s" in message
    assert "set the duration to 6 s to extend the clip (outpainting)" in message
    message = str(_lines(StageParams, stage_type="repaint", src_latent_id="x", duration=4, repainting_start=5.0))
    assert "5 s is at or past the end of the clip: its Duration (s) is 4 s" in message
    assert StageParams(stage_type="repaint", src_latent_id="x", duration=6, repainting_start=2, repainting_end=6)


def _source(store: LatentStore, seconds: float) -> str:
    [result] = run_stage(StageParams(caption="piano", keyscale="C major", bpm=120, duration=seconds, seed=1), store)
    return result.latent_id


def test_a_window_past_the_source_is_refused_unless_the_duration_asks_for_the_longer_clip(tmp_path) -> None:
    store = LatentStore(tmp_path / "store", ttl_hours=24)
    source = _source(store, 2.0)
    window = dict(stage_type="repaint", src_latent_id=source, repainting_start=1.0, repainting_end=3.0, seed=2)
    with pytest.raises(InvalidStageRequest, match=r"window 1-3 s reaches outside the source's 2 s; .*set the duration "
                       r"to 3 s"):  # fmt: skip
        run_stage(StageParams(**window), store)
    with pytest.raises(InvalidStageRequest, match=r"duration 5 s: a 2 s source with this repainting window makes a 3 s"):
        run_stage(StageParams(**window, duration=5.0), store)
    [extended] = run_stage(StageParams(**window, duration=3.0), store)  # outpainting, asked for
    assert store.record(extended.latent_id).shape[1] == 75
    [inside] = run_stage(StageParams(**{**window, "repainting_end": 1.5}), store)
    assert store.record(inside.latent_id).shape[1] == 50


# --- add to pipeline as a whole request -------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(custom_requests())
def test_add_to_pipeline_runs_the_same_stage_and_shares_the_music(request: GenerateRequest) -> None:
    pipeline = custom_to_pipeline(request)
    assert pipeline.stage_params(0) == custom_to_params(request)
    assert (pipeline.caption, pipeline.keyscale, pipeline.bpm) == (request.caption, request.keyscale, request.bpm)
    assert pipeline.stages[0].caption is None  # inherited: stages added after it share the music
