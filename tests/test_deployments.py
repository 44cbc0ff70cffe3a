"""The deployments as a person uses them: a real `prefect server start`, a `process` work pool,
`prefect deploy --all` from deployments/prefect.yaml, a real worker, a pipeline run triggered with
parameters from the CLI, then the API and the store checked; and the same deployments served by
deployments/serve.py without a work pool."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
from pathlib import Path

import pytest
import yaml

from prefect_stack import REPO, SHORT_SONG, Api, Processes, run_cli, stack_env, start_server, table_rows, wait_for
from prefect_acestep.stages.store import LatentStore

PREFECT_YAML = REPO / "deployments" / "prefect.yaml"
POOL = "acestep-process"
DEPLOYMENTS = {"demo", "custom", "replay", "simple", "variations", "hourly"}
SMALL_PIPELINE = {
    **SHORT_SONG,
    "stages": [
        {"stage_type": "generate", "seed": 3, "checkpoint_steps": [4]},
        {"stage_type": "refine", "src_stage": 0, "denoise": 0.5, "seed": 4},
    ],
}

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("deployments")
    processes = Processes(root)
    try:
        api_url = start_server(processes, root / "server-home", ui=False)
        yield root, api_url, processes
    finally:
        processes.kill_all()


def _client_env(root: Path, api_url: str, name: str) -> dict[str, str]:
    return stack_env(
        root / f"{name}-home",
        api_url,
        ACE_LATENT_DIR=str(root / f"{name}-latents"),
        ACE_AUDIO_DIR=str(root / f"{name}-audio"),
        PREFECT_WORKER_QUERY_SECONDS="1",
        PREFECT_RUNNER_POLL_FREQUENCY="1",
    )


def _latent_ids(artifacts: list[dict]) -> dict[str, list[str]]:
    """Latent IDs per stage type from the run's stage table artifacts."""
    ids: dict[str, list[str]] = {}
    for artifact in artifacts:
        if artifact["type"] == "table" and artifact["task_run_id"] is not None:
            for row in table_rows(artifact):
                ids.setdefault(row["stage"], []).append(row["latent_id"])
    return ids


def _check_stored(latent_dir: Path, ids: list[str], flow_run_id: str) -> None:
    store = LatentStore(latent_dir, ttl_hours=24)
    for latent_id in ids:
        record = store.record(latent_id)
        assert record.flow_run_id == flow_run_id, (latent_id, record.flow_run_id)


def test_prefect_yaml_parameters_are_valid_requests():
    """Every default parameter set in prefect.yaml validates against its flow's request model, so a
    run started from the UI without edits cannot fail on its own defaults."""
    from prefect.flows import load_flow_from_entrypoint
    from prefect.utilities.callables import parameter_schema

    entries = yaml.safe_load(PREFECT_YAML.read_text())["deployments"]
    assert {entry["name"] for entry in entries} == DEPLOYMENTS
    for entry in entries:
        flow = load_flow_from_entrypoint(entry["entrypoint"])
        schema = parameter_schema(flow)
        if entry["name"] == "replay":  # its links fill in the latent; nothing else is needed
            assert "parameters" not in entry and schema.required == ["latent_id"]
            continue
        flow.validate_parameters(entry.get("parameters") or {})
        assert set(entry.get("parameters") or {}) <= set(schema.properties)


def test_serve_refuses_what_it_cannot_serve(tmp_path):
    """serve.py reads prefect.yaml: an unknown deployment name or a schedule it would drop is an
    error, not a silently smaller set of deployments."""
    sys.path.insert(0, str(REPO / "deployments"))
    try:
        import serve
    finally:
        sys.path.remove(str(REPO / "deployments"))
    with pytest.raises(ValueError, match=r"no deployment named \['nope'\]"):
        serve.deployments(["nope"])
    broken = tmp_path / "prefect.yaml"
    entries = yaml.safe_load(PREFECT_YAML.read_text())
    entries["deployments"][-1]["schedules"] = [{"interval": 3600}]
    broken.write_text(yaml.safe_dump(entries))
    with pytest.raises(ValueError, match="only cron schedules"):
        serve.deployments(["hourly"], path=broken)
    assert [d.name for d in serve.deployments(["demo", "hourly"])] == ["demo", "hourly"]


