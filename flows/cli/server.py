"""Which Prefect server a command talks to, and the Prefect settings the command line runs flows with.

The server, first match wins:

1. ``PREFECT_API_URL`` (environment or the active Prefect profile): that server.
2. The local server at Prefect's own server address settings (``PREFECT_SERVER_API_HOST`` and
   ``PREFECT_SERVER_API_PORT``, 127.0.0.1:4200 unless changed) when it answers ``/api/health``:
   what ``prefect server start --background`` (or a ``prefect server start`` in another shell)
   runs. A command then pays no server start, and its runs show in that server's UI.
3. Otherwise a temporary server for this one command (Prefect's ephemeral mode). Its first start on
   a fresh ``PREFECT_HOME`` creates the database (all migrations), and on a loaded machine that took
   longer than Prefect's default start limit of 20 s, so the first command of a new user failed; the
   limit here is ``EPHEMERAL_START_LIMIT_S``, which fits a cold start on a busy 2-core machine and
   still ends a start that hangs. A command that runs flows says on stderr how to keep a server
   running instead.

``prefect-acestep server start`` keeps a local server running: ``prefect server start`` in its own
session, its output in ``$PREFECT_HOME/server.log``, its pid in ``$PREFECT_HOME/server.pid`` (where
``prefect server stop`` looks too), and it returns once the server answers. Prefect's own
``prefect server start --background`` (3.9.1) hands the server pipes for its output that nobody
reads once the starting command has exited, and returns before the server answers; tried here on a
machine without network and with Prefect's telemetry on, that server exited within seconds, its
first output being the telemetry error. Here the output goes to a file, and telemetry is off.

Flow heartbeats: Prefect's flow engine sends a heartbeat event every 180 s from a thread that
sleeps in one-second steps, and joins that thread when a flow ends, so every flow returns up to a
second late. Heartbeats let an automation mark a run whose process died as crashed; for a
command in a terminal, its person sees the process die, so the command line runs its flows without
them. Deployment runs (workers, ``serve``) keep Prefect's default: their processes run unattended,
and there the join happens after the run's final state is recorded. Setting
``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` (environment or profile) keeps heartbeats on here too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from prefect.settings import (
    PREFECT_API_URL,
    PREFECT_HOME,
    PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
    PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
    get_current_settings,
    temporary_settings,
)

from prefect_acestep.flows.cli.latents import JsonOption
from prefect_acestep.flows.cli.output import emit

EPHEMERAL_START_LIMIT_S = 300
"""Start limit of a temporary server (Prefect counts it in its 0.1 s polling steps, so the wall
time allowed is at least this). On a shared 2-core machine running two extra CPU-burning processes
a cold start took about 20 s, and Prefect's own limit (20 polling seconds) failed 2 tries of 2;
this one fits a machine many times slower and still ends a start that hangs."""

HEALTH_TIMEOUT_S = 2.0
START_HINT = "prefect-acestep server start"
PID_FILE = "server.pid"
"""The name ``prefect server start --background`` and ``prefect server stop`` use."""
LOG_FILE = "server.log"


def local_server_url() -> str:
    """The API URL of a server started with Prefect's server address settings on this machine."""
    server = get_current_settings().server.api
    host = "127.0.0.1" if server.host in {"0.0.0.0", "::", ""} else server.host
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{server.port}/api"


def answers(api_url: str) -> bool:
    """True when a Prefect API answers ``/health`` at ``api_url`` (one local HTTP request; plain
    urllib, since an httpx client builds a TLS context first, ~50 ms even for http)."""
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=HEALTH_TIMEOUT_S) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def command_settings() -> tuple[dict[Any, Any], str | None]:
    """The settings a command runs with, and the server it found (None: a temporary one)."""
    current = get_current_settings()
    updates: dict[Any, Any] = {}
    if "heartbeat_frequency" not in current.flows.model_fields_set:
        updates[PREFECT_FLOWS_HEARTBEAT_FREQUENCY] = None
    url = current.api.url
    if url is None:
        local = local_server_url()
        if answers(local):
            url = local
            updates[PREFECT_API_URL] = local
        elif "startup_timeout_seconds" not in current.server.ephemeral.model_fields_set:
            updates[PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS] = EPHEMERAL_START_LIMIT_S
    return updates, url


