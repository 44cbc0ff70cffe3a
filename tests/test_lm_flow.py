"""The planning phase in Prefect, on the real acestep backend and the tiny 5 Hz LM, both loaded the
way a worker loads real weights (ACESTEP_CHECKPOINT_DIR, ACESTEP_LM_DIR): the plan is its own
cached task run, its metadata is in the stage table, and simple mode plans with each backend's
planner behind the same flow."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers", reason="the acestep extra is not installed: pip install 'prefect-acestep[acestep]'")

from prefect import get_client  # noqa: E402
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId  # noqa: E402

from prefect_acestep import generate_flow, simple_flow  # noqa: E402
from prefect_acestep.stages.planning.lm.tiny import build_tiny_lm  # noqa: E402
from prefect_acestep.stages.backends.acestep.tiny import build_tiny_checkpoint  # noqa: E402
from prefect_acestep.stages.errors import PlannerUnavailable  # noqa: E402
from prefect_acestep.stages.planning.registry import planner_for, register_planner  # noqa: E402
from prefect_acestep.stages.planning.lm.planner import AceStepLmPlanner  # noqa: E402
from prefect_acestep.stages.requests import GenerateRequest, SimpleRequest  # noqa: E402
from prefect_acestep.tasks.blocks import AceLatentStore  # noqa: E402
from tests.flow_helpers import flow_run_id, task_runs  # noqa: E402

pytestmark = pytest.mark.usefixtures("fast_prefect", "latent_dir", "one_thread")


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("weights")
    # Short lines (see build_tiny_lm): simple mode rewrites the caption, and the DiT reads 256 tokens.
    return {"dit": build_tiny_checkpoint(root / "turbo", "turbo"), "lm": build_tiny_lm(root, newline_scale=400.0)}


@pytest.fixture(autouse=True)
def worker_env(weights: dict[str, Path], monkeypatch: pytest.MonkeyPatch):
    """A worker's environment; the planner is built from it on first use."""
    monkeypatch.setenv("ACESTEP_CHECKPOINT_DIR", str(weights["dit"]))
    monkeypatch.setenv("ACESTEP_LM_DIR", str(weights["lm"]))
    monkeypatch.setenv("ACESTEP_DEVICE", "cpu")
    register_planner("acestep", AceStepLmPlanner)  # a fresh planner, built from this environment


def table_rows(flow_run) -> list[dict]:
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run])))
    return [row for a in found if a.type == "table" for row in (json.loads(a.data) if isinstance(a.data, str) else a.data)]


def planned(**fields) -> GenerateRequest:
    values = dict(backend="acestep", variant="turbo", caption="calm piano", instrumental=True, duration=10.0,
                  thinking=True, use_cot_caption=False, seed=5, inference_steps=2)  # fmt: skip
    return GenerateRequest(**{**values, **fields})


def test_the_plan_is_its_own_cached_task_run_and_shows_in_the_stage_table(tmp_path: Path):
    state = generate_flow(planned(), out_dir=str(tmp_path), return_state=True)
    [result] = state.result()
    runs = task_runs(flow_run_id(state))
    assert [run.name.split(" ")[0] for run in runs if not run.name.startswith("decode")] == ["plan", "generate"]
    lm = planner_for("acestep")
    assert lm.calls == 1 and result.lm_metadata["planner"]["name"] == "acestep-5hz-lm"
    [row] = table_rows(flow_run_id(state))
    assert row["planner"] == f"acestep-5hz-lm/{lm.identity.variant}"
    assert "codes=50" in row["plan"] and f"bpm={result.params.bpm}" in row["plan"]

    again = generate_flow(planned(), out_dir=str(tmp_path), return_state=True)
    assert lm.calls == 1  # the same plan request is one LM run
    names = {run.name.split(" ")[0]: run.state.name for run in task_runs(flow_run_id(again))}
    assert names["plan"] == "Cached" and names["generate"] == "Cached"
    assert again.result()[0].latent_id == result.latent_id

    other = generate_flow(planned(lm_temperature=1.1), out_dir=str(tmp_path), return_state=True)
    assert lm.calls == 2 and other.result()[0].latent_id != result.latent_id


def test_resume_of_a_planned_checkpoint_runs_no_plan_task(tmp_path: Path):
    [result] = generate_flow(planned(checkpoint_steps=[1], seed=8), out_dir=str(tmp_path))
    calls = planner_for("acestep").calls
    checkpoint = result.checkpoints[0].latent_id
    state = generate_flow(planned(init_latent_id=checkpoint, seed=8), out_dir=str(tmp_path), return_state=True)
    assert [run.name.split(" ")[0] for run in task_runs(flow_run_id(state))][:1] == ["generate"]
    assert planner_for("acestep").calls == calls
    store = AceLatentStore.from_env().get_store()
    assert torch.equal(store.get(state.result()[0].latent_id), store.get(result.latent_id))


def test_simple_mode_plans_with_each_backends_planner(tmp_path: Path):
    on_acestep = simple_flow(
        SimpleRequest(description="a calm piano piece", backend="acestep", duration=10.0, seed=3), out_dir=str(tmp_path)
    )
    meta = on_acestep[0].lm_metadata
    assert meta["planner"]["name"] == "acestep-5hz-lm" and meta["request"]["caption"] == "a calm piano piece"
    assert meta["audio_code_count"] == 50 and on_acestep[0].params.audio_code_string != ""
    on_embedded = simple_flow(SimpleRequest(description="a calm piano waltz", duration=2.0, seed=3), out_dir=str(tmp_path))
    meta = on_embedded[0].lm_metadata
    assert meta["planner"]["name"] == "embedded-rules" and on_embedded[0].params.timesignature == "3"


def test_thinking_without_the_lm_folder_fails_before_any_task(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("ACESTEP_LM_DIR")
    register_planner("acestep", AceStepLmPlanner)
    with pytest.raises(PlannerUnavailable, match="ACESTEP_LM_DIR"):
        simple_flow(SimpleRequest(description="calm piano", backend="acestep", seed=1), out_dir=str(tmp_path))
    state = generate_flow(planned(seed=9), out_dir=str(tmp_path), return_state=True)
    assert state.is_failed()
    assert [run.name.split(" ")[0] for run in task_runs(flow_run_id(state))] == ["plan"]
    assert AceLatentStore.from_env().get_store().list() == []