def test_deploy_work_pool_worker_and_pipeline_run(stack):
    root, api_url, processes = stack
    env = _client_env(root, api_url, "worker")
    api = Api(api_url)

    run_cli([sys.executable, "-m", "prefect", "work-pool", "create", POOL, "--type", "process"], env)
    output = run_cli(
        [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all", "--prefect-file", str(PREFECT_YAML)], env
    )
    assert "acestep-gc/hourly" in output

    deployments = {f"{d['name']}": d for d in api.deployments()}
    assert set(deployments) == DEPLOYMENTS
    assert {d["work_pool_name"] for d in deployments.values()} == {POOL}
    assert deployments["demo"]["pull_steps"] == [
        {"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}
    ]
    hourly = api.deployment("acestep-gc", "hourly")
    assert [s["schedule"]["cron"] for s in hourly["schedules"]] == ["0 * * * *"]
    assert all(s["active"] for s in hourly["schedules"])

    processes.start("worker", [sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL], env)
    output = run_cli(
        [sys.executable, "-m", "prefect", "deployment", "run", "acestep-pipeline/demo",
         "--params", json.dumps({"request": SMALL_PIPELINE})],
        env,
    )  # fmt: skip
    flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", output).group(1)
    run = api.wait_completed(flow_run_id, processes, timeout=150)
    assert run["parameters"]["request"]["duration"] == 2.0

    artifacts = api.artifacts(flow_run_id)
    ids = _latent_ids(artifacts)
    assert set(ids) == {"generate", "refine"}
    summary = [a for a in artifacts if a["key"] == "acestep-pipeline-summary"]
    assert len(summary) == 1
    for latent_id in ids["generate"] + ids["refine"]:
        assert f"`{latent_id}`" in summary[0]["data"]
    checkpoints = [row["checkpoints"] for a in artifacts if a["type"] == "table" for row in table_rows(a)]
    checkpoint_ids = re.findall(r"4: (\w+)", " ".join(checkpoints[:2]))
    assert len(checkpoint_ids) == 1
    _check_stored(root / "worker-latents", ids["generate"] + ids["refine"] + checkpoint_ids, flow_run_id)
    audio = sorted((root / "worker-audio").glob("*.wav"))
    assert [path.name for path in audio] == [f"stage1-refine-{ids['refine'][0]}_0.wav"]


def test_serve_script_serves_the_same_deployments(stack):
    """deployments/serve.py registers the prefect.yaml deployments (schedule included) with no work
    pool, and runs a triggered simple-mode run in its own subprocess. The work-pool deployments of
    the same names are deleted first: serving over them would keep their pool, and the worker could
    take the run."""
    root, api_url, processes = stack
    env = _client_env(root, api_url, "serve")
    api = Api(api_url)
    for deployment in api.deployments():
        api.delete(f"/deployments/{deployment['id']}")
    processes.start("serve", [sys.executable, str(REPO / "deployments" / "serve.py")], env)

    def served() -> dict | None:
        found = {d["name"]: d for d in api.deployments() if d["work_pool_name"] is None}
        return found if len(found) == len(DEPLOYMENTS) else None

    deployments = wait_for("serve.py to register its deployments", served, timeout=90, processes=processes)
    assert [s["schedule"]["cron"] for s in deployments["hourly"]["schedules"]] == ["0 * * * *"]
    entries = {entry["name"]: entry for entry in yaml.safe_load(PREFECT_YAML.read_text())["deployments"]}
    for name, deployment in deployments.items():
        assert deployment["parameters"] == entries[name].get("parameters", {}), name
        assert deployment["entrypoint"] == entries[name]["entrypoint"], name

    parameters = {"request": {"description": "a calm piano loop", "duration": 2.0, "seed": 5}}
    flow_run_id = api.create_flow_run(deployments["simple"]["id"], parameters)
    api.wait_completed(flow_run_id, processes, timeout=120)
    ids = _latent_ids(api.artifacts(flow_run_id))
    assert list(ids) == ["generate"]
    _check_stored(root / "serve-latents", ids["generate"], flow_run_id)


def _finished(api: Api, flow_run_id: str, processes: Processes) -> dict:
    def done() -> dict | None:
        run = api.flow_run(flow_run_id)
        return run if run["state_type"] in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"} else None

    return wait_for(f"flow run {flow_run_id} to finish", done, timeout=120, processes=processes)


def test_a_deployment_run_writes_audio_only_under_the_workers_audio_root(stack, tmp_path):
    """Issue 14, item 3: ``out_dir`` from a run form stays under the worker's ACE_AUDIO_DIR. Before,
    ``../x`` and any absolute path were written to. A folder under the root is fine; ``..`` and an
    absolute path elsewhere fail the run before any stage, and nothing is written there."""
    root, api_url, processes = stack
    env = _client_env(root, api_url, "roots")
    api = Api(api_url)
    for proc, log in processes.started:  # another serve.py of the same names would take runs too
        if log.stem == "serve" and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    for deployment in api.deployments():
        api.delete(f"/deployments/{deployment['id']}")
    processes.start("serve-roots", [sys.executable, str(REPO / "deployments" / "serve.py"), "custom"], env)
    custom = wait_for("serve.py to register custom", lambda: next(
        (d for d in api.deployments() if d["name"] == "custom" and d["work_pool_name"] is None), None
    ), timeout=90, processes=processes)  # fmt: skip
    request = {**SHORT_SONG, "seed": 9}
    audio_root = root / "roots-audio"

    inside = api.create_flow_run(custom["id"], {"request": request, "out_dir": "takes/one"})
    assert _finished(api, inside, processes)["state_type"] == "COMPLETED", processes.logs()
    assert [p.suffix for p in (audio_root / "takes" / "one").iterdir()] == [".wav"]

    outside = tmp_path / "not-the-audio-root"
    for out_dir in ("../escaped", str(outside), "~/escaped"):
        run = _finished(api, api.create_flow_run(custom["id"], {"request": request, "out_dir": out_dir}), processes)
        assert run["state_type"] == "FAILED" and "outside the audio root" in run["state"]["message"], run["state"]
    assert not (root / "escaped").exists() and not outside.exists()
    assert not (Path.home() / "escaped").exists()


def test_no_deployment_parameter_says_where_work_runs_or_names_code():
    """``variations_flow`` took ``dask_address``: a Dask scheduler sends pickled results, so a run
    form could make the worker run anyone's code. Where work runs is the worker's environment
    (ACE_DASK_ADDRESS) now; no flow parameter names a host, a lock manager or a module."""
    from prefect.flows import load_flow_from_entrypoint
    from prefect.utilities.callables import parameter_schema

    for entry in yaml.safe_load(PREFECT_YAML.read_text())["deployments"]:
        names = set(parameter_schema(load_flow_from_entrypoint(entry["entrypoint"])).properties)
        assert not {name for name in names if any(word in name for word in ("address", "host", "url", "module"))}
        assert names <= {"request", "store", "out_dir", "seeds", "n", "param_sets", "rank_by", "use_dask", "workers",
                         "latent_id", "overrides"}, names  # fmt: skip
