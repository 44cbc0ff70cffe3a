"""The flows end to end on a real Prefect server, with a real store in ``tmp_path`` and real audio
files: the request shapes they accept, what each mode does with sources, checkpoints and replays,
and the latents' lifecycle (restart, TTL, pins, missing sources)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from prefect_acestep import gc_flow, generate_flow, pipeline_flow, replay_flow
from prefect_acestep.stages.audio import load_audio, read_audio_metadata, write_audio
from prefect_acestep.stages.conversions import custom_to_params, custom_to_stage, restore, stage_to_custom
from prefect_acestep.stages.errors import InvalidStageRequest
from prefect_acestep.stages.requests import GenerateRequest, PipelineRequest
from prefect_acestep.stages.results import StageResult
from prefect_acestep.tasks.blocks import AceLatentStore
from prefect_acestep.tasks.store_tasks import import_audio_task
from tests.flow_helpers import (
    custom_request,
    default_store as store,
    flow_run_id,
    one_stage,
    pipeline_request,
    task_state_names,
    wait_until,
)

BACKEND = "counting-flows"
ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("fast_prefect", "latent_dir", "counting_backend")


def pipeline(stages: list[dict], **shared) -> PipelineRequest:
    return pipeline_request(stages, backend=BACKEND, **shared)


def custom(**fields) -> GenerateRequest:
    return custom_request(BACKEND, **fields)


def wav_tone(path: Path, seconds: float = 2.0) -> Path:
    t = torch.arange(int(seconds * 48_000)) / 48_000
    tone = torch.stack([torch.sin(2 * torch.pi * 220 * t), torch.sin(2 * torch.pi * 277 * t)]) * 0.3
    return write_audio(path, tone)


# --- request shapes ----------------------------------------------------------------------------


def test_existing_requests_without_the_new_fields_still_run(tmp_path: Path) -> None:
    """The legacy request shape (``type``, ``steps``, ``input_stage``; no source, checkpoint or
    variant fields) runs, and its results carry every field the old result payload had."""
    legacy = {
        "caption": "soft lofi beat",
        "duration": 2,
        "stages": [{"type": "generate", "steps": 4, "seed": 11}, {"type": "refine", "input_stage": 0, "steps": 4,
                                                                   "denoise": 0.5, "seed": 12}],
    }  # fmt: skip
    hops = pipeline_flow(PipelineRequest.model_validate(legacy), out_dir=str(tmp_path / "out"))
    assert [len(h) for h in hops] == [1, 1]
    final = hops[1][0]
    assert final.params.backend == "embedded" and final.params.variant == "turbo"
    payload = json.loads(final.model_dump_json())
    assert {"latent_id", "seed", "params", "audio_path"} <= set(payload)
    assert StageResult.model_validate(payload) == final
    assert load_audio(final.audio_path).shape[0] == 2
    old_custom = GenerateRequest.model_validate({"caption": "soft lofi beat", "duration": 2, "steps": 4, "seed": 3})
    [result] = generate_flow(old_custom, out_dir=str(tmp_path / "out"))
    assert store().record(result.latent_id).parent_ids == []


# --- modes, sources, checkpoints, replays ---------------------------------------------------------


def test_generate_restore_resume(tmp_path: Path, model) -> None:
    [first] = generate_flow(custom(checkpoint_steps=[2]), out_dir=str(tmp_path))
    [checkpoint] = first.checkpoints
    request = restore(store().record(checkpoint.latent_id))
    assert request.init_latent_id == checkpoint.latent_id and request.t_start is None
    model.reset()
    [resumed] = generate_flow(request, out_dir=str(tmp_path))
    assert resumed.start_step == 2 and model.calls["velocity"] == 2
    latents = store()
    assert latents.record(resumed.latent_id).digest == latents.record(first.latent_id).digest
    assert latents.record(resumed.latent_id).parent_ids == [checkpoint.latent_id]
    assert read_audio_metadata(resumed.audio_path)["latent_id"] == resumed.latent_id


def test_pipeline_outputs_restore_into_custom_and_back(tmp_path: Path) -> None:
    request = pipeline(
        [{"stage_type": "generate", "seed": 1}, {"stage_type": "refine", "src_stage": 0, "denoise": 0.5, "seed": 2}]
    )
    hops = pipeline_flow(request, out_dir=str(tmp_path))
    latents = store()
    for index, [result] in enumerate(hops):
        restored = restore(latents.record(result.latent_id))
        assert restored.init_latent_id == result.latent_id  # the latent reference travels
        assert (restored.stage_type, restored.seed, restored.caption, restored.backend) == (
            request.stage_params(index).stage_type, result.seed, request.caption, BACKEND,
        )  # fmt: skip
        # Custom -> "add to pipeline" carries the same params and latent reference back.
        stage = custom_to_stage(restored)
        assert stage.src_latent_id == result.latent_id and stage.seed == result.seed
    # Pipeline -> "send to custom": the refine stage as a custom request on stage 0's latent,
    # replayed for real (no cache), reproduces the pipeline's refine output bit for bit.
    sent = stage_to_custom(request, 1, stage_latent_ids={0: hops[0][0].latent_id})
    assert sent.init_latent_id == hops[0][0].latent_id and sent.t_start == 0.5
    assert request.stages[1].denoise == 0.5  # the pipeline itself is untouched by the conversion
    [again] = replay_flow(hops[1][0].latent_id, out_dir=str(tmp_path))
    assert again.latent_id != hops[1][0].latent_id
    assert latents.record(again.latent_id).digest == latents.record(hops[1][0].latent_id).digest


def test_source_routing_audio_stage_and_latent(tmp_path: Path) -> None:
    block = AceLatentStore.from_env()
    audio_id = import_audio_task(str(wav_tone(tmp_path / "tone.wav")), block, backend=BACKEND)
    [other] = generate_flow(custom(seed=40), out_dir=str(tmp_path))
    request = pipeline(
        [
            {"stage_type": "cover", "src_audio_id": audio_id, "seed": 1},
            {"stage_type": "refine", "src_stage": 0, "denoise": 0.5, "seed": 2},
            # src_latent_id outranks src_stage and src_audio_id: only it feeds the stage.
            {"stage_type": "refine", "src_latent_id": other.latent_id, "src_stage": 1, "src_audio_id": audio_id,
             "denoise": 0.5, "seed": 3},
        ]
    )  # fmt: skip
    hops = pipeline_flow(request, out_dir=str(tmp_path))
    latents = store()
    parents = [latents.record(hop[0].latent_id).parent_ids for hop in hops]
    assert parents == [[audio_id], [hops[0][0].latent_id], [other.latent_id]]
    assert latents.record(audio_id).stage_type == "import"


def test_checkpoint_then_replay_gives_the_same_output(tmp_path: Path, model) -> None:
    [first] = generate_flow(custom(checkpoint_steps=[1], infer_method="sde"), out_dir=str(tmp_path))
    model.reset()
    [replayed] = replay_flow(first.latent_id, out_dir=str(tmp_path))
    assert model.calls["velocity"] == 4  # recomputed, not a cache hit
    latents = store()
    assert replayed.latent_id != first.latent_id
    assert latents.record(replayed.latent_id).digest == latents.record(first.latent_id).digest
    checkpoints = [latents.record(r.checkpoints[0].latent_id).digest for r in (replayed, first)]
    assert checkpoints[0] == checkpoints[1]
    [branch] = replay_flow(first.latent_id, overrides={"seed": 6}, out_dir=str(tmp_path))
    assert branch.seed == 6 and latents.record(branch.latent_id).digest != latents.record(first.latent_id).digest


def test_cover_from_a_latent_keeps_the_vq_path(tmp_path: Path, model) -> None:
    request = pipeline(
        [{"stage_type": "generate", "seed": 1}, {"stage_type": "cover", "src_stage": 0, "seed": 2,
                                                  "audio_cover_strength": 0.5}]
    )  # fmt: skip
    hops = pipeline_flow(request, out_dir=str(tmp_path))
    # cover: one decode and one encode of its source, then the VQ bottleneck; +1 decode for the audio file
    assert (model.calls["vae_decode"], model.calls["vae_encode"]) == (2, 1)
    assert model.calls["tokenize"] >= 1 and model.calls["detokenize"] >= 1
    assert Path(hops[1][0].audio_path).exists()


def test_refine_from_a_latent_skips_the_vae(tmp_path: Path, model) -> None:
    request = pipeline(
        [{"stage_type": "generate", "seed": 1}, {"stage_type": "refine", "src_stage": 0, "denoise": 0.5, "seed": 2}]
    )
    hops = pipeline_flow(request, out_dir=str(tmp_path))
    # only the final audio file is decoded; the refine itself never leaves latent space
    assert (model.calls["vae_decode"], model.calls["vae_encode"], model.calls["tokenize"]) == (1, 0, 0)
    assert hops[1][0].start_step > 0


# --- lifecycle ---------------------------------------------------------------------------------


def test_latents_survive_a_restart(tmp_path: Path, latent_dir: Path) -> None:
    [result] = generate_flow(custom(seed=21), out_dir=str(tmp_path))
    digest = store().record(result.latent_id).digest
    (latent_dir / "index.sqlite3").unlink()  # even the index is rebuilt from the files
    script = (
        "import sys; from prefect_acestep.stages.store import LatentStore; from prefect_acestep.stages.runner import run_stage; "
        "from prefect_acestep.stages.params import StageParams; s = LatentStore(sys.argv[1]); r = s.record(sys.argv[2]); "
        "s.get(sys.argv[2]); "
        "[out] = run_stage(StageParams(stage_type='refine', src_latent_id=sys.argv[2], t_start=0.5, seed=1, "
        "inference_steps=4), s); print(r.digest, s.record(out.latent_id).parent_ids[0])"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(latent_dir), result.latent_id], cwd=ROOT, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [digest, result.latent_id]


def test_ttl_removes_and_pins_keep(latent_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a one-second TTL: a pinned latent is pinned from the moment it is stored, and the stage
    runs without a decode (nothing reads its latents back), so the TTL may pass at any point."""
    monkeypatch.setenv("ACE_LATENT_TTL_HOURS", str(1 / 3600))
    latents = store()
    ancestor = latents.put(torch.zeros(1, 50, 64), stage_type="generate")
    kept = latents.put(torch.ones(1, 50, 64), stage_type="refine", parent_ids=[ancestor], pinned=True)
    [dropped] = one_stage(custom_to_params(custom(seed=32, checkpoint_steps=[2])))
    # Stored last, so once it has expired every TTL here has passed.
    wait_until(lambda: not latents.exists(dropped.latent_id), "the stage's latent to expire")
    report = gc_flow()
    assert {item.id for item in report.removed} == {dropped.latent_id, dropped.checkpoints[0].latent_id}
    assert not (latent_dir / "latents" / f"{dropped.latent_id}.safetensors").exists()
    assert latents.record(kept).expires_at is None  # pinned: never expires
    assert latents.get(kept).shape == latents.get(ancestor).shape == (1, 50, 64)  # kept with its ancestor


