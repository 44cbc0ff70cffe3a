"""What a flow run tells on a real Prefect server: its name says what ran, each stage logs one line
and publishes its table (and, decoded, its page to listen and look) with its task run, the summary
compares every stage with its source, and a request with mistakes is refused before any stage runs,
naming each problem in the form's words."""

from __future__ import annotations

from pathlib import Path

import pytest
from prefect import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, LogFilter, LogFilterFlowRunId
from prefect.logging.handlers import APILogHandler

from prefect_acestep import gc_flow, generate_flow, pipeline_flow, replay_flow
from prefect_acestep.stages.conversions import restore
from prefect_acestep.stages.errors import InvalidStageRequest
from tests.flow_helpers import default_store as store
from tests.flow_helpers import flow_run_id, pipeline_request, task_runs, wait_until

BACKEND = "counting-story"
pytestmark = pytest.mark.usefixtures("fast_prefect", "latent_dir", "counting_backend")


def artifacts(state) -> list:
    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id(state)]))
        )


def flow_run_name(state) -> str:
    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id(state)).name


def test_a_pipeline_run_tells_what_each_stage_made(tmp_path: Path) -> None:
    request = pipeline_request(
        [{"stage_type": "generate", "seed": 1, "checkpoint_steps": [2], "preview": True},
         {"stage_type": "refine", "denoise": 0.5, "seed": 2},
         {"stage_type": "refine", "denoise": 0.6, "seed": 3}],
        backend=BACKEND,
    )  # fmt: skip
    state = pipeline_flow(request, out_dir=str(tmp_path), return_state=True)
    hops = state.result()
    assert flow_run_name(state) == "warm piano ballad with soft drums · generate → refine → refine"
    sources = [hop[0].params.src_latent_id for hop in hops]  # recorded as the latent each stage read
    assert sources == [None, hops[0][0].latent_id, hops[1][0].latent_id]  # refines read the stage before

    found = artifacts(state)
    stage_runs = {run.name: run.id for run in task_runs(flow_run_id(state)) if not run.name.startswith("decode")}
    listen = {a.key: a for a in found if a.key is not None and a.key.startswith("acestep-stage-")}
    assert set(listen) == {"acestep-stage-0", "acestep-stage-2"}  # the preview stage and the last one
    [generate_run] = [run_id for name, run_id in stage_runs.items() if name.startswith("generate[0] seed=1")]
    assert listen["acestep-stage-0"].task_run_id == generate_run
    assert "<audio controls" in listen["acestep-stage-2"].data and "data:image/webp;base64," in listen["acestep-stage-2"].data
    tables = [a for a in found if a.type == "table"]
    assert {a.task_run_id for a in tables} == set(stage_runs.values())
    [summary] = [a for a in found if a.key == "acestep-pipeline-summary"]
    assert summary.data.count("<audio controls") == 2
    assert f"- 1 refine from `{hops[0][0].latent_id}`: stage_type=refine" in summary.data

    APILogHandler().flush()

    def stage_lines() -> list[str]:
        with get_client(sync_client=True) as client:
            logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id(state)])))
        return [log.message for log in logs if log.message.startswith("stage ") and log.level == 20]

    wait_until(lambda: len(stage_lines()) == 3, "one log line per stage")
    first = hops[0][0]
    assert f"stage 0 generate: latent {first.latent_id} (1 sample(s), seeds 1); checkpoints: 2: " in stage_lines()[0]
    assert f"audio: {first.audio_path}" in stage_lines()[0] and "audio: not decoded" in stage_lines()[1]


def test_a_cached_stage_still_gets_its_table(tmp_path: Path) -> None:
    request = pipeline_request([{"seed": 4}], backend=BACKEND)
    pipeline_flow(request, out_dir=str(tmp_path))
    state = pipeline_flow(request, out_dir=str(tmp_path), return_state=True)
    assert [run.state.name for run in task_runs(flow_run_id(state))] == ["Cached"]
    assert len([a for a in artifacts(state) if a.type == "table"]) == 1


