"""Prefect layer benchmark, on the default setup (a local ``prefect server start`` on SQLite), in one
run: every figure is a median over repeats run in alternation with its baseline, and the targets
are ratios against baselines measured in the same run (the machine may be shared).

1. Orchestration overhead per stage: a three-stage pipeline (generate -> refine -> repaint) through
   ``pipeline_flow`` with fresh seeds (nothing cached) against the same stages through ``run_stage``
   plus the decode of the final stage (exactly the work the flow does), as a ratio, and in ms per
   stage (target: <= 50 ms): the flow run's wall time less the time its own tasks spent inside
   ``run_stage`` and ``decode_latent`` (on a shared machine the compute of two runs differs by far
   more than 50 ms, so the overhead is measured within each run). For reference: an empty flow
   (Prefect's fixed cost of one flow run) and a bare task. Measured as the command line runs flows
   (flow heartbeats off unless configured, see ``prefect_acestep.flows.cli.server``), and again with
   Prefect's default heartbeats.
2. Cache: an identical second run against the first (target >= 20x faster) with every backend call
   counted (target: none), and the API calls and HTTP 503 answers ("database busy", which
   Prefect's client retries after seconds) of a first and of a cached run.
3. The demo through the command line with a running server, as separate processes: Python start-up
   (``prefect-acestep --help``: interpreter and imports), the demo's compute (its stages and decodes
   called directly, in this process), and what Prefect adds; the same demo re-run (all cached:
   target, start-up dominates); the demo with no server running (a temporary server per command:
   its start), and the first run on a fresh ``PREFECT_HOME`` (the README's first command).

Run: .venv/bin/python bench/flow_bench.py [--repeats N] [--duration SECONDS]
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="flow-bench-home-")  # a private Prefect home
atexit.register(shutil.rmtree, os.environ["PREFECT_HOME"], ignore_errors=True)

import httpx  # noqa: E402
from prefect import flow, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402
from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings  # noqa: E402

from prefect_acestep import pipeline_flow  # noqa: E402
from prefect_acestep.flows.cli.demo import DEMO_REQUEST  # noqa: E402
from prefect_acestep.stages.conversions import custom_to_params, restore  # noqa: E402
from prefect_acestep.stages.decode import decode_latent  # noqa: E402
from prefect_acestep.stages.requests import PipelineRequest  # noqa: E402
from prefect_acestep.stages.runner import run_stage  # noqa: E402
from prefect_acestep.stages.store import LatentStore  # noqa: E402
from prefect_acestep.tasks.blocks import AceLatentStore  # noqa: E402
from tests.flow_helpers import counting, register_counting  # noqa: E402  (the embedded model, its calls counted)
from tests.prefect_stack import Processes, free_port, stack_env, start_server  # noqa: E402

BACKEND = "bench-counting"
STAGES = 3
BARE_TASKS = 20
SETTLE_S = 1.0
CLI = str(Path(sys.executable).parent / "prefect-acestep")


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


class ApiCalls:
    """Every HTTP request this process sends to the Prefect API (any thread; the log shipper's
    batched ``/logs/`` posts left out), and how many were answered 503."""

    def __init__(self) -> None:
        self.calls = 0
        self.busy = 0
        counter = self
        sync_send, async_send = httpx.Client.send, httpx.AsyncClient.send

        def send(client, request, *args, **kwargs):
            return counter.count(request, sync_send(client, request, *args, **kwargs))

        async def asend(client, request, *args, **kwargs):
            return counter.count(request, await async_send(client, request, *args, **kwargs))

        httpx.Client.send, httpx.AsyncClient.send = send, asend  # type: ignore[method-assign]

    def count(self, request: httpx.Request, response: httpx.Response) -> httpx.Response:
        if not request.url.path.endswith("/logs/"):
            self.calls += 1
            self.busy += response.status_code == 503
        return response

    def reset(self) -> None:
        self.calls, self.busy = 0, 0


class ComputeClock:
    """Time the stage tasks spend inside the backend work itself (``run_stage``, ``decode_latent``,
    as the task modules call them), summed over threads."""

    def __init__(self) -> None:
        from prefect_acestep.tasks import stage_tasks, store_tasks

        self.seconds = 0.0
        self._lock = threading.Lock()
        stage_tasks.run_stage = self.timing(stage_tasks.run_stage)  # type: ignore[assignment]
        store_tasks.decode_latent = self.timing(store_tasks.decode_latent)  # type: ignore[assignment]

    def timing(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed_call(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                with self._lock:
                    self.seconds += time.perf_counter() - start

        return timed_call


def timed(fn: Callable[[], object], api: ApiCalls) -> tuple[float, int, int]:
    """Wall time of ``fn`` and its API calls and 503s, after a pause (not timed) that lets the
    server record the previous run's events first."""
    time.sleep(SETTLE_S)
    api.reset()
    start = time.perf_counter()
    fn()
    wall = time.perf_counter() - start
    time.sleep(0.3)  # background writes of this run (artifacts, events) are counted with it
    return wall, api.calls, api.busy


