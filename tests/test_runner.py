"""``run_stage`` on its own (no Prefect): each mode, which model calls each mode makes, typed
errors that store nothing, seeds, checkpoint records, exact resume and provenance."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from prefect_acestep.stages.conversions import custom_to_params, restore
from prefect_acestep.stages.errors import IncompatibleLatent, InvalidStageRequest, LatentDeleted, LatentExpired, LatentNotFound
from prefect_acestep.stages.params import StageParams
from prefect_acestep.stages.runner import GENERATOR_STATES_KEY, MOMENTUM_KEY, Provenance, run_stage
from prefect_acestep.stages.store import LatentStore
from tests.flow_helpers import counting, register_counting, stage_params

BACKEND = "counting-runner"


@pytest.fixture(scope="module", autouse=True)
def _backend() -> None:
    register_counting(BACKEND)


@pytest.fixture
def store(tmp_path: Path) -> LatentStore:
    return LatentStore(tmp_path / "latents")


def params(**fields) -> StageParams:
    return stage_params(BACKEND, **fields)


def stored_files(store: LatentStore) -> int:
    return len(list((store.root / "latents").glob("*.safetensors")))


def generated(store: LatentStore, **fields) -> str:
    return run_stage(params(**fields), store)[0].latent_id


def test_noise_mode_runs_every_step_without_touching_the_vae(store: LatentStore) -> None:
    model = counting(BACKEND)
    model.reset()
    [result] = run_stage(params(), store)
    assert (result.start_step, result.total_steps, result.t_start) == (0, 4, 1.0)
    assert model.calls["velocity"] == 4
    assert model.calls["vae_encode"] == model.calls["vae_decode"] == model.calls["tokenize"] == 0
    record = store.record(result.latent_id)
    assert record.shape == [1, 50, 64] and record.parent_ids == [] and not record.is_checkpoint


def test_refine_from_a_latent_is_the_fast_path(store: LatentStore) -> None:
    source = generated(store)
    model = counting(BACKEND)
    model.reset()
    [result] = run_stage(params(stage_type="refine", src_latent_id=source, t_start=0.5, seed=8), store)
    assert model.calls["vae_encode"] == 0 and model.calls["vae_decode"] == 0
    assert model.calls["tokenize"] == 0 and model.calls["detokenize"] == 0
    assert 0 < result.start_step < result.total_steps and result.t_start <= 0.5
    assert model.calls["velocity"] == result.total_steps - result.start_step
    assert store.record(result.latent_id).parent_ids == [source]
    refined = store.get(result.latent_id)
    assert not torch.equal(refined, store.get(source))


def test_cover_from_a_latent_goes_through_audio_and_the_vq_bottleneck(store: LatentStore) -> None:
    source = generated(store)
    model = counting(BACKEND)
    model.reset()
    [result] = run_stage(params(stage_type="cover", src_latent_id=source, audio_cover_strength=0.5, seed=9), store)
    assert model.calls["vae_decode"] == 1 and model.calls["vae_encode"] == 1
    assert model.calls["tokenize"] >= 1 and model.calls["detokenize"] >= 1
    assert result.start_step == 0 and store.record(result.latent_id).stage_type == "cover"


def test_cover_from_imported_audio_skips_the_round_trip(store: LatentStore, tmp_path: Path) -> None:
    from prefect_acestep.stages.audio import write_audio
    from prefect_acestep.stages.audio_import import import_audio_latent

    t = torch.arange(2 * 48_000) / 48_000
    tone = torch.stack([torch.sin(2 * torch.pi * 220 * t), torch.sin(2 * torch.pi * 330 * t)]) * 0.3
    wav = write_audio(tmp_path / "tone.wav", tone)
    model = counting(BACKEND)
    audio_id = import_audio_latent(str(wav), store, model)
    assert store.record(audio_id).stage_type == "import" and store.record(audio_id).shape == [1, 50, 64]
    model.reset()
    [result] = run_stage(params(stage_type="cover", src_audio_id=audio_id), store)
    assert model.calls["vae_decode"] == 0 and model.calls["vae_encode"] == 0
    assert model.calls["tokenize"] >= 1
    assert store.record(result.latent_id).parent_ids == [audio_id]


@pytest.mark.parametrize("infer_method", ["ode", "sde"])
def test_checkpoint_resume_is_bit_identical(store: LatentStore, infer_method: str) -> None:
    [full] = run_stage(params(infer_method=infer_method, checkpoint_steps=[1, 2]), store)
    for checkpoint in full.checkpoints:
        request = restore(store.record(checkpoint.latent_id))
        [resumed] = run_stage(custom_to_params(request), store)
        assert resumed.start_step == checkpoint.step
        assert torch.equal(store.get(resumed.latent_id), store.get(full.latent_id))
        assert store.record(resumed.latent_id).digest == store.record(full.latent_id).digest
        # Steps the original run stored before the resume point are not asked for again; later
        # ones are taken and hold the same state as the uninterrupted run's.
        later = [ref for ref in full.checkpoints if ref.step >= checkpoint.step]
        assert [ref.step for ref in resumed.checkpoints] == [ref.step for ref in later]
        for mine, theirs in zip(resumed.checkpoints, later, strict=True):
            assert torch.equal(store.get(mine.latent_id), store.get(theirs.latent_id))


def test_resume_rejects_a_checkpoint_step_before_the_resume_point(store: LatentStore) -> None:
    [full] = run_stage(params(checkpoint_steps=[2]), store)
    request = restore(store.record(full.checkpoints[0].latent_id)).model_copy(update={"checkpoint_steps": [0, 2]})
    with pytest.raises(InvalidStageRequest, match="checkpoint_steps: step 0"):
        run_stage(custom_to_params(request), store)


def test_base_variant_with_cfg_resumes_exactly_with_its_momentum(store: LatentStore) -> None:
    [full] = run_stage(params(variant="base", checkpoint_steps=[2]), store)
    checkpoint = full.checkpoints[0]
    assert MOMENTUM_KEY in store.get_extras(checkpoint.latent_id)  # APG momentum is part of the state
    [resumed] = run_stage(custom_to_params(restore(store.record(checkpoint.latent_id))), store)
    assert torch.equal(store.get(resumed.latent_id), store.get(full.latent_id))


def test_checkpoint_records_carry_the_loop_state(store: LatentStore) -> None:
    [result] = run_stage(params(infer_method="sde", checkpoint_steps=[2]), store)
    final = store.record(result.latent_id)
    [ref] = result.checkpoints
    record = store.record(ref.latent_id)
    assert record.is_checkpoint and record.checkpoint_step == 2 == ref.step
    assert record.schedule == final.schedule and len(record.schedule) == 5
    assert record.noise_level == pytest.approx(record.schedule[2]) == pytest.approx(ref.t)
    assert 0 < record.noise_level < 1 and record.total_steps == 4
    states = store.get_extras(ref.latent_id)[GENERATOR_STATES_KEY]
    assert states.dtype == torch.uint8 and states.shape[0] == 1
    assert record.parent_ids == [] and record.seeds == [7]


def test_batch_items_get_consecutive_seeds_and_replay_alone(store: LatentStore) -> None:
    results = run_stage(params(seed=100, batch_size=3), store)
    assert [r.seed for r in results] == [100, 101, 102]
    assert [r.sample_index for r in results] == [0, 1, 2]
    batch_id = results[0].latent_id
    assert {r.latent_id for r in results} == {batch_id}
    assert store.record(batch_id).seeds == [100, 101, 102]
    [alone] = run_stage(custom_to_params(restore(store.record(batch_id), sample_index=2)), store)
    assert alone.seed == 102


def test_a_random_seed_is_drawn_and_recorded(store: LatentStore) -> None:
    [result] = run_stage(params(seed=-1), store)
    record = store.record(result.latent_id)
    assert result.seed >= 0 and record.seeds == [result.seed] and record.params["seed"] == result.seed


def test_provenance_is_recorded(store: LatentStore) -> None:
    source = generated(store)
    provenance = Provenance(pipeline_id="pipe-1", stage_index=1, flow_run_id="flow-1", task_run_id="task-1")
    [result] = run_stage(
        params(stage_type="refine", src_stage=0, t_start=0.6), store, stage_latents={0: source}, provenance=provenance,
    )  # fmt: skip
    record = store.record(result.latent_id)
    assert (record.pipeline_id, record.stage_index, record.flow_run_id, record.task_run_id) == (
        "pipe-1", 1, "flow-1", "task-1",
    )  # fmt: skip
    assert record.parent_ids == [source] and record.lm_metadata is None  # nothing planned
    assert record.backend.name == BACKEND and record.backend.variant == "turbo"
    assert record.stage_type == "refine" and record.t_start == result.t_start
    # The pipeline-relative src_stage is recorded as the latent it resolved to, so it replays alone.
    assert record.params["src_stage"] is None and record.params["src_latent_id"] == source
    assert record.created_at is not None and record.expires_at is not None and record.digest


def _refine_from(source: str) -> StageParams:
    return params(stage_type="refine", src_latent_id=source, t_start=0.5)


def test_a_missing_source_names_it_and_stores_nothing(store: LatentStore) -> None:
    generated(store)
    before, files = len(store.list()), stored_files(store)
    model = counting(BACKEND)
    model.reset()
    missing = "01aaaaaaaaaaaaaaaaaaaaaaaa"
    with pytest.raises(LatentNotFound, match=missing):
        run_stage(_refine_from(missing), store)
    assert (len(store.list()), stored_files(store)) == (before, files)
    assert model.calls["velocity"] == 0


def test_a_deleted_source_names_it_and_stores_nothing(store: LatentStore) -> None:
    source = generated(store)
    store.delete(source)
    before, files = len(store.list()), stored_files(store)
    with pytest.raises(LatentDeleted, match=source):
        run_stage(_refine_from(source), store)
    assert (len(store.list()), stored_files(store)) == (before, files)


def test_an_expired_source_names_it_and_stores_nothing(tmp_path: Path) -> None:
    short = LatentStore(tmp_path / "short", ttl_hours=0.05 / 3600)  # 50 ms
    source = generated(short)
    time.sleep(0.1)
    files = stored_files(short)
    with pytest.raises(LatentExpired, match=source):
        run_stage(_refine_from(source), short)
    assert stored_files(short) == files and short.list() == []


def test_a_source_of_another_variant_is_incompatible_unless_allowed(store: LatentStore) -> None:
    source = generated(store)  # turbo
    files = stored_files(store)
    with pytest.raises(IncompatibleLatent, match=f"{source}.*variant"):
        run_stage(params(stage_type="refine", variant="sft", src_latent_id=source, t_start=0.5), store)
    assert stored_files(store) == files
    [result] = run_stage(
        params(stage_type="refine", variant="sft", src_latent_id=source, t_start=0.5, allow_cross_variant=True), store
    )
    assert store.record(result.latent_id).parent_ids == [source]


def test_a_sample_index_out_of_range_is_incompatible(store: LatentStore) -> None:
    source = generated(store, batch_size=2)
    files = stored_files(store)
    with pytest.raises(IncompatibleLatent, match=f"{source}.*sample index"):
        run_stage(params(stage_type="refine", src_latent_id=source, t_start=0.5, resume_sample_index=2), store)
    assert stored_files(store) == files
    [second] = run_stage(params(stage_type="refine", src_latent_id=source, t_start=0.5, resume_sample_index=1), store)
    assert store.record(second.latent_id).shape == [1, 50, 64]


def test_a_src_stage_without_a_result_is_a_typed_error(store: LatentStore) -> None:
    with pytest.raises(InvalidStageRequest, match="src_stage: stage 3"):
        run_stage(params(stage_type="refine", src_stage=3, t_start=0.5), store, stage_latents={0: "x"})
    assert stored_files(store) == 0
