"""The stage cache on a real Prefect server: hits on identical runs, recompute when a hit's latent
is gone, no caching of random seeds, one computation for two processes racing on one key, and a
lifetime that follows the store's TTL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from prefect import flow

from prefect_acestep import generate_flow, pipeline_flow
from prefect_acestep.stages.audio import load_audio, read_audio_metadata, write_audio
from prefect_acestep.stages.params import StageParams
from prefect_acestep.stages.requests import GenerateRequest, PipelineRequest
from prefect_acestep.stages.store import LatentStore
from prefect_acestep.tasks.blocks import AceLatentStore
from prefect_acestep.tasks.stage_tasks import CACHE_DIR, stage_task_for
from tests.flow_helpers import (
    SHORT_STAGE,
    counting,
    fast_prefect,  # noqa: F401  (fixture)
    flow_run_id,
    latent_dir,  # noqa: F401  (fixture)
    read_call_log,
    register_counting,
    stage_requests,
    task_state_names,
)

BACKEND = "counting-cache"
ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("fast_prefect", "latent_dir")


@pytest.fixture(scope="module", autouse=True)
def _backend() -> None:
    register_counting(BACKEND)


@pytest.fixture
def model():
    backend = counting(BACKEND)
    backend.reset()
    return backend


def store() -> LatentStore:
    return AceLatentStore.from_env().get_store()


def custom(**fields) -> GenerateRequest:
    body = {"caption": "glassy synth arpeggios", "backend": BACKEND, "seed": 5, **SHORT_STAGE, **fields}
    return GenerateRequest.model_validate(body)


THREE_STAGES = [
    {"stage_type": "generate", "seed": 1, "checkpoint_steps": [2]},
    {"stage_type": "refine", "src_stage": 0, "denoise": 0.5, "seed": 2},
    {"stage_type": "cover", "src_stage": 1, "seed": 3, "audio_cover_strength": 0.5},
]


def test_a_second_identical_pipeline_is_all_cache_hits(tmp_path: Path, model) -> None:
    request = PipelineRequest.model_validate(stage_requests(THREE_STAGES, backend=BACKEND))
    first = pipeline_flow(request, out_dir=str(tmp_path), return_state=True)
    assert task_state_names(flow_run_id(first), "") and model.calls["velocity"] > 0
    files = sorted(p.name for p in tmp_path.iterdir())
    model.reset()
    second = pipeline_flow(request, out_dir=str(tmp_path), return_state=True)
    # three cached stages and no decode task: the final audio file is already there
    assert task_state_names(flow_run_id(second)) == ["Cached", "Cached", "Cached"]
    assert sum(model.calls.values()) == 0  # no model call at all, the audio file included
    assert [h[0].latent_id for h in second.result()] == [h[0].latent_id for h in first.result()]
    assert [h[0].checkpoints for h in second.result()] == [h[0].checkpoints for h in first.result()]
    assert sorted(p.name for p in tmp_path.iterdir()) == files
    audio = Path(second.result()[2][0].audio_path)
    assert audio == Path(first.result()[2][0].audio_path)
    # An audio file that is gone, or holds something else, is decoded again.
    other = {"latent_id": first.result()[1][0].latent_id, "sample_index": 0}
    for damage in (audio.unlink, lambda: write_audio(audio, load_audio(audio), metadata=other)):
        damage()
        model.reset()
        third = pipeline_flow(request, out_dir=str(tmp_path), return_state=True)
        assert task_state_names(flow_run_id(third)) == ["Cached", "Cached", "Cached", "Completed"]
        assert model.calls["vae_decode"] == 1
        assert read_audio_metadata(audio)["latent_id"] == third.result()[2][0].latent_id


def test_a_hit_whose_latent_is_gone_recomputes_to_a_live_id(tmp_path: Path, model) -> None:
    request = custom(checkpoint_steps=[1])
    [first] = generate_flow(request, out_dir=str(tmp_path))
    digest = store().record(first.latent_id).digest
    store().delete(first.latent_id)
    model.reset()
    state = generate_flow(request, out_dir=str(tmp_path), return_state=True)
    [second] = state.result()
    assert task_state_names(flow_run_id(state), "generate") == ["Completed"]
    assert model.calls["velocity"] == 4
    assert second.latent_id != first.latent_id and store().exists(second.latent_id)
    assert store().record(second.latent_id).digest == digest  # the same work, done again
    # The recomputed result is cached in turn; a lost checkpoint also invalidates a hit.
    model.reset()
    state = generate_flow(request, out_dir=str(tmp_path), return_state=True)
    assert task_state_names(flow_run_id(state), "generate") == ["Cached"] and model.calls["velocity"] == 0
    assert state.result()[0].latent_id == second.latent_id
    store().delete(second.checkpoints[0].latent_id)
    state = generate_flow(request, out_dir=str(tmp_path), return_state=True)
    [third] = state.result()
    assert task_state_names(flow_run_id(state), "generate") == ["Completed"]
    assert store().exists(third.checkpoints[0].latent_id)


def test_an_expired_hit_recomputes(tmp_path: Path, model) -> None:
    name = f"cache-short-{time.monotonic_ns()}"
    # Long enough that the first flow (stage + decode) finishes before expiry on a loaded machine.
    AceLatentStore(root=str(tmp_path / "short"), ttl_hours=20 / 3600).save(name)
    [first] = generate_flow(custom(), store=name, out_dir=str(tmp_path))
    expires = AceLatentStore.load(name).get_store().record(first.latent_id).expires_at
    time.sleep(max(0.0, expires.timestamp() - time.time()) + 0.1)
    model.reset()
    [second] = generate_flow(custom(), store=name, out_dir=str(tmp_path))
    assert model.calls["velocity"] == 4 and second.latent_id != first.latent_id


def test_a_random_seed_never_caches(tmp_path: Path, latent_dir: Path, model) -> None:
    states = [generate_flow(custom(seed=-1), out_dir=str(tmp_path), return_state=True) for _ in range(2)]
    assert [task_state_names(flow_run_id(s), "generate") for s in states] == [["Completed"], ["Completed"]]
    assert model.calls["velocity"] == 8
    first, second = (s.result()[0] for s in states)
    assert first.seed != second.seed and first.latent_id != second.latent_id
    keys = latent_dir / CACHE_DIR / "keys"
    assert not keys.exists() or list(keys.iterdir()) == []


def test_cache_lifetime_follows_the_store_ttl(tmp_path: Path, model) -> None:
    ttl_hours = 3.0
    name = f"cache-ttl-{time.monotonic_ns()}"
    AceLatentStore(root=str(tmp_path / "ttl"), ttl_hours=ttl_hours).save(name)
    before = time.time()
    generate_flow(custom(), store=name, out_dir=str(tmp_path))
    after = time.time()
    [record] = list((tmp_path / "ttl" / CACHE_DIR / "keys").iterdir())
    expiration = datetime.fromisoformat(json.loads(record.read_text())["expiration"]).timestamp()
    assert before + ttl_hours * 3600 - 1 <= expiration <= after + ttl_hours * 3600 + 1


RACE_SCRIPT = """
import sys, time
from pathlib import Path
from tests.flow_helpers import register_counting
register_counting("counting-race", call_log=Path(sys.argv[1]), velocity_delay_s=0.1)
from prefect import flow
from prefect_acestep.stages.params import StageParams
from prefect_acestep.tasks.blocks import AceLatentStore
from prefect_acestep.tasks.stage_tasks import stage_task_for

