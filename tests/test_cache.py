"""The stage cache on a real Prefect server: hits on identical runs, recompute when a hit's latent
is gone, no caching of random seeds, one computation for two processes racing on one key, a
lifetime that follows the store's TTL, and a hit in a fresh process that builds no backend."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from uuid import UUID

import pytest


from prefect_acestep import generate_flow, pipeline_flow
from prefect_acestep.stages.audio import load_audio, read_audio_metadata, write_audio
from prefect_acestep.stages.conversions import custom_to_params
from prefect_acestep.stages.params import StageParams
from prefect_acestep.stages.requests import GenerateRequest
from prefect_acestep.tasks.blocks import AceLatentStore
from prefect_acestep.tasks.stage_tasks import CACHE_DIR
from tests.flow_helpers import (
    counting,
    custom_request,
    default_store as store,
    flow_run_id,
    one_stage,
    pipeline_request,
    read_call_log,
    register_counting,
    task_state_names,
    wait_until,
)

BACKEND = "counting-cache"
ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("fast_prefect", "latent_dir", "counting_backend")


def custom(**fields) -> GenerateRequest:
    return custom_request(BACKEND, **fields)


THREE_STAGES = [
    {"stage_type": "generate", "seed": 1, "checkpoint_steps": [2]},
    {"stage_type": "refine", "src_stage": 0, "denoise": 0.5, "seed": 2},
    {"stage_type": "cover", "src_stage": 1, "seed": 3, "audio_cover_strength": 0.5},
]


def test_a_second_identical_pipeline_is_all_cache_hits(tmp_path: Path, model) -> None:
    request = pipeline_request(THREE_STAGES, backend=BACKEND)
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


def test_an_expired_hit_recomputes(model, monkeypatch: pytest.MonkeyPatch) -> None:
    """The stage alone (no decode reads its latent back), so the one-second TTL may pass at any
    point after the stage stored its latent: the second run starts only once it has passed."""
    monkeypatch.setenv("ACE_LATENT_TTL_HOURS", str(1 / 3600))
    params = custom_to_params(custom())
    [first] = one_stage(params)
    wait_until(lambda: not store().exists(first.latent_id), "the first latent to expire")
    model.reset()
    [second] = one_stage(params)
    assert model.calls["velocity"] == 4 and second.latent_id != first.latent_id


def test_a_random_seed_never_caches(tmp_path: Path, latent_dir: Path, model) -> None:
    states = [generate_flow(custom(seed=-1), out_dir=str(tmp_path), return_state=True) for _ in range(2)]
    assert [task_state_names(flow_run_id(s), "generate") for s in states] == [["Completed"], ["Completed"]]
    assert model.calls["velocity"] == 8
    first, second = (s.result()[0] for s in states)
    assert first.seed != second.seed and first.latent_id != second.latent_id
    keys = latent_dir / CACHE_DIR / "keys"
    assert not keys.exists() or list(keys.iterdir()) == []


def test_cache_lifetime_follows_the_store_ttl(tmp_path: Path) -> None:
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
from uuid import UUID
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


def test_two_processes_racing_on_one_key_do_the_work_once(tmp_path: Path) -> None:
    log, go = tmp_path / "calls.log", tmp_path / "go"
    procs = [_start_racer(tmp_path, log, go, f"ready{i}") for i in range(2)]

    def both_ready() -> bool:
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        return all((tmp_path / f"ready{i}").exists() for i in range(2))

    wait_until(both_ready, "both racers to reach the stage", timeout_s=120)
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

    def in_the_model() -> bool:
        assert victim.poll() is None, victim.communicate()
        return any(row[2] == "velocity" for row in read_call_log(log))

    wait_until(in_the_model, "the victim to start its model calls", timeout_s=90)
    os.kill(victim.pid, signal.SIGKILL)
    victim.communicate()
    assert list((store().root / CACHE_DIR / "locks").glob("*.lock")), "the killed run should leave its lock"
    register_counting("counting-race")
    survivor = counting("counting-race")
    params = StageParams(caption="race", backend="counting-race", seed=77, duration=2.0, inference_steps=4)
    [result] = one_stage(params)
    assert survivor.calls["velocity"] == 4 and store().exists(result.latent_id)


FRESH_WORKER = """
import sys
from pathlib import Path
from uuid import UUID
from prefect_acestep import GenerateRequest, generate_flow
from prefect_acestep.stages.backends.registry import load_backend
from tests.flow_helpers import read_call_log, register_counting

log = Path(sys.argv[1])
request = GenerateRequest.model_validate_json(sys.argv[2])
register_counting(request.backend, call_log=log)
state = generate_flow(request, out_dir=sys.argv[3], return_state=True)
builds_in_flow = len(read_call_log(log))
load_backend(request.backend, variant=request.variant)  # shows that a build would have been logged
print(state.state_details.flow_run_id, state.result()[0].latent_id, builds_in_flow, len(read_call_log(log)))
"""


def test_a_hit_in_a_fresh_process_builds_no_backend(tmp_path: Path) -> None:
    """A worker that has never built the model answers a cached stage without building it: the
    cache key's backend identity comes from the registry, and the audio file is already there."""
    from prefect.settings import PREFECT_API_URL

    request = custom(seed=17)
    [first] = generate_flow(request, out_dir=str(tmp_path / "audio"))
    log = tmp_path / "fresh.calls"
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_HOME": str(tmp_path / "fresh-home"),
           "PYTHONPATH": str(ROOT)}  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", FRESH_WORKER, str(log), request.model_dump_json(), str(tmp_path / "audio")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    flow_run, latent_id, builds_in_flow, builds_after = done.stdout.split()[-4:]
    assert task_state_names(UUID(flow_run)) == ["Cached"]  # the stage, and no decode task
    assert latent_id == first.latent_id
    assert (builds_in_flow, builds_after) == ("0", "1")
    assert [row[2] for row in read_call_log(log)] == ["build"]  # and no model call
