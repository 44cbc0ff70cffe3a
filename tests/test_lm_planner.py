"""The 5 Hz LM planner on a tiny random Qwen3 LM built on disk (CPU, no download), and how plans
meet the stages: upstream's routing of LM codes into the DiT, stored plans on latents, and runs
from a latent (resume, refine, replay) that never call the LM again.

The tiny LM has upstream's special tokens and all 64000 audio-code tokens and goes through the same
loader as a real ``acestep-5Hz-lm-*`` folder. Its random weights write nonsense; the constrained
decoding must still make every plan well formed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers", reason="the acestep extra is not installed: pip install 'prefect-acestep[acestep]'")

from prefect_acestep.stages.backends.acestep import AceStepBackend  # noqa: E402
from prefect_acestep.stages.planning.lm.constraint import CodesConstraint  # noqa: E402
from prefect_acestep.stages.planning.lm.cot import format_cot, parse_cot  # noqa: E402
from prefect_acestep.stages.planning.lm.planner import AceStepLmPlanner  # noqa: E402
from prefect_acestep.stages.planning.lm.tiny import build_tiny_lm  # noqa: E402
from prefect_acestep.stages.planning.lm.vocabulary import LmVocabulary  # noqa: E402
from prefect_acestep.stages.backends.acestep.prompt import prompt_text  # noqa: E402
from prefect_acestep.stages.backends.acestep.tiny import build_tiny_checkpoint  # noqa: E402
from prefect_acestep.stages.backends.protocol import ConditionSpec  # noqa: E402
from prefect_acestep.stages.conversions import custom_to_params, restore  # noqa: E402
from prefect_acestep.stages.engine.context import build_task_context  # noqa: E402
from prefect_acestep.stages.errors import InvalidStageRequest, PlannerUnavailable  # noqa: E402
from prefect_acestep.stages.params import TIME_SIGNATURES, VOCAL_LANGUAGES, StageParams  # noqa: E402
from prefect_acestep.stages.vocabulary import ACESTEP_KEYSCALES  # noqa: E402
from prefect_acestep.stages.planning.codes import CODEBOOK_SIZE, code_count, format_audio_codes  # noqa: E402
from prefect_acestep.stages.planning.protocol import Plan, PlannerIdentity, PlanRequest  # noqa: E402
from prefect_acestep.stages.planning.registry import planner_for, planner_identity, register_planner  # noqa: E402
from prefect_acestep.stages.planning.stage import apply_plan, plan_request  # noqa: E402
from prefect_acestep.stages.runner import run_stage  # noqa: E402
from prefect_acestep.stages.store import LatentStore  # noqa: E402

LM_FIELDS = {"bpm", "duration", "keyscale", "language", "timesignature"}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_lm(tmp_path_factory.mktemp("lm"))


@pytest.fixture(scope="module")
def lm(lm_dir: Path) -> AceStepLmPlanner:
    return AceStepLmPlanner(lm_dir=str(lm_dir), device="cpu")


@pytest.fixture(scope="module")
def dit(tmp_path_factory: pytest.TempPathFactory) -> AceStepBackend:
    return AceStepBackend(str(build_tiny_checkpoint(tmp_path_factory.mktemp("dit") / "turbo", "turbo")), device="cpu")


@pytest.fixture
def acestep_planner(lm: AceStepLmPlanner):
    """The acestep backend's planner in this process is the tiny LM (as a worker with
    ACESTEP_LM_DIR set would build it); the entry point's factory is put back afterwards."""
    register_planner("acestep", lambda: lm)
    yield lm
    register_planner("acestep", AceStepLmPlanner)


def request(**fields) -> PlanRequest:
    values = dict(caption="calm piano", lyrics="[Instrumental]", metas=True, caption_rewrite=False,
                  language=True, codes=True, seed=3, duration=10.0)  # fmt: skip
    return PlanRequest(**{**values, **fields})


# --- loading ---------------------------------------------------------------------------------------