def direct(req: PipelineRequest, out_dir: str) -> None:
    """What the pipeline flow does, without Prefect: run each stage, decode the last one."""
    store = AceLatentStore.from_env().get_store()
    latents: dict[int, str] = {}
    for index in range(len(req.stages)):
        latents[index] = run_stage(req.stage_params(index), store, stage_latents=latents)[0].latent_id
    decode_latent(store, latents[len(req.stages) - 1], out_dir)


@task(cache_policy=NO_CACHE)
def noop(i: int) -> int:
    return i


@flow
def bare(tasks: int) -> None:
    for i in range(tasks):
        noop(i)


@contextmanager
def heartbeats(on: bool) -> Iterator[None]:
    """Prefect's default flow heartbeats, or none (as the command line runs flows)."""
    with temporary_settings(updates={} if on else {PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


med = statistics.median


def measure(
    repeats: int, duration: float, seeds: Iterator[int], api: ApiCalls, compute: ComputeClock, out: str
) -> dict[str, float]:
    model = counting(BACKEND)
    direct_s, first, second, empty, tasks, inside = [], [], [], [], [], []
    first_calls: list[int] = []
    second_calls: Counter[str] = Counter()
    for _ in range(repeats):
        direct_s.append(timed(lambda: direct(request(next(seeds), duration), out), api)[0])
        req = request(next(seeds), duration)
        model.calls.clear()
        compute.seconds = 0.0
        first.append(timed(lambda: pipeline_flow(req, out_dir=out), api))
        inside.append(compute.seconds)
        first_calls.append(sum(model.calls.values()))
        model.calls.clear()
        second.append(timed(lambda: pipeline_flow(req, out_dir=out), api))
        second_calls.update(model.calls)
        empty.append(timed(lambda: bare(0), api)[0])
        tasks.append(timed(lambda: bare(BARE_TASKS), api)[0])
    overhead = [f - c for (f, _, _), c in zip(first, inside, strict=True)]
    return {
        "direct_ms": 1000 * med(direct_s) / STAGES,
        "compute_ms": 1000 * med(inside) / STAGES,
        "overhead_ms": 1000 * med(overhead) / STAGES,
        "overhead_beyond_empty_ms": 1000 * (med(overhead) - med(empty)) / STAGES,
        "ratio": med(f / d for (f, _, _), d in zip(first, direct_s, strict=True)),
        "bare_task_ms": 1000 * (med(tasks) - med(empty)) / BARE_TASKS,
        "empty_flow_ms": 1000 * med(empty),
        "first_s": med(t for t, _, _ in first),
        "first_api": med(c for _, c, _ in first),
        "first_busy": sum(b for _, _, b in first) / repeats,
        "second_s": med(t for t, _, _ in second),
        "second_api": med(c for _, c, _ in second),
        "second_busy": sum(b for _, _, b in second) / repeats,
        "speedup": med(a / b for (a, _, _), (b, _, _) in zip(first, second, strict=True)),
        "first_calls": med(first_calls),
        "second_calls": sum(second_calls.values()),
    }


def report_flow(name: str, m: dict[str, float], cache: bool) -> None:
    verdict = "OK" if m["overhead_ms"] <= 50 else "MISSED"
    print(f"\n{name}")
    print(f"  overhead per stage: {m['overhead_ms']:.0f} ms over its own run_stage/decode time "
          f"({m['compute_ms']:.0f} ms/stage) [target <= 50 ms: {verdict}], of which Prefect's fixed cost of a "
          f"flow run (an empty flow) {m['overhead_ms'] - m['overhead_beyond_empty_ms']:.0f} ms/stage; "
          f"flow / direct run_stage (separate runs, {m['direct_ms']:.0f} ms/stage): {m['ratio']:.2f}x")  # fmt: skip
    print(f"  reference: empty flow {m['empty_flow_ms']:.0f} ms, bare Prefect task {m['bare_task_ms']:.1f} ms/task")
    if not cache:
        return
    verdict = "OK" if m["speedup"] >= 20 and m["second_calls"] == 0 else "MISSED"
    print(f"  cache: first run {m['first_s']:.2f} s ({m['first_calls']:.0f} backend calls), identical re-run "
          f"{m['second_s']:.3f} s ({m['second_calls']} backend calls) -> {m['speedup']:.1f}x faster "
          f"[target >= 20x and 0 calls: {verdict}]")  # fmt: skip
    print(f"  API calls per run: first {m['first_api']:.0f} ({m['first_busy']:.1f} answered 503), "
          f"cached re-run {m['second_api']:.0f} ({m['second_busy']:.1f} answered 503)")  # fmt: skip


# --- the command line, as separate processes ---------------------------------------------------


def cli_wall(args: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run([CLI, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"prefect-acestep {' '.join(args)} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return wall


def demo_direct(latent_dir: Path, out_dir: Path) -> None:
    """The demo's compute without Prefect: its pipeline's stages and decodes, then the resume."""
    store = LatentStore(latent_dir, ttl_hours=24)
    hops = []
    latents: dict[int, str] = {}
    for index, stage in enumerate(DEMO_REQUEST.stages):
        hops.append(run_stage(DEMO_REQUEST.stage_params(index), store, stage_latents=latents))
        latents[index] = hops[-1][0].latent_id
        if stage.preview or index == len(DEMO_REQUEST.stages) - 1:
            decode_latent(store, latents[index], out_dir)
    checkpoint = store.record(hops[0][0].checkpoints[0].latent_id)
    resumed = run_stage(custom_to_params(restore(checkpoint)), store)
    decode_latent(store, resumed[0].latent_id, out_dir)
    store.close()


def script_wall(args: list[str]) -> float:
    """Wall time of this script in a new process (``--direct-demo`` or ``--imports-only``)."""
    start = time.perf_counter()
    subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True, timeout=900)
    return time.perf_counter() - start


def cli_section(work: Path, api_url: str) -> None:
    runs = 3
    env = stack_env(work / "cli-home", api_url)
    startup = med(cli_wall(["--help"], env) for _ in range(runs))
    first, again, computes = [], [], []
    for attempt in range(runs):
        latents = work / f"cli-latents-{attempt}"
        env_run = {**env, "ACE_LATENT_DIR": str(latents)}
        first.append(cli_wall(["demo", "--out", str(work / f"cli-audio-{attempt}")], env_run))
        again.append(cli_wall(["demo", "--out", str(work / f"cli-audio-{attempt}")], env_run))
        # the compute of a new process (backend built, first calls), without this script's imports
        direct_run = script_wall(["--direct-demo", str(work / f"direct-{attempt}")])
        computes.append(direct_run - script_wall(["--imports-only"]))
    demo_s, rerun_s, compute_s = med(first), med(again), med(computes)
    print("\ndemo through the command line, a server running (separate processes, median of 3)")
    print(f"  first run {demo_s:.1f} s = Python start-up {startup:.1f} s + compute {compute_s:.1f} s (the same "
          f"stages and decodes called directly in a new process) + Prefect {demo_s - startup - compute_s:.1f} s")  # fmt: skip
    verdict = "OK" if rerun_s - startup < startup else "MISSED"
    print(f"  identical re-run (cached) {rerun_s:.1f} s = Python start-up {startup:.1f} s + the rest "
          f"{rerun_s - startup:.1f} s [target: start-up dominates: {verdict}]")  # fmt: skip

    # No server running: Prefect's server address pointed at a free port, so nothing answers there.
    # First on a fresh PREFECT_HOME (the README's first command: the temporary server creates its
    # database), then again in that home with fresh latents (a warm temporary server start).
    alone = stack_env(work / "alone-home", None, PREFECT_SERVER_API_PORT=str(free_port()))
    cold = cli_wall(["demo", "--out", str(work / "cold-audio")], {**alone, "ACE_LATENT_DIR": str(work / "cold")})
    warm = cli_wall(["demo", "--out", str(work / "warm-audio")], {**alone, "ACE_LATENT_DIR": str(work / "warm")})
    print(f"  no server running: {warm:.1f} s, so a temporary server per command costs "
          f"{warm - demo_s:.1f} s (its start)")  # fmt: skip
    print(f"  first run on a fresh PREFECT_HOME, no server (the README's first command): {cold:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of audio per stage")
    parser.add_argument("--skip-cli", action="store_true", help="only the in-process measurements")
    parser.add_argument("--direct-demo", type=Path, help=argparse.SUPPRESS)  # the demo's compute, in this process
    parser.add_argument("--imports-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.imports_only:
        return
    if args.direct_demo is not None:
        demo_direct(args.direct_demo / "latents", args.direct_demo / "audio")
        return
    register_counting(BACKEND)
    seeds = iter(range(1000, 10**6, 10))
    work = Path(tempfile.mkdtemp(prefix="flow-bench-"))
    processes = Processes(work)
    import prefect

    print(f"flow bench (Prefect {prefect.__version__}): {STAGES}-stage pipeline (generate -> refine -> repaint), "
          f"{args.duration:g} s of audio, turbo 8 steps, embedded backend, median of {args.repeats}; "
          "server: prefect server start on SQLite")  # fmt: skip
    try:
        api_url = start_server(processes, work / "server-home", ui=False)
        os.environ["ACE_LATENT_DIR"] = str(work / "latents")  # the flows' default store
        out = str(work / "audio")
        api = ApiCalls()
        compute = ComputeClock()
        with temporary_settings(updates={PREFECT_API_URL: api_url}):
            with heartbeats(False):
                measure(1, args.duration, seeds, api, compute, out)  # warm up: imports, backend, server caches
                report_flow("in one process, as the command line runs flows (flow heartbeats off)",
                            measure(args.repeats, args.duration, seeds, api, compute, out), cache=True)  # fmt: skip
            with heartbeats(True):
                report_flow("in one process, Prefect's default flow heartbeats (every 180 s)",
                            measure(max(3, args.repeats // 2), args.duration, seeds, api, compute, out), cache=False)  # fmt: skip
        if not args.skip_cli:
            cli_section(work, api_url)
    finally:
        processes.kill_all()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
