"""Which Prefect server the command line uses, as a user meets it, in real processes: a first
command on a fresh ``PREFECT_HOME`` with no server, on a machine kept busy by two CPU-burning
processes, completes (its temporary server's cold start fits the start limit); a server kept
running with ``prefect-acestep server start`` is found without ``PREFECT_API_URL`` and used (no
server start, the run in its API), and ``server stop`` ends it; flow heartbeats are off for the
command line unless configured."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from prefect.settings import (
    PREFECT_API_URL,
    PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
    PREFECT_SERVER_API_PORT,
    PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
    temporary_settings,
)

from prefect_stack import BIN, Api, Processes, free_port, run_cli, stack_env, wait_for
from prefect_acestep.flows.cli.server import EPHEMERAL_START_LIMIT_S, command_settings
from prefect_acestep.stages.store import LatentStore

CLI = str(BIN / "prefect-acestep")
GENERATE = ["generate", "--caption", "soft piano", "--duration", "2", "--steps", "4", "--seed", "3", "--json"]
TEMPORARY = "this command starts a temporary one"

pytestmark = pytest.mark.timeout(900)


def _env(tmp_path: Path, name: str, port: int) -> dict[str, str]:
    """A fresh Prefect home, no PREFECT_API_URL, and Prefect's local server address on ``port``."""
    return stack_env(
        tmp_path / f"{name}-home",
        None,
        PREFECT_SERVER_API_PORT=str(port),
        ACE_LATENT_DIR=str(tmp_path / f"{name}-latents"),
        ACE_AUDIO_DIR=str(tmp_path / f"{name}-audio"),
    )


def test_a_first_command_on_a_fresh_home_works_on_a_busy_machine(tmp_path: Path) -> None:
    processes = Processes(tmp_path)
    try:
        for index in range(2):
            processes.start(f"burner-{index}", [sys.executable, "-c", "while True: pass"], os.environ.copy())
        env = _env(tmp_path, "fresh", free_port())  # nothing listens there: no server
        done = run_cli([CLI, *GENERATE, "--out", str(tmp_path / "audio")], env, timeout=EPHEMERAL_START_LIMIT_S + 300)
        [result] = json.loads(done)
        assert Path(result["audio_path"]).exists()
        assert all(proc.poll() is None for proc, _ in processes.started), "a burner stopped early"
    finally:
        processes.kill_all()


def test_a_running_local_server_is_found_and_used(tmp_path: Path) -> None:
    port = free_port()
    env = _env(tmp_path, "local", port)
    api_url = f"http://127.0.0.1:{port}/api"
    started = json.loads(run_cli([CLI, "server", "start", "--json"], env, timeout=EPHEMERAL_START_LIMIT_S + 60))
    pid = int((tmp_path / "local-home" / "server.pid").read_text())
    try:
        assert started == {"api_url": api_url, "ui_url": api_url.removesuffix("/api"), "started": True}
        assert json.loads(run_cli([CLI, "server", "start", "--json"], env))["started"] is False
        done = subprocess.run([CLI, *GENERATE, "--out", str(tmp_path / "audio")], env=env, capture_output=True,
                              text=True, timeout=300)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert TEMPORARY not in done.stderr and "Starting temporary server" not in done.stderr
        [result] = json.loads(done.stdout)
        record = LatentStore(tmp_path / "local-latents").record(result["latent_id"])
        runs = Api(api_url).post("/flow_runs/filter", {})
        assert [run["id"] for run in runs] == [record.flow_run_id]
        assert runs[0]["state_type"] == "COMPLETED"
    finally:
        stopped = json.loads(run_cli([CLI, "server", "stop", "--json"], env))
        assert stopped == {"stopped": pid}
        processes = Processes(tmp_path)

        def gone() -> bool:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            return False

        try:
            wait_for("the stopped server's process to end", gone, timeout=60, processes=processes)
        except AssertionError:
            os.killpg(pid, signal.SIGKILL)
            raise
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{api_url}/health", timeout=2)


def test_command_settings_keep_what_the_user_configured() -> None:
    """Heartbeats off and a cold-start limit for a temporary server, unless configured; a
    configured PREFECT_API_URL is used as it is."""
    unused = free_port()
    with temporary_settings(
        updates={PREFECT_SERVER_API_PORT: unused}, restore_defaults={PREFECT_API_URL}
    ):
        updates, url = command_settings()
        assert url is None
        assert updates == {
            PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None,
            PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: EPHEMERAL_START_LIMIT_S,
        }
        with temporary_settings(
            updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 60, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: 45}
        ):
            assert command_settings() == ({}, None)
    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        assert command_settings() == ({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}, "http://127.0.0.1:9/api")