def test_the_lm_loads_from_its_folder_with_an_identity(lm: AceStepLmPlanner, lm_dir: Path, tmp_path: Path):
    assert lm.identity.name == "acestep-5hz-lm" and lm.identity.variant == lm_dir.name
    assert len(lm.identity.weights_digest) == 64
    copy = AceStepLmPlanner(lm_dir=str(shutil.copytree(lm_dir, tmp_path / lm_dir.name)), device="cpu")
    assert copy.identity == lm.identity  # the digest is of the content, not of the path
    assert lm.model.device.type == "cpu" and lm.model.dtype == torch.float32


def test_the_identity_is_read_from_the_folder_without_building_the_lm(lm, lm_dir, monkeypatch):
    monkeypatch.setenv("ACESTEP_LM_DIR", str(lm_dir))
    register_planner("acestep", AceStepLmPlanner)
    assert AceStepLmPlanner.identity_for() == planner_identity("acestep") == lm.identity
    monkeypatch.setenv("ACESTEP_LM_DIR", str(lm_dir.parent / "gone"))
    register_planner("acestep", AceStepLmPlanner)
    with pytest.raises(PlannerUnavailable, match="gone does not exist"):
        planner_identity("acestep")


def test_a_missing_lm_folder_is_a_typed_error_naming_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.delenv("ACESTEP_LM_DIR", raising=False)
    with pytest.raises(PlannerUnavailable, match="ACESTEP_LM_DIR"):
        AceStepLmPlanner(device="cpu")
    monkeypatch.setenv("ACESTEP_LM_DIR", str(tmp_path / "acestep-5Hz-lm-1.7B"))
    with pytest.raises(PlannerUnavailable, match="acestep-5Hz-lm-1.7B does not exist"):
        AceStepLmPlanner(device="cpu")


def test_a_folder_that_is_not_an_ace_step_lm_is_refused(lm_dir: Path, tmp_path: Path):
    other = shutil.copytree(lm_dir, tmp_path / "not-qwen3")
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "model_type": "llama"}))
    with pytest.raises(PlannerUnavailable, match="'llama' model, not a Qwen3"):
        AceStepLmPlanner(lm_dir=str(other), device="cpu")


# --- constrained decoding ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "sampling",
    [
        dict(seed=1),
        dict(seed=2, lm_temperature=1.6, lm_top_p=1.0, lm_cfg_scale=1.0),
        dict(seed=3, lm_top_k=40, lm_cfg_scale=3.5, lm_negative_prompt="harsh noise"),
        dict(seed=4, lm_temperature=0.0, duration=None),
    ],
)
def test_random_weights_still_write_a_well_formed_plan(lm: AceStepLmPlanner, sampling: dict):
    plan = lm.plan(request(**sampling))
    block = plan.reasoning
    assert block.startswith("<think>\n") and block.endswith("</think>")
    lines = block.split("\n")[1:-1]
    assert [line.split(":", 1)[0] for line in lines] == ["bpm", "duration", "keyscale", "language", "timesignature"]
    found = parse_cot(block)
    assert set(found) == LM_FIELDS and found == plan.metadata
    assert 30 <= found["bpm"] <= 300 and 10 <= found["duration"] <= 600
    assert found["keyscale"] in ACESTEP_KEYSCALES and found["language"] in VOCAL_LANGUAGES
    assert found["timesignature"] in TIME_SIGNATURES
    duration = sampling.get("duration", 10.0)
    expected = code_count(duration if duration is not None else found["duration"])
    assert len(plan.audio_codes) == expected
    assert all(0 <= code < CODEBOOK_SIZE for code in plan.audio_codes)


def test_the_caption_is_rewritten_as_one_yaml_value(lm: AceStepLmPlanner):
    plan = lm.plan(request(caption_rewrite=True, codes=False, lm_cfg_scale=1.0, seed=5))
    assert set(plan.metadata) == LM_FIELDS | {"caption"}
    assert [line.split(":", 1)[0] for line in plan.reasoning.split("\n") if line[:1] not in (" ", "\t")][1:-1] == [
        "bpm", "caption", "duration", "keyscale", "language", "timesignature"
    ]  # fmt: skip
    assert "<|audio_code_" not in plan.metadata["caption"] and "`" not in plan.metadata["caption"]