def test_a_missing_latent_fails_with_its_id_and_nothing_runs(tmp_path: Path, model) -> None:
    missing = "01bbbbbbbbbbbbbbbbbbbbbbbb"
    before = len(store().list())
    request = pipeline(
        [{"stage_type": "generate", "seed": 1}, {"stage_type": "refine", "src_latent_id": missing, "denoise": 0.5}]
    )
    state = pipeline_flow(request, out_dir=str(tmp_path), return_state=True)
    assert state.is_failed() and missing in state.message
    assert task_state_names(flow_run_id(state), "refine") == ["Failed"]
    assert model.calls["velocity"] == 4  # the generate stage only: nothing ran from noise for the refine
    assert len(store().list()) == before + 1
    state = generate_flow(custom(init_latent_id=missing, t_start=0.5), out_dir=str(tmp_path), return_state=True)
    assert state.is_failed() and f"latent {missing} not found" in state.message


def test_out_dir_is_a_folder_under_the_audio_root_or_the_callers_own_absolute_path(
    latent_dir: Path, tmp_path: Path, model
) -> None:
    """A relative ``out_dir`` lands under ACE_AUDIO_DIR and may not climb out of it; an absolute one
    is the Python caller's own choice (a deployment run's must lie under the root:
    ``tests/test_deployments.py``). Refused before any stage runs."""
    [result] = generate_flow(custom(seed=21), out_dir="takes/one")
    assert Path(result.audio_path).parent == tmp_path / "audio" / "takes" / "one"
    [result] = generate_flow(custom(seed=21), out_dir=str(tmp_path / "mine"))
    assert Path(result.audio_path).parent == tmp_path / "mine"
    model.reset()
    for escaping in ("../escaped", "takes/../../escaped"):
        with pytest.raises(InvalidStageRequest, match="outside the audio root"):
            generate_flow(custom(seed=22), out_dir=escaping)
    assert model.calls["velocity"] == 0 and not (tmp_path / "escaped").exists()
