"""Prefect layer benchmark: ratios measured in one run, absolute times for information.

1. Orchestration overhead per stage: a three-stage pipeline through ``pipeline_flow`` (fresh seeds,
   so nothing is cached) against the same stages through ``run_stage`` plus ``decode_latent`` of
   the final stage (exactly the work the flow does), run in alternation, in ms per stage and as
   a ratio; a bare Prefect task's overhead (a flow of no-op tasks against an empty flow) for
   reference.
2. Cache: a second identical run of the pipeline against the first (target >= 10x faster), with
   every backend call counted (target: none on the second run, its audio file included).

Both are measured with Prefect's defaults and again with flow heartbeats off: Prefect 3.8 joins
the heartbeat thread at every flow's end, which waits out its current one-second sleep.

The Prefect API is a real server, on two databases: SQLite (Prefect's test harness, a local
``prefect server start`` by default) and PostgreSQL (what Prefect recommends for real use; a
throwaway local cluster). On SQLite the server answers some writes 503 while it records events
(SQLITE_BUSY_SNAPSHOT), and Prefect's client retries them after 2 s: the report counts those.
Each timed run starts after a short pause so that the server has recorded the previous run's
events; the machine may be shared, so each figure is a median.

Run: .venv/bin/python bench/flow_bench.py [--repeats N] [--duration SECONDS] [--server sqlite|postgres|both]
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

if "PREFECT_HOME" not in os.environ:  # a private Prefect home, removed at exit
    os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="flow-bench-home-")
    atexit.register(shutil.rmtree, os.environ["PREFECT_HOME"], ignore_errors=True)
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

import httpx  # noqa: E402
from prefect import flow, task  # noqa: E402
from prefect.client.base import PrefectHttpxAsyncClient, PrefectHttpxSyncClient  # noqa: E402
from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings  # noqa: E402
from prefect.testing.utilities import prefect_test_harness  # noqa: E402

from prefect_acestep import pipeline_flow  # noqa: E402
from prefect_acestep.stages.decode import decode_latent  # noqa: E402
from prefect_acestep.stages.requests import PipelineRequest  # noqa: E402
from prefect_acestep.stages.runner import run_stage  # noqa: E402
from prefect_acestep.tasks.blocks import AceLatentStore  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.flow_helpers import counting, register_counting  # noqa: E402  (the embedded model, its calls counted)
from tests.prefect_stack import free_port  # noqa: E402

BACKEND = "bench-counting"
STAGES = 3
BARE_TASKS = 20
SETTLE_S = 1.0


def request(seed: int, duration: float) -> PipelineRequest:
    """generate -> refine -> repaint (the demo's first three stages), variant defaults (turbo, 8 steps)."""
    return PipelineRequest.model_validate(
        {
            "caption": "warm electric piano ballad with soft drums and a round bass",
            "keyscale": "D minor", "bpm": 96, "timesignature": "4", "duration": duration, "backend": BACKEND,
            "stages": [
                {"stage_type": "generate", "seed": seed},
                {"stage_type": "refine", "src_stage": 0, "denoise": 0.5, "seed": seed + 1},
                {"stage_type": "repaint", "src_stage": 1, "repainting_start": duration / 3,
                 "repainting_end": 2 * duration / 3, "seed": seed + 2},
            ],
        }
    )  # fmt: skip


class ApiClock:
    """Wall time the calling code spends in Prefect API calls (the server's share of a run),
    retries included, and how many calls the server answered 503 (retried by Prefect's client).

    Wraps the ``send`` of Prefect's HTTP clients (which holds their retry loop); the log shipper's
    background ``/logs/`` posts are left out, since nothing waits for them.
    """

    def __init__(self) -> None:
        self.seconds = 0.0
        self.busy = 0
        clock = self
        sync_send, async_send = PrefectHttpxSyncClient.send, PrefectHttpxAsyncClient.send
        raw_sync, raw_async = httpx.Client.send, httpx.AsyncClient.send

        def send(client, request, *args, **kwargs):
            start = time.perf_counter()
            try:
                return sync_send(client, request, *args, **kwargs)
            finally:
                clock.add(request, time.perf_counter() - start)

        async def asend(client, request, *args, **kwargs):
            start = time.perf_counter()
            try:
                return await async_send(client, request, *args, **kwargs)
            finally:
                clock.add(request, time.perf_counter() - start)

        def raw(client, request, *args, **kwargs):
            return clock.count(raw_sync(client, request, *args, **kwargs))

        async def araw(client, request, *args, **kwargs):
            return clock.count(await raw_async(client, request, *args, **kwargs))

        PrefectHttpxSyncClient.send, PrefectHttpxAsyncClient.send = send, asend  # type: ignore[method-assign]
        httpx.Client.send, httpx.AsyncClient.send = raw, araw  # type: ignore[method-assign]

    def add(self, request: httpx.Request, seconds: float) -> None:
        if not request.url.path.endswith("/logs/"):
            self.seconds += seconds

    def count(self, response: httpx.Response) -> httpx.Response:
        self.busy += response.status_code == 503
        return response

    def reset(self) -> None:
        self.seconds, self.busy = 0.0, 0


def timed(fn: Callable[[], object], api: ApiClock) -> tuple[float, float, int]:
    """Wall time of ``fn``, the part of it spent in API calls and the 503s among them, after a
    pause that lets the server record the previous run's events first (the pause is not timed)."""
    time.sleep(SETTLE_S)
    api.reset()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start, api.seconds, api.busy


def direct(req: PipelineRequest, out_dir: str) -> None:
    """What the pipeline flow does, without Prefect: run each stage, decode the last one."""
    store = AceLatentStore.from_env().get_store()
    latents: dict[int, str] = {}
    for index in range(len(req.stages)):
        latents[index] = run_stage(req.stage_params(index), store, stage_latents=latents)[0].latent_id
    decode_latent(store, latents[len(req.stages) - 1], out_dir)


@task
def noop(i: int) -> int:
    return i


@flow
def bare(tasks: int) -> None:
    for i in range(tasks):
        noop(i)


@contextmanager
def heartbeats(on: bool) -> Iterator[None]:
    if on:
        yield
        return
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


def measure(
    repeats: int, duration: float, seeds: Iterator[int], heartbeat: bool, api: ApiClock, out: str
) -> dict[str, float]:
    model = counting(BACKEND)
    direct_s, first, second, empty, tasks = [], [], [], [], []
    first_calls: list[int] = []
    second_calls: Counter[str] = Counter()
    with heartbeats(heartbeat):
        for _ in range(repeats):
            direct_s.append(timed(lambda: direct(request(next(seeds), duration), out), api)[0])
            req = request(next(seeds), duration)
            model.calls.clear()
            first.append(timed(lambda: pipeline_flow(req, out_dir=out), api))
            first_calls.append(sum(model.calls.values()))
            model.calls.clear()
            second.append(timed(lambda: pipeline_flow(req, out_dir=out), api))
            second_calls.update(model.calls)
            empty.append(timed(lambda: bare(0), api)[0])
            tasks.append(timed(lambda: bare(BARE_TASKS), api)[0])
    med = statistics.median
    first_s, second_s = med(t for t, _, _ in first), med(t for t, _, _ in second)
    return {
        "direct_ms": 1000 * med(direct_s) / STAGES,
        "flow_ms": 1000 * first_s / STAGES,
        "overhead_ms": 1000 * med(f - d for (f, _, _), d in zip(first, direct_s, strict=True)) / STAGES,
        "ratio": med(f / d for (f, _, _), d in zip(first, direct_s, strict=True)),
        "bare_task_ms": 1000 * (med(tasks) - med(empty)) / BARE_TASKS,
        "empty_flow_ms": 1000 * med(empty),
        "first_s": first_s,
        "first_api_s": med(a for _, a, _ in first),
        "second_s": second_s,
        "second_api_s": med(a for _, a, _ in second),
        "second_busy": med(b for _, _, b in second),
        "second_best_s": min(t for t, _, _ in second),
        "speedup": med(a / b for (a, _, _), (b, _, _) in zip(first, second, strict=True)),
        "first_calls": med(first_calls),
        "second_calls": sum(second_calls.values()),
    }


def report(name: str, m: dict[str, float]) -> None:
    print(f"\n{name}")
    print(f"  per stage: direct run_stage {m['direct_ms']:.0f} ms, pipeline flow {m['flow_ms']:.0f} ms -> "
          f"overhead {m['overhead_ms']:.0f} ms/stage, ratio {m['ratio']:.2f}x")  # fmt: skip
    print(f"  reference: bare Prefect task {m['bare_task_ms']:.1f} ms/task, empty flow {m['empty_flow_ms']:.0f} ms")
    verdict = "OK" if m["speedup"] >= 10 and m["second_calls"] == 0 else "MISSED"
    print(f"  cache: first run {m['first_s']:.2f} s ({m['first_calls']:.0f} backend calls), second identical run "
          f"{m['second_s']:.3f} s ({m['second_calls']} backend calls) -> {m['speedup']:.2f}x faster "
          f"[target >= 10x and 0 calls: {verdict}]")  # fmt: skip
    print(f"  where the second run's time goes: {m['second_api_s']:.3f} s in Prefect API calls, with "
          f"{m['second_busy']:.0f} answered 503 (database busy) and retried after Prefect's 2 s backoff "
          f"(first run: {m['first_api_s']:.3f} s in API calls); fastest second run "
          f"{m['second_best_s']:.3f} s")  # fmt: skip


def pg_bin() -> Path | None:
    """Where PostgreSQL's server programs are (``initdb`` on PATH), if installed."""
    initdb = shutil.which("initdb")
    return None if initdb is None else Path(initdb).resolve().parent


@contextmanager
def sqlite_server() -> Iterator[None]:
    """Prefect's test harness: the server in a subprocess on a temporary SQLite database."""
    with prefect_test_harness(server_startup_timeout=120):
        yield


@contextmanager
def postgres_server() -> Iterator[None]:
    """``prefect server start`` on a throwaway local PostgreSQL cluster (as the ``postgres`` user
    when run by root), on loopback ports only; everything is removed after."""
    bin_dir = pg_bin()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL is not installed (no initdb on PATH)")
    work = Path(tempfile.mkdtemp(prefix="flow-bench-pg-"))
    as_pg: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        shutil.chown(work, user="postgres")
        as_pg = ["runuser", "-u", "postgres", "--"]
    pg_port, api_port = free_port(), free_port()
    data = work / "data"
    subprocess.run([*as_pg, str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
                   check=True, capture_output=True)  # fmt: skip
    options = f"-p {pg_port} -k {work} -c listen_addresses=127.0.0.1"
    subprocess.run([*as_pg, str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(work / "pg.log"), "-w",
                    "start"], check=True, capture_output=True)  # fmt: skip
    server = None
    try:
        subprocess.run([*as_pg, str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(pg_port), "prefect"], check=True)
        env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")}
        env.update(
            PREFECT_HOME=str(work / "home"),
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_SERVER_UI_ENABLED="false",
            PREFECT_SERVER_DATABASE_CONNECTION_URL=f"postgresql+asyncpg://postgres@127.0.0.1:{pg_port}/prefect",
        )
        with (work / "server.log").open("wb") as log:
            server = subprocess.Popen(
                [str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", "127.0.0.1", "--port",
                 str(api_port)], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        url = f"http://127.0.0.1:{api_port}/api"
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Prefect server on PostgreSQL did not start; see {work / 'server.log'}")
            time.sleep(0.5)
        with temporary_settings(updates={PREFECT_API_URL: url}):
            yield
    finally:
        if server is not None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=60)
        subprocess.run([*as_pg, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


SERVERS = {"sqlite": sqlite_server, "postgres": postgres_server}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of audio per stage")
    parser.add_argument("--server", choices=[*SERVERS, "both"], default="both",
                        help="database of the Prefect server; both skips postgres when it is not installed")  # fmt: skip
    args = parser.parse_args()
    register_counting(BACKEND)
    seeds = iter(range(1000, 10**6, 10))
    print(f"flow bench: {STAGES}-stage pipeline (generate -> refine -> repaint), {args.duration:g} s of audio, "
          f"turbo 8 steps, embedded backend, median of {args.repeats}")  # fmt: skip
    api = ApiClock()
    names = list(SERVERS) if args.server == "both" else [args.server]
    if args.server == "both" and pg_bin() is None:
        print("postgres server: skipped (PostgreSQL is not installed: no initdb on PATH)")
        names.remove("postgres")
    with tempfile.TemporaryDirectory(prefix="flow-bench-") as work:
        os.environ["ACE_LATENT_DIR"] = str(Path(work) / "latents")  # the flows' default store
        out = str(Path(work) / "audio")
        for name in names:
            with SERVERS[name]():
                measure(1, args.duration, seeds, False, api, out)  # warm up: imports, backend, server caches
                report(f"{name} server, Prefect defaults (flow heartbeats on)",
                       measure(args.repeats, args.duration, seeds, True, api, out))  # fmt: skip
                report(f"{name} server, flow heartbeats off",
                       measure(args.repeats, args.duration, seeds, False, api, out))  # fmt: skip


if __name__ == "__main__":
    main()