def test_a_pipeline_with_mistakes_runs_nothing_and_names_each_problem(tmp_path: Path) -> None:
    bad = {
        "caption": "piano", "duration": 2.0, "backend": BACKEND,
        "stages": [{"seed": 1}, {"stage_type": "refine", "src_stage": 4},
                   {"stage_type": "repaint", "repainting_start": 0.5, "repainting_end": 3.0}],
    }  # fmt: skip
    state = pipeline_flow(bad, out_dir=str(tmp_path), return_state=True)
    lines = [
        "stage 1 (refine) · Source stage (src_stage): 4 is not an earlier stage",
        "stage 2 (repaint) · Repaint end (s) (repainting_end): 3 s is past the end of the clip: its Duration (s) is 2 s",
    ]
    assert state.is_failed() and all(line in state.message for line in lines)
    assert flow_run_name(state) == "pipeline · invalid request"
    assert task_runs(flow_run_id(state)) == [] and store().list() == []
    [problems] = [a for a in artifacts(state) if a.key == "acestep-request-problems"]
    assert problems.data.startswith("# ACE-Step pipeline: 2 problem(s), nothing ran") and all(l in problems.data for l in lines)
    with pytest.raises(InvalidStageRequest, match="stage 1 \\(refine\\) · Source stage"):
        pipeline_flow(bad, out_dir=str(tmp_path))


def test_a_resume_that_changes_the_music_says_so(tmp_path: Path) -> None:
    [made] = pipeline_flow(pipeline_request([{"seed": 6, "checkpoint_steps": [2]}], backend=BACKEND), out_dir=str(tmp_path))[0]
    checkpoint = made.checkpoints[0].latent_id
    request = restore(store().record(checkpoint)).model_copy(update={"caption": "bright acoustic folk", "bpm": 110})
    state = generate_flow(request, out_dir=str(tmp_path), return_state=True)
    assert state.is_completed()
    assert flow_run_name(state) == f"bright acoustic folk · generate from {checkpoint}"
    [summary] = [a for a in artifacts(state) if a.key == "acestep-generate-summary"]
    assert (
        f"Stage 0 changes the music of its source `{checkpoint}`: caption 'bright acoustic folk' (source: "
        "'warm piano ballad with soft drums'), bpm 110 (source: 96)"
    ) in summary.data
    exact = generate_flow(restore(store().record(checkpoint)), out_dir=str(tmp_path))
    assert store().record(exact[0].latent_id).digest == store().record(made.latent_id).digest


def test_replay_and_gc_runs_are_named_for_what_they_do(tmp_path: Path) -> None:
    [made] = pipeline_flow(pipeline_request([{"seed": 7}], backend=BACKEND), out_dir=str(tmp_path))[0]
    state = replay_flow(made.latent_id, overrides={"seed": 8}, out_dir=str(tmp_path), return_state=True)
    assert flow_run_name(state) == f"replay {made.latent_id} with seed"
    assert flow_run_name(gc_flow(return_state=True)) == "gc · default store"


def test_every_flow_validates_its_parameters_when_pickled_by_value() -> None:
    """A flow served from a script runs pickled by value: its function keeps only the globals its
    body uses, so its signature must be real types (no string annotations to resolve there)."""
    import importlib

    import cloudpickle

    import prefect_acestep.flows as flows

    parameters = {
        "gc_flow": {"store": "mine"},
        "generate_flow": {"request": {"caption": "x"}, "out_dir": "out"},
        "pipeline_flow": {"request": {"caption": "x", "stages": [{}]}},
        "replay_flow": {"latent_id": "L", "overrides": {"seed": 2}},
        "simple_flow": {"request": {"description": "a calm piano loop"}},
        "variations_flow": {"request": {"caption": "x", "keyscale": "A minor"}, "seeds": [1, 2]},
    }
    assert set(parameters) == set(flows.__all__)
    for name, given in parameters.items():
        flow_object = getattr(flows, name)
        module = importlib.import_module(flow_object.fn.__module__)
        cloudpickle.register_pickle_by_value(module)
        try:
            copy = cloudpickle.loads(cloudpickle.dumps(flow_object))
        finally:
            cloudpickle.unregister_pickle_by_value(module)
        validated = copy.validate_parameters(given)
        assert set(given) <= set(validated), name
