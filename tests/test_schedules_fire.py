"""Scheduled deployments run: a real ``prefect server start`` with its scheduler service (loop
shortened to one second through Prefect's settings), the gc flow served with a five-second
interval schedule, and the scheduler's runs seen created and one completed by the serving process,
its gc report published. Prefect 3.8.8 with SQLAlchemy 2.1.9 failed every scheduler loop
(``InvalidRequestError: Can't evaluate bulk DML statement``): deployments showed their schedule and
never ran, which a check of the schedule alone did not see."""

from __future__ import annotations

import sys
from datetime import datetime

import pytest

from prefect_stack import Api, Processes, stack_env, start_server, wait_for

pytestmark = pytest.mark.timeout(300)

INTERVAL_S = 5
SERVE = (
    "from prefect_acestep.flows.maintenance import gc_flow; "
    f"gc_flow.serve(name='gc-every-{INTERVAL_S}s', interval={INTERVAL_S})"
)


def test_the_scheduler_creates_runs_and_a_served_one_completes(tmp_path):
    processes = Processes(tmp_path)
    try:
        api_url = start_server(
            processes,
            tmp_path / "server-home",
            ui=False,
            PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="1",
        )
        api = Api(api_url)
        env = stack_env(
            tmp_path / "serve-home",
            api_url,
            ACE_LATENT_DIR=str(tmp_path / "latents"),
            PREFECT_RUNNER_POLL_FREQUENCY="1",
        )
        processes.start("serve", [sys.executable, "-c", SERVE], env)
        deployment = wait_for(
            "the served deployment", lambda: _deployment(api), timeout=120, processes=processes
        )
        assert [s["schedule"]["interval"] for s in deployment["schedules"]] == [INTERVAL_S]

        def scheduled_runs() -> list[dict]:
            return api.post("/flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": [deployment["id"]]}}})

        def a_completed_run() -> dict | None:
            done = [run for run in scheduled_runs() if run["state_type"] == "COMPLETED"]
            return done[0] if done else None

        completed = wait_for("a scheduled run to complete", a_completed_run, timeout=150, processes=processes)
        runs = scheduled_runs()
        assert len(runs) >= 2 and all(run["auto_scheduled"] for run in runs), runs
        starts = sorted(datetime.fromisoformat(run["expected_start_time"]) for run in runs)
        assert {(b - a).total_seconds() for a, b in zip(starts, starts[1:])} == {float(INTERVAL_S)}
        assert completed["state_name"] == "Completed"
        [report] = [a for a in api.artifacts(completed["id"]) if a["key"] == "acestep-gc"]
        assert str(tmp_path / "latents") in report["data"]
        server_log = (tmp_path / "server.log").read_text()
        assert "InvalidRequestError" not in server_log and "Traceback" not in server_log, server_log[-4000:]
    finally:
        processes.kill_all()


def _deployment(api: Api) -> dict | None:
    found = [d for d in api.deployments() if d["name"] == f"gc-every-{INTERVAL_S}s"]
    return found[0] if found else None