def test_the_users_metas_are_written_as_given(lm: AceStepLmPlanner):
    plan = lm.plan(request(bpm=77, keyscale="E minor", timesignature="3", duration=15.5, vocal_language="de"))
    assert plan.metadata == {"bpm": 77, "keyscale": "E minor", "timesignature": "3", "duration": 15, "language": "de"}
    assert len(plan.audio_codes) == code_count(15.5) == 77


def test_the_code_section_allows_only_audio_codes_then_the_end(lm: AceStepLmPlanner):
    vocab = LmVocabulary(lm.tokenizer)
    constraint = CodesConstraint(vocab, count=2, prompt_length=3)
    scores = torch.randn(1, lm.model.config.vocab_size)
    allowed = torch.isfinite(constraint(torch.zeros(1, 4, dtype=torch.long), scores.clone()))[0]
    assert set(allowed.nonzero().flatten().tolist()) == set(vocab.code_ids)
    done = torch.isfinite(constraint(torch.zeros(1, 5, dtype=torch.long), scores.clone()))[0]
    assert done.nonzero().flatten().tolist() == [vocab.eos]


def test_a_plan_is_reproducible_from_its_seed(lm: AceStepLmPlanner):
    first = lm.plan(request(seed=11))
    assert lm.plan(request(seed=11)) == first
    assert lm.plan(request(seed=12)).audio_codes != first.audio_codes


def test_the_cot_block_round_trips():
    metas = {"bpm": 120, "caption": "A calm piano.", "duration": 60, "keyscale": "C major", "language": "en",
             "timesignature": "4"}  # fmt: skip
    assert format_cot(metas) == (
        "<think>\nbpm: 120\ncaption: A calm piano.\nduration: 60\nkeyscale: C major\nlanguage: en\n"
        "timesignature: 4\n</think>"
    )
    assert parse_cot(format_cot(metas)) == {**metas, "timesignature": "4"}
    assert parse_cot("<think>\ncaption: a long\n  caption, folded\nbpm: 90\n</think>") == {
        "caption": "a long caption, folded", "bpm": 90
    }  # fmt: skip


# --- plans into stage params -------------------------------------------------------------------------

IDENTITY = PlannerIdentity(name="test", variant="v", weights_digest="d")


def test_a_plan_fills_only_what_the_user_left_open():
    params = StageParams(caption="mine", bpm=90, thinking=True, vocal_language="unknown", seed=4)
    asked = plan_request(params, 4)
    assert (asked.metas, asked.caption_rewrite, asked.language, asked.codes) == (True, True, True, True)
    found = {"bpm": 150, "keyscale": "A minor", "timesignature": "3", "duration": 12, "language": "fr",
             "caption": "theirs"}  # fmt: skip
    planned = apply_plan(params, Plan(planner=IDENTITY, request=asked, metadata=found, audio_codes=[1] * 60))
    assert (planned.bpm, planned.keyscale, planned.timesignature, planned.duration) == (90, "A minor", "3", 12.0)
    assert (planned.caption, planned.vocal_language) == ("theirs", "fr")
    assert planned.audio_code_string == format_audio_codes([1] * 60)
    assert not planned.wants_plan  # the plan is in the params: running them again plans nothing


def test_switches_decide_what_a_plan_may_change():
    params = StageParams(caption="mine", thinking=True, use_cot_caption=False, use_cot_metas=False)
    asked = plan_request(params, 1)
    planned = apply_plan(params, Plan(planner=IDENTITY, request=asked, metadata={"caption": "x", "bpm": 100}))
    assert (planned.caption, planned.bpm) == ("mine", None)
    hand_codes = StageParams(thinking=True, audio_code_string=format_audio_codes([5, 6]))
    assert plan_request(hand_codes, 1).codes is False  # upstream: codes given by hand are not re-planned


# --- LM codes into the DiT, as upstream routes them ------------------------------------------------


