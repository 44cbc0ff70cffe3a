"""Shared pieces of the orchestration tests: a counting backend, request builders, API readers.
(The fixtures they share are in ``tests/conftest.py``.)

``CountingBackend`` is the real embedded model under another registered name: every model call
still runs, and is also counted in memory and, when a call log is given, appended to a file with
the process id and the call's start and end times, so a test can see what other processes or
threads did. Building the backend is logged too (as a ``build`` call), and the registry is told
its identity without building it, as a real backend's factory does. It can also raise queued faults
before a call (retry tests), sleep inside ``velocity`` (to hold a stage open long enough for another
one to collide with it), and wait at a barrier in ``velocity`` (to prove that two runs are inside
the model at the same time).
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any
from uuid import UUID

import torch
from prefect import flow

from prefect_acestep.stages.backends.embedded import EmbeddedBackend
from prefect_acestep.stages.backends.identity import BackendIdentity
from prefect_acestep.stages.backends.registry import load_backend, register_backend
from prefect_acestep.stages.params import StageParams
from prefect_acestep.stages.requests import GenerateRequest, PipelineRequest
from prefect_acestep.stages.results import StageResult
from prefect_acestep.stages.store import LatentStore
from prefect_acestep.tasks.blocks import AceLatentStore
from prefect_acestep.tasks.stage_tasks import stage_task_for

SHORT_STAGE: dict[str, Any] = {"duration": 2.0, "inference_steps": 4}
"""Enough for every code path (4 steps allow checkpoints and partial denoising), fast on 2 cores."""
CAPTION = "warm piano ballad with soft drums"


class CountingBackend(EmbeddedBackend):
    """The embedded model registered as ``name``; see the module docstring."""

    def __init__(
        self,
        variant: str = "turbo",
        device: str | torch.device = "cpu",
        *,
        name: str,
        call_log: Path | None = None,
        velocity_delay_s: float = 0.0,
        rendezvous: threading.Barrier | None = None,
    ) -> None:
        start = time.time()
        super().__init__(variant=variant, device=device)
        self.identity = self.identity_of(name, variant=variant)
        self.calls: Counter[str] = Counter()
        self.faults: dict[str, list[BaseException]] = defaultdict(list)
        self.call_log = call_log
        self.velocity_delay_s = velocity_delay_s
        self.rendezvous = rendezvous
        self._lock = threading.Lock()
        self._log("build", start, time.time())

    @staticmethod
    def identity_of(name: str, **options: Any) -> BackendIdentity:
        """The identity an instance registered as ``name`` has, known without building one."""
        return EmbeddedBackend.identity_for(**options).model_copy(update={"name": name})

    def inject(self, method: str, *errors: BaseException) -> None:
        """Raise ``errors`` one by one on the next calls of ``method`` (before the call is counted)."""
        self.faults[method].extend(errors)

    def reset(self) -> None:
        self.calls.clear()
        self.faults.clear()

    def _call(self, method: str, run: Callable[[], Any]) -> Any:
        with self._lock:
            if self.faults[method]:
                raise self.faults[method].pop(0)
            self.calls[method] += 1
        start = time.time()
        if method == "velocity" and self.rendezvous is not None:
            self.rendezvous.wait()
        if method == "velocity" and self.velocity_delay_s > 0:
            time.sleep(self.velocity_delay_s)
        result = run()
        self._log(method, start, time.time())
        return result

    def _log(self, method: str, start: float, end: float) -> None:
        if self.call_log is not None:
            line = f"{os.getpid()} {threading.get_ident()} {method} {start:.6f} {end:.6f}\n"
            with self._lock, self.call_log.open("a") as log:
                log.write(line)

    def encode_condition(self, spec, batch_size):
        return self._call("encode_condition", lambda: super(CountingBackend, self).encode_condition(spec, batch_size))

    def velocity(self, x_t, t, cond, context):
        return self._call("velocity", lambda: super(CountingBackend, self).velocity(x_t, t, cond, context))

    def vae_encode(self, audio):
        return self._call("vae_encode", lambda: super(CountingBackend, self).vae_encode(audio))

    def vae_decode(self, latents):
        return self._call("vae_decode", lambda: super(CountingBackend, self).vae_decode(latents))

    def tokenize(self, latents):
        return self._call("tokenize", lambda: super(CountingBackend, self).tokenize(latents))

    def detokenize(self, codes, frames):
        return self._call("detokenize", lambda: super(CountingBackend, self).detokenize(codes, frames))


def register_counting(
    name: str,
    *,
    call_log: Path | None = None,
    velocity_delay_s: float = 0.0,
    rendezvous: threading.Barrier | None = None,
) -> None:
    """Register backend ``name`` (a fresh instance per variant, replacing any earlier one)."""

    def factory(**options: Any) -> CountingBackend:
        return CountingBackend(
            name=name, call_log=call_log, velocity_delay_s=velocity_delay_s, rendezvous=rendezvous, **options
        )

    register_backend(name, factory, identity=lambda **options: CountingBackend.identity_of(name, **options))


def counting(name: str, variant: str = "turbo") -> CountingBackend:
    """The process-wide instance the runner and tasks use for ``name``/``variant``."""
    backend = load_backend(name, variant=variant)
    assert isinstance(backend, CountingBackend)
    return backend


def read_call_log(path: Path) -> list[tuple[int, int, str, float, float]]:
    """Lines of a call log: (pid, thread id, method, start, end)."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        pid, thread, method, start, end = line.split()
        rows.append((int(pid), int(thread), method, float(start), float(end)))
    return rows