@flow
def race(go: str, ready: str) -> str:
    block = AceLatentStore.from_env()
    params = StageParams(caption="race", backend="counting-race", seed=77, duration=2.0, inference_steps=4)
    stage = stage_task_for(params, block)
    Path(ready).touch()
    while not Path(go).exists():
        time.sleep(0.01)
    return stage(params, block)[0].latent_id

print(race(sys.argv[2], sys.argv[3]))
"""


def test_two_processes_racing_on_one_key_do_the_work_once(tmp_path: Path, latent_dir: Path) -> None:
    log, go = tmp_path / "calls.log", tmp_path / "go"
    procs = [_start_racer(tmp_path, log, go, f"ready{i}") for i in range(2)]
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready{i}").exists() for i in range(2)):
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    go.touch()
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    ids = {out.strip().splitlines()[-1] for out, _ in outputs}
    assert len(ids) == 1  # both got the one result
    velocity = [row for row in read_call_log(log) if row[2] == "velocity"]
    assert len(velocity) == 4 and len({row[0] for row in velocity}) == 1  # one process did the work once
    assert len(store().list(is_checkpoint=False)) == 1


def _start_racer(tmp_path: Path, log: Path, go: Path, name: str) -> subprocess.Popen:
    from prefect.settings import PREFECT_API_URL

    script = tmp_path / "race.py"
    script.write_text(RACE_SCRIPT)
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, str(script), str(log), str(go), str(tmp_path / name)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


@pytest.mark.timeout(120)
def test_a_killed_lock_holder_does_not_block_the_next_run(tmp_path: Path) -> None:
    """kill -9 in the middle of a stage leaves its cache lock behind; the next run of the same
    stage frees it (its process is gone) and does the work instead of waiting forever."""
    log, go = tmp_path / "calls.log", tmp_path / "go"
    go.touch()
    victim = _start_racer(tmp_path, log, go, "ready")
    deadline = time.monotonic() + 90
    while not any(row[2] == "velocity" for row in read_call_log(log)):
        assert victim.poll() is None, victim.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(victim.pid, signal.SIGKILL)
    victim.communicate()
    assert list((store().root / CACHE_DIR / "locks").glob("*.lock")), "the killed run should leave its lock"
    register_counting("counting-race")
    survivor = counting("counting-race")
    params = StageParams(caption="race", backend="counting-race", seed=77, duration=2.0, inference_steps=4)

    @flow
    def again() -> str:
        block = AceLatentStore.from_env()
        return stage_task_for(params, block)(params, block)[0].latent_id

    latent_id = again()
    assert survivor.calls["velocity"] == 4 and store().exists(latent_id)
