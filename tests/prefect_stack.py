"""A real Prefect stack for integration tests: `prefect server start` on loopback with its own
PREFECT_HOME, the project's CLI commands run against it, workers and servers as subprocesses in their
own process groups (killed as groups at the end), and small REST helpers to check what the API holds.

Nothing here talks to the network beyond 127.0.0.1; analytics are off.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
SHORT_SONG = {
    "caption": "warm electric piano with soft drums",
    "keyscale": "D minor",
    "bpm": 96,
    "duration": 2.0,
    "instrumental": True,
}
"""The shared fields of the pipelines the stack tests run (add ``stages``)."""
BIN = Path(sys.executable).parent
PREFECT = str(BIN / "prefect")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stack_env(home: Path, api_url: str | None = None, **extra: str) -> dict[str, str]:
    """This process's environment, pointed at a private Prefect home (and server, when given)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_CLI_PROMPT="false",
        PREFECT_LOGGING_LEVEL="INFO",
    )
    if api_url is not None:
        env["PREFECT_API_URL"] = api_url
    env.update(extra)
    return env


class Processes:
    """Subprocesses started in new sessions, so each can be killed with all its children."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(self, name: str, args: list[str], env: dict[str, str], cwd: Path = REPO) -> subprocess.Popen[bytes]:
        log = self.log_dir / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(args, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.started.append((proc, log))
        return proc

    def logs(self) -> str:
        return "\n".join(f"----- {log.name} -----\n{log.read_text(errors='replace')[-6000:]}" for _, log in self.started)

    def kill_all(self) -> None:
        for proc, _ in reversed(self.started):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=30)


def wait_for(what: str, check: Callable[[], Any], timeout: float, processes: Processes, interval: float = 0.5) -> Any:
    """Poll ``check`` until it returns a truthy value; on timeout fail with the subprocess logs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{processes.logs()}")


def start_server(processes: Processes, home: Path, ui: bool, **settings: str) -> str:
    """`prefect server start` on a free loopback port (with its UI, talking to this API, when
    ``ui``; with extra Prefect ``settings`` in its environment); returns the API URL once
    /api/health answers."""
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = stack_env(
        home,
        PREFECT_SERVER_UI_ENABLED="true" if ui else "false",
        PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED="true",
        PREFECT_SERVER_API_HOST="127.0.0.1",
        **settings,
    )
    if ui:
        env["PREFECT_SERVER_UI_API_URL"] = api
    processes.start("server", [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)], env)

    def healthy() -> bool:
        try:
            return httpx.get(f"{api}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for("the Prefect server's /api/health", healthy, timeout=120, processes=processes)
    return api


def run_cli(args: list[str], env: dict[str, str], timeout: float = 120) -> str:
    """Run a CLI command to completion and return its stdout; fail with its output when it fails."""
    done = subprocess.run(args, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


class Api:
    """The few REST calls the tests check results with. A busy server (SQLite locked under load)
    answers 503 or 429; like Prefect's own client, those are retried with a short backoff."""

    BUSY = frozenset({429, 503})

    def __init__(self, url: str) -> None:
        self.client = httpx.Client(base_url=url, timeout=30)

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        for attempt in range(8):
            response = self.client.request(method, path, **kwargs)
            if response.status_code not in self.BUSY:
                break
            time.sleep(0.25 * 2**attempt)
        response.raise_for_status()
        return response

    def post(self, path: str, body: dict[str, Any]) -> Any:
        return self._send("POST", path, json=body).json()

    def get(self, path: str) -> Any:
        return self._send("GET", path).json()

    def delete(self, path: str) -> None:
        self._send("DELETE", path)

    def deployment(self, flow_name: str, name: str) -> dict[str, Any]:
        return self.get(f"/deployments/name/{flow_name}/{name}")

    def deployments(self) -> list[dict[str, Any]]:
        return self.post("/deployments/filter", {})

    def flow_run(self, flow_run_id: str) -> dict[str, Any]:
        return self.get(f"/flow_runs/{flow_run_id}")

    def artifacts(self, flow_run_id: str) -> list[dict[str, Any]]:
        return self.post("/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}})

    def create_flow_run(self, deployment_id: str, parameters: dict[str, Any]) -> str:
        return self.post(f"/deployments/{deployment_id}/create_flow_run", {"parameters": parameters})["id"]

    def wait_completed(self, flow_run_id: str, processes: Processes, timeout: float = 120) -> dict[str, Any]:
        def finished() -> dict[str, Any] | None:
            run = self.flow_run(flow_run_id)
            return run if run["state_type"] in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"} else None

        run = wait_for(f"flow run {flow_run_id} to finish", finished, timeout, processes)
        assert run["state_type"] == "COMPLETED", f"flow run ended {run['state_type']}: {run['state']}\n{processes.logs()}"
        return run


def table_rows(artifact: dict[str, Any]) -> list[dict[str, Any]]:
    """A table artifact's rows (the API stores the table as a JSON string)."""
    data = artifact["data"]
    return json.loads(data) if isinstance(data, str) else data