# --- Prefect ----------------------------------------------------------------------------------


def wait_until(check: Callable[[], object], what: str, timeout_s: float = 60.0) -> None:
    """Poll ``check`` until it is true; fail naming ``what`` when it is not within ``timeout_s``
    (a bound for a broken run, never reached by a slow one)."""
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out after {timeout_s} s waiting for {what}"
        time.sleep(0.05)


def flow_run_id(state) -> UUID:
    """The flow run id of a state returned by ``flow(..., return_state=True)``."""
    return state.state_details.flow_run_id


def task_runs(flow_run: UUID, timeout_s: float = 30.0) -> list:
    """Task runs of a finished flow run, read back from the API (oldest first).

    The server records task run states from events, after the flow has returned; this waits
    (bounded) until every task run it knows has a final state and the same runs are seen twice.
    """
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    deadline = time.monotonic() + timeout_s
    previous: list | None = None
    while True:
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run])),
                sort=TaskRunSort.EXPECTED_START_TIME_ASC,
            )
        settled = all(run.state is not None and run.state.is_final() for run in runs)
        seen = [(run.id, run.state.name if run.state else None, run.run_count) for run in runs]
        if settled and previous == seen:
            return runs
        assert time.monotonic() < deadline, f"task runs of {flow_run} did not settle: {seen}"
        previous = seen if settled else None
        time.sleep(0.1)


def task_state_names(flow_run: UUID, task_name_prefix: str = "") -> list[str]:
    """State names (``Completed``, ``Cached``, ``Failed``...) of a flow run's task runs."""
    return [run.state.name for run in task_runs(flow_run) if run.name.startswith(task_name_prefix)]


def pipeline_request(stages: list[dict[str, Any]], **shared: Any) -> PipelineRequest:
    """A pipeline request with the short stage settings on every stage."""
    body: dict[str, Any] = {"caption": CAPTION, "keyscale": "D minor", "bpm": 96}
    body.update(shared)
    body["stages"] = [{**SHORT_STAGE, **stage} for stage in stages]
    return PipelineRequest.model_validate(body)


def stage_params(backend: str, **fields: Any) -> StageParams:
    """Short stage params on ``backend`` (seed 7 unless given), for ``run_stage`` without Prefect."""
    return StageParams.model_validate({"caption": CAPTION, "backend": backend, "seed": 7, **SHORT_STAGE, **fields})


def custom_request(backend: str, **fields: Any) -> GenerateRequest:
    """A short custom-mode request on ``backend`` (seed 5 unless given)."""
    return GenerateRequest.model_validate({"caption": CAPTION, "backend": backend, "seed": 5, **SHORT_STAGE, **fields})


def default_store() -> LatentStore:
    """The store the flows use when given no block (``ACE_LATENT_DIR``, set by ``latent_dir``)."""
    return AceLatentStore.from_env().get_store()


@flow
def one_stage(params: StageParams) -> list[StageResult]:
    """One stage task on the default store as the flows configure it (no decode), with the retry
    delays set to zero."""
    block = AceLatentStore.from_env()
    return stage_task_for(params, block).with_options(retry_delay_seconds=0)(params, block)