@contextmanager
def prefect_for_command() -> Iterator[str | None]:
    """Enter the command's Prefect settings (``command_settings``); yields the server found."""
    updates, url = command_settings()
    with temporary_settings(updates=updates):
        yield url


def flows_start() -> None:
    """Called by a command once its input is read and checked, right before it runs a flow: without
    a server, say on stderr that a temporary one starts and how to keep one running instead. (Said
    earlier, it stood above the one-line error of a request that never ran.)"""
    if PREFECT_API_URL.value() is None:
        print(
            f"No Prefect server at {local_server_url()}: this command starts a temporary one. "
            f"Keep one running with `{START_HINT}` (UI at {local_server_url().removesuffix('/api')}); "
            "commands then use it.",
            file=sys.stderr,
        )


app = typer.Typer(help="Keep a local Prefect server running, so commands need not start one.", no_args_is_help=True)


class ServerStartError(RuntimeError):
    """The local server did not come up; the message names its log."""


def start_local_server(timeout_s: float = EPHEMERAL_START_LIMIT_S) -> tuple[str, bool]:
    """Start ``prefect server start`` at the local address unless a server answers there; returns
    the API URL and whether this call started it."""
    url = local_server_url()
    if answers(url):
        return url, False
    home = Path(PREFECT_HOME.value()).expanduser()
    home.mkdir(parents=True, exist_ok=True)
    server = get_current_settings().server.api
    env = {**os.environ, **get_current_settings().to_environment_variables(exclude_unset=True)}
    with (home / LOG_FILE).open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", server.host, "--port", str(server.port)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )  # fmt: skip
    pid_file = home / PID_FILE
    pid_file.write_text(str(process.pid))
    deadline = time.monotonic() + timeout_s
    while not answers(url):
        if process.poll() is not None or time.monotonic() > deadline:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            pid_file.unlink(missing_ok=True)
            how = f"exited with code {process.returncode}" if process.returncode != -signal.SIGKILL else "did not answer"
            raise ServerStartError(f"the Prefect server at {url} {how} within {timeout_s:g} s; see {home / LOG_FILE}")
        time.sleep(0.2)
    return url, True


@app.command("start")
def start(
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the server to answer.")] = EPHEMERAL_START_LIMIT_S,
    as_json: JsonOption = False,
) -> None:
    """Start a local Prefect server in the background (address: PREFECT_SERVER_API_HOST/PORT)."""
    try:
        url, started = start_local_server(timeout)
    except ServerStartError as error:
        print(f"error: {error}", file=sys.stderr)
        raise typer.Exit(2) from None
    ui = url.removesuffix("/api")
    what = "Started a Prefect server" if started else "A Prefect server is already running"
    emit(
        {"api_url": url, "ui_url": ui, "started": started},
        as_json,
        lambda _: typer.echo(f"{what} at {url} (UI: {ui}). Commands use it; stop it with `prefect-acestep server stop`."),
    )


@app.command("stop")
def stop(as_json: JsonOption = False) -> None:
    """Stop the local server that `server start` (or `prefect server start --background`) started."""
    pid_file = Path(PREFECT_HOME.value()).expanduser() / PID_FILE
    pid = int(pid_file.read_text()) if pid_file.exists() else None
    if pid is not None:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        pid_file.unlink(missing_ok=True)
    said = "No local server was started from this PREFECT_HOME." if pid is None else f"Stopped the Prefect server (process {pid})."
    emit({"stopped": pid}, as_json, lambda _: typer.echo(said))
