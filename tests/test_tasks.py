"""The stage tasks' orchestration on a real Prefect server: retries for transient faults only
(injected into a real backend), artifacts, engine logs in the task run's logs, and the optional
GPU concurrency limit."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from uuid import UUID

import pytest
import torch
from prefect import flow, get_client
from prefect.artifacts import MarkdownArtifact
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterId,
    LogFilter,
    LogFilterTaskRunId,
)
from prefect.logging.handlers import APILogHandler
from prefect.settings import PREFECT_API_URL, PREFECT_CLIENT_MAX_RETRIES, temporary_settings

from prefect_acestep import generate_flow, pipeline_flow
from prefect_acestep.stages.errors import InvalidStageRequest, TransientError
from prefect_acestep.stages.params import StageParams
from prefect_acestep.stages.requests import GenerateRequest
from prefect_acestep.stages.results import StageResult
from prefect_acestep.tasks.blocks import AceLatentStore
from prefect_acestep.tasks.concurrency import GPU_LIMIT_ENV
from prefect_acestep.tasks.publishing import publish, publisher
from prefect_acestep.tasks.stage_tasks import stage_task_for
from prefect_acestep.tasks.store_tasks import decode_task, import_audio_task
from tests.flow_helpers import (
    SHORT_STAGE,
    default_store as store,
    flow_run_id,
    one_stage,
    pipeline_request,
    read_call_log,
    register_counting,
    task_runs,
    wait_until,
)
from tests.prefect_stack import free_port

BACKEND = "counting-tasks"
pytestmark = pytest.mark.usefixtures("fast_prefect", "latent_dir", "counting_backend")


def params(**fields) -> StageParams:
    body = {"caption": "dusty boom bap drums", "backend": BACKEND, "seed": 3, **SHORT_STAGE, **fields}
    return StageParams.model_validate(body)


def stage_run(state) -> object:
    [run] = [run for run in task_runs(flow_run_id(state)) if not run.name.startswith("decode")]
    return run


# --- retries -----------------------------------------------------------------------------------


def test_stage_tasks_retry_with_backoff_and_jitter_by_default() -> None:
    task = stage_task_for(params(), AceLatentStore.from_env())
    assert (task.retries, task.retry_delay_seconds, task.retry_jitter_factor) == (3, [2, 4, 8], 0.5)
    assert (decode_task.retries, import_audio_task.retries) == (3, 3)


@pytest.mark.parametrize(
    "fault",
    [TransientError("backend hiccup"), OSError(5, "Input/output error"), torch.OutOfMemoryError("CUDA out of memory")],
    ids=["transient", "oserror", "oom"],
)
def test_a_transient_fault_is_retried_and_the_run_succeeds(model, fault) -> None:
    model.inject("velocity", fault)
    state = one_stage(params(seed=50), return_state=True)
    assert state.is_completed()
    run = stage_run(state)
    assert run.run_count == 2 and run.state.name == "Completed"
    assert model.calls["velocity"] == 4
    assert store().exists(state.result()[0].latent_id)


def test_a_fault_that_persists_fails_after_the_retries(model) -> None:
    model.inject("velocity", *(TransientError(f"hiccup {i}") for i in range(4)))
    state = one_stage(params(seed=51), return_state=True)
    assert state.is_failed() and "hiccup 3" in state.message
    assert stage_run(state).run_count == 4
    assert store().list() == []


def _corrupt(latent_id: str) -> None:
    path = store().root / "latents" / f"{latent_id}.safetensors"
    data = bytearray(path.read_bytes())
    data[-8:] = bytes(8 * [0x5A])
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("case", ["missing", "incompatible", "corrupt", "invalid"])
def test_typed_errors_fail_fast_with_one_attempt(model, case: str) -> None:
    source = one_stage(params(seed=60))[0].latent_id
    model.reset()
    if case == "missing":
        bad, expected = params(stage_type="refine", src_latent_id="01cccccccccccccccccccccccc", t_start=0.5), (
            "latent 01cccccccccccccccccccccccc not found"
        )
    elif case == "incompatible":
        bad, expected = params(stage_type="refine", src_latent_id=source, t_start=0.5, variant="sft"), (
            f"latent {source} is incompatible: model variant"
        )
    elif case == "corrupt":
        _corrupt(source)
        bad, expected = params(stage_type="refine", src_latent_id=source, t_start=0.5), f"latent {source} is corrupt"
    else:
        model.inject("velocity", InvalidStageRequest("x_t must be [1, T, 64]"), TransientError("never reached"))
        bad, expected = params(seed=61), "x_t must be [1, T, 64]"
    before = len(store().list())
    state = one_stage(bad, return_state=True)
    assert state.is_failed() and expected in state.message
    run = stage_run(state)
    assert run.run_count == 1 and run.state.name == "Failed"
    assert model.calls["velocity"] == 0 and len(store().list()) <= before


def test_bad_audio_fails_fast_without_storing(tmp_path: Path) -> None:
    not_audio = tmp_path / "notes.wav"
    not_audio.write_text("these are not samples")

    @flow
    def importing(path: str) -> str:
        return import_audio_task.with_options(retry_delay_seconds=0)(path, AceLatentStore.from_env(), backend=BACKEND)

    state = importing(str(not_audio), return_state=True)
    assert state.is_failed() and str(not_audio) in state.message
    [run] = task_runs(flow_run_id(state))
    assert run.run_count == 1 and store().list() == []


# --- artifacts ---------------------------------------------------------------------------------


def artifacts(flow_run: UUID) -> list:
    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run]))
        )


def test_a_pipeline_publishes_stage_tables_a_summary_and_progress(tmp_path: Path) -> None:
    request = pipeline_request(
        [{"stage_type": "generate", "seed": 1, "checkpoint_steps": [2], "preview": True},
         {"stage_type": "refine", "src_stage": 0, "denoise": 0.5, "seed": 2}],
        backend=BACKEND,
    )  # fmt: skip
    state = pipeline_flow(request, out_dir=str(tmp_path), return_state=True)
    hops = state.result()
    found = artifacts(flow_run_id(state))
    tables = [a for a in found if a.type == "table"]
    rows = [json.loads(a.data) if isinstance(a.data, str) else a.data for a in tables]
    by_stage = {row[0]["stage"]: row[0] for row in rows}
    assert set(by_stage) == {"generate", "refine"}
    assert by_stage["generate"]["latent_id"] == hops[0][0].latent_id
    assert by_stage["generate"]["checkpoints"] == f"2: {hops[0][0].checkpoints[0].latent_id}"
    assert by_stage["refine"]["latent_id"] == hops[1][0].latent_id and by_stage["refine"]["seed"] == 2
    assert by_stage["refine"]["backend"] == f"{BACKEND}/turbo"
    [summary] = [a for a in found if a.key == "acestep-pipeline-summary"]
    assert f"**Lineage:** `{hops[0][0].latent_id}` → `{hops[1][0].latent_id}`" in summary.data
    assert str(tmp_path) in summary.data and "t_start=0.5" in summary.data
    progress = [a for a in found if a.type == "progress"]
    assert len(progress) == 2 and all(float(a.data) == 100.0 for a in progress)
    task_ids = {run.id for run in task_runs(flow_run_id(state)) if not run.name.startswith("decode")}
    assert {a.task_run_id for a in progress} == task_ids == {a.task_run_id for a in tables}


def test_a_task_outside_our_flows_has_sent_its_artifacts_when_it_returns() -> None:
    """Artifacts go out from a background thread; a stage task run by someone else's flow (no
    flow body of ours to wait for them) waits for its own before it ends: its progress bar is there,
    at its last step. (Stage tables are our flows' to publish, once a stage is decoded.)"""
    state = one_stage(params(seed=90), return_state=True)
    bars = [a for a in artifacts(flow_run_id(state)) if a.type == "progress"]
    assert [(float(a.data), a.description.split(" (")[0]) for a in bars] == [(100.0, "generate diffusion: step 4/4")]


@flow
def progress_bar(updates: int) -> UUID:
    """A progress bar updated ``updates`` times while its creation is still queued, then again
    after it was sent. The publisher's lock is held around each burst (the sending thread takes it
    to pick the next write), so what coalesces does not depend on timing."""
    sender = publisher()
    before = sender.writes
    with sender._lock:  # the sending thread cannot start the creation meanwhile
        bar = sender.progress(0.0, "step 0")
        for step in range(1, updates + 1):
            bar.update(100.0 * step / (2 * updates), f"step {step}")
    assert sender.flush() == [] and sender.writes - before == 1  # one creation, with the newest value
    with sender._lock:
        for step in range(updates + 1, 2 * updates + 1):
            bar.update(100.0 * step / (2 * updates), f"step {step}")
    assert sender.flush() == [] and sender.writes - before == 2  # plus one update, the newest
    assert bar.artifact_id is not None
    return bar.artifact_id


def test_progress_updates_coalesce_to_the_newest_value() -> None:
    artifact_id = progress_bar(50)
    with get_client(sync_client=True) as client:
        [artifact] = client.read_artifacts(artifact_filter=ArtifactFilter(id=ArtifactFilterId(any_=[artifact_id])))
    assert float(artifact.data) == 100.0 and artifact.description == "step 100"


def test_a_write_the_api_refuses_is_reported_not_dropped() -> None:
    dead = f"http://127.0.0.1:{free_port()}/api"
    with temporary_settings(updates={PREFECT_API_URL: dead, PREFECT_CLIENT_MAX_RETRIES: 0}):
        publish(MarkdownArtifact(markdown="# hello", description="a report nobody receives"))
    [error] = publisher().flush()
    assert "'a report nobody receives'" in error and "markdown artifact" in error


# --- logs --------------------------------------------------------------------------------------


def test_engine_loguru_lines_reach_the_task_runs_logs(tmp_path: Path) -> None:
    # turbo maps custom timesteps to its trained levels and says so through loguru (stages.engine)
    request = GenerateRequest.model_validate(
        {"caption": "airy pads", "backend": BACKEND, "seed": 4, "duration": 2.0, "timesteps": [1.0, 0.77, 0.33]}
    )
    state = generate_flow(request, out_dir=str(tmp_path), return_state=True)
    assert state.is_completed()
    [run] = [run for run in task_runs(flow_run_id(state)) if run.name.startswith("generate")]
    APILogHandler().flush()

    def mapped() -> list:
        with get_client(sync_client=True) as client:
            logs = client.read_logs(log_filter=LogFilter(task_run_id=LogFilterTaskRunId(any_=[run.id])))
        return [log for log in logs if "custom_timesteps mapped to turbo's trained levels" in log.message]

    wait_until(mapped, "the engine's log line in the task run's logs")
    [line] = mapped()
    assert line.level == 30 and line.flow_run_id == flow_run_id(state)


# --- GPU concurrency -----------------------------------------------------------------------------

GPU_BACKEND = "counting-gpu"


@flow
def two_at_once(first: StageParams, second: StageParams) -> list[list[StageResult]]:
    block = AceLatentStore.from_env()
    futures = [stage_task_for(p, block).submit(p, block) for p in (first, second)]
    return [future.result() for future in futures]


def _spans(log: Path) -> list[tuple[float, float]]:
    """Per thread (one stage run each), the span from its first to its last logged call."""
    spans: dict[int, tuple[float, float]] = {}
    for _, thread, _, start, end in read_call_log(log):
        low, high = spans.get(thread, (start, end))
        spans[thread] = (min(low, start), max(high, end))
    return sorted(spans.values())


def _limit_names() -> set[str]:
    with get_client(sync_client=True) as client:
        return {limit.name for limit in client.read_global_concurrency_limits()}


def test_a_gpu_limit_of_one_serializes_stage_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gpu = dict(backend=GPU_BACKEND)
    # Unset: nothing limits the two runs, and no limit is created or touched. Each velocity call
    # waits at a barrier for the other run's: both runs finish only if they were in the model at once.
    register_counting(GPU_BACKEND, rendezvous=threading.Barrier(2, timeout=120))
    names = _limit_names()
    try:
        two_at_once(params(seed=70, **gpu), params(seed=71, **gpu))
    except threading.BrokenBarrierError:
        pytest.fail("without a limit the two stage runs were never inside the model at the same time")
    assert _limit_names() == names
    # Set to a limit of one slot: the second run's model work starts after the first's ends (each
    # velocity call held open, so that runs that were not serialized would overlap).
    log = tmp_path / "calls.log"
    register_counting(GPU_BACKEND, call_log=log, velocity_delay_s=0.15)
    name = f"gpu-{time.monotonic_ns()}"
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
    try:
        monkeypatch.setenv(GPU_LIMIT_ENV, name)
        two_at_once(params(seed=72, **gpu), params(seed=73, **gpu))
        (a_start, a_end), (b_start, b_end) = _spans(log)
        assert a_end <= b_start
        with get_client(sync_client=True) as client:
            assert client.read_global_concurrency_limit_by_name(name).active_slots == 0
    finally:
        with get_client(sync_client=True) as client:
            client.delete_global_concurrency_limit_by_name(name)


def test_a_gpu_limit_that_does_not_exist_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"missing-gpu-{time.monotonic_ns()}"
    monkeypatch.setenv(GPU_LIMIT_ENV, name)
    state = one_stage(params(seed=80), return_state=True)
    assert state.is_failed() and name in state.message
    assert stage_run(state).run_count == 1
    assert name not in _limit_names()