def upstream_context(dit: AceStepBackend, codes: list[int], frames: int) -> torch.Tensor:
    """Transcription of upstream's routing (acestep/handler.py ``_decode_audio_codes_to_latents`` and
    ``_prepare_batch``; the model's ``prepare_condition``): codes -> quantizer output -> detokenizer
    -> 25 Hz hints, cut or silence-padded to the latent length; cover swaps them in for the source
    latents; the context is [hints, chunk mask of ones] over 64 + 64 channels."""
    parts = dit.components
    indices = torch.tensor(codes, dtype=torch.long).unsqueeze(0).unsqueeze(-1)
    quantized = parts.audio_tokenizer.quantizer.get_output_from_indices(indices).to(dit.dtype)
    hints = parts.audio_token_detokenizer(quantized)
    if hints.shape[1] < frames:
        hints = torch.cat([hints, parts.silence[: frames - hints.shape[1]].unsqueeze(0)], dim=1)
    hints = hints[:, :frames]
    return torch.cat([hints, torch.ones_like(hints)], dim=-1)


def test_lm_codes_condition_the_dit_as_upstream_routes_them(dit: AceStepBackend):
    codes = torch.randint(0, CODEBOOK_SIZE, (40,), generator=torch.Generator().manual_seed(0)).tolist()
    frames = 5 * len(codes)
    spec = ConditionSpec(task="text2music", caption="calm piano", bpm=90, duration_s=frames / 25)
    ctx = build_task_context(dit, spec, batch=2, frames=frames, source=None, window=None, cover_strength=0.5,
                             total_steps=8, guided=False, codes=torch.tensor(codes).view(1, -1, 1))  # fmt: skip
    expected = upstream_context(dit, codes, frames)
    torch.testing.assert_close(ctx.first.context, expected.expand(2, -1, -1), rtol=1e-5, atol=1e-5)
    cover = ConditionSpec(task="cover", caption="calm piano", bpm=90, duration_s=frames / 25)
    assert ctx.first.cond.prompt_text == prompt_text(cover)  # upstream switches to the cover instruction
    torch.testing.assert_close(ctx.first.cond.hidden_states, dit.encode_condition(cover, 2).hidden_states)
    assert ctx.switch_step == 4  # int(8 * 0.5) steps on the codes, then plain text2music on silence
    silence = dit.silence_latent(frames).unsqueeze(0).expand(2, -1, -1)
    torch.testing.assert_close(ctx.after.context[..., :64].float(), silence)
    assert ctx.after.cond.prompt_text == prompt_text(spec)


def test_codes_outside_the_codebook_and_on_audio_stages_are_refused(dit: AceStepBackend):
    spec = ConditionSpec(task="text2music")
    with pytest.raises(InvalidStageRequest, match="0..63999"):
        build_task_context(dit, spec, batch=1, frames=10, source=None, window=None, cover_strength=1.0,
                           total_steps=8, guided=False, codes=torch.tensor([[[64000], [1]]]))  # fmt: skip
    with pytest.raises(ValueError, match="only .*'generate', 'refine'.* take LM codes"):
        StageParams(stage_type="cover", src_latent_id="x", audio_code_string="<|audio_code_1|>")
    with pytest.raises(ValueError, match="2 codes make 0.4 s, but duration 10 s needs 50"):
        StageParams(audio_code_string="<|audio_code_1|><|audio_code_2|>", duration=10.0)


# --- stages: plan once, reuse the stored plan --------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> LatentStore:
    return LatentStore(tmp_path / "latents")


def planned_params(**fields) -> StageParams:
    values = dict(backend="acestep", variant="turbo", caption="calm piano", instrumental=True, duration=10.0,
                  thinking=True, use_cot_caption=False, seed=21, inference_steps=4)  # fmt: skip
    return StageParams(**{**values, **fields})


def test_a_planned_generate_records_its_plan_and_codes(dit, store, acestep_planner):
    calls = acestep_planner.calls
    [result] = run_stage(planned_params(checkpoint_steps=[2]), store, backend=dit)
    assert acestep_planner.calls == calls + 1
    record = store.record(result.latent_id)
    assert record.shape == [1, 250, 64]
    assert record.lm_metadata["planner"] == acestep_planner.identity.model_dump()
    assert record.lm_metadata["audio_code_count"] == 50 and set(record.lm_metadata["metadata"]) == LM_FIELDS
    recorded = StageParams.model_validate(record.params)
    assert not recorded.wants_plan and len(recorded.audio_code_string) > 0
    assert recorded.bpm == record.lm_metadata["metadata"]["bpm"]
    assert result.lm_metadata == record.lm_metadata

    # The plan routes exactly as codes and metas given by hand (upstream's audio_codes parameter).
    [by_hand] = run_stage(recorded, store, backend=dit)
    assert torch.equal(store.get(by_hand.latent_id), store.get(result.latent_id))
    assert acestep_planner.calls == calls + 1
    [dit_only] = run_stage(planned_params(thinking=False), store, backend=dit)
    assert not torch.equal(store.get(dit_only.latent_id), store.get(result.latent_id))


def test_resume_refine_and_replay_reuse_the_stored_plan(dit, store, acestep_planner):
    [result] = run_stage(planned_params(checkpoint_steps=[2]), store, backend=dit)
    final = store.get(result.latent_id)
    calls = acestep_planner.calls

    [resumed] = run_stage(custom_to_params(restore(store.record(result.checkpoints[0].latent_id))), store, backend=dit)
    assert torch.equal(store.get(resumed.latent_id), final)  # exact resume: same codes, same conditioning

    asking = planned_params(stage_type="refine", src_latent_id=result.latent_id, t_start=0.5, duration=None)
    [refined] = run_stage(asking, store, backend=dit)
    record = store.record(refined.latent_id)
    assert record.lm_metadata == store.record(result.latent_id).lm_metadata
    assert record.params["audio_code_string"] == store.record(result.latent_id).params["audio_code_string"]

    [replayed] = run_stage(StageParams.model_validate(store.record(result.latent_id).params), store, backend=dit)
    assert torch.equal(store.get(replayed.latent_id), final)
    assert acestep_planner.calls == calls  # not one LM call since the first run


def test_a_run_from_a_latent_without_a_plan_never_plans(dit, store, acestep_planner):
    [plain] = run_stage(planned_params(thinking=False), store, backend=dit)
    with pytest.raises(InvalidStageRequest, match=f"source latent {plain.latent_id} has no stored plan"):
        run_stage(planned_params(stage_type="refine", src_latent_id=plain.latent_id, t_start=0.5), store, backend=dit)


def test_thinking_without_the_lm_folder_fails_before_any_work(dit, store, monkeypatch):
    monkeypatch.delenv("ACESTEP_LM_DIR", raising=False)
    register_planner("acestep", AceStepLmPlanner)
    with pytest.raises(PlannerUnavailable, match="ACESTEP_LM_DIR"):
        run_stage(planned_params(), store, backend=dit)
    assert store.list() == []
    [plain] = run_stage(planned_params(thinking=False), store, backend=dit)  # the DiT alone still runs
    assert store.record(plain.latent_id).lm_metadata is None


def test_the_embedded_planner_answers_the_same_question_within_its_means(store):
    planner = planner_for("embedded")
    params = StageParams(caption="a sad waltz at 80 bpm", use_cot_metas=True, use_cot_caption=True, seed=1)
    [result] = run_stage(params, store)
    record = store.record(result.latent_id)
    assert record.lm_metadata["planner"] == planner.identity.model_dump()
    recorded = StageParams.model_validate(record.params)
    assert (recorded.bpm, recorded.timesignature, recorded.caption) == (80, "3", "a sad waltz")
    assert recorded.keyscale.endswith("minor")
    with pytest.raises(InvalidStageRequest, match="thinking, use_cot_language: the embedded backend.s planner .* cannot decide"):
        run_stage(StageParams(caption="a waltz", thinking=True, seed=1), store)
