"""Variations on Dask worker processes through prefect-dask, and the GPU concurrency limit across
processes: with ACE_GPU_CONCURRENCY_LIMIT naming a global limit of one slot, no model call of one
worker process overlaps a model call of another; without it both processes still do the work (when
their calls overlap is then up to the scheduler and the machine's load, so it is not asserted).

The cluster is a real distributed.LocalCluster of two single-threaded worker processes (the one
``use_dask=True`` builds), handed to the flow by address (the path a multi-machine cluster takes
too); one more run lets the flow build its own cluster. The model is the embedded one under
a counting name (tests/flow_helpers.py) that appends every call's pid and start/end time to a file
and holds each velocity call open briefly, so that unserialized runs collide.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from distributed import Client, WorkerPlugin
from prefect import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

from prefect_acestep.flows.variations import DASK_ADDRESS_ENV, local_cluster, variations_flow
from prefect_acestep.stages.requests import GenerateRequest
from prefect_acestep.stages.runner import run_stage
from prefect_acestep.stages.store import LatentStore
from prefect_acestep.tasks.concurrency import GPU_LIMIT_ENV
from tests.flow_helpers import read_call_log, register_counting

BACKEND = "counting-dask"
DELAY_S = 0.2
REQUEST = GenerateRequest(caption="slow synth pads", keyscale="E minor", duration=2.0, inference_steps=4,
                          instrumental=True, backend=BACKEND)  # fmt: skip

pytestmark = pytest.mark.timeout(300)


class CountingModel(WorkerPlugin):
    """Registers the counting backend in each worker process (as a deployment's worker would have
    its backends installed), logging to ``log``."""

    def __init__(self, log: str) -> None:
        self.log = log

    def setup(self, worker) -> None:
        register_counting(BACKEND, call_log=Path(self.log), velocity_delay_s=DELAY_S)


def _set_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[tuple[Client, Path]]:
    log = tmp_path_factory.mktemp("dask") / "calls.log"
    with local_cluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as local:
        with Client(local) as client:
            client.register_plugin(CountingModel(str(log)))
            yield client, log


@pytest.fixture
def gpu_limit(prefect_server) -> Iterator[str]:
    name = f"gpu-dask-{os.getpid()}"
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
    yield name
    with get_client(sync_client=True) as client:
        client.delete_global_concurrency_limit_by_name(name)


def _cross_process_overlaps(log: Path) -> tuple[set[int], int]:
    """The worker pids that made model calls, and how many pairs of calls from different processes
    overlap in time (building the model counts as a call: it loads weights onto the device too)."""
    calls = sorted(read_call_log(log), key=lambda call: call[3])
    overlaps = 0
    for index, (pid, _, _, _, end) in enumerate(calls):
        for other_pid, _, _, other_start, _ in calls[index + 1 :]:
            if other_start >= end:
                break
            overlaps += other_pid != pid
    return {call[0] for call in calls}, overlaps


def _run(client: Client, tmp_path: Path, name: str, seeds: list[int]):
    """The variations on ``client``'s cluster, which this process (the worker) names in its
    environment: where work runs is never a run parameter."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(DASK_ADDRESS_ENV, client.scheduler_info()["address"])
        return variations_flow(
            REQUEST, seeds=seeds, rank_by="loudness", store=None, out_dir=str(tmp_path / f"{name}-audio"), use_dask=True
        )


def test_dask_workers_serialize_on_a_gpu_limit_of_one(cluster, gpu_limit, tmp_path, monkeypatch):
    client, log = cluster
    monkeypatch.setenv("ACE_LATENT_DIR", str(tmp_path / "latents"))
    client.run(_set_env, "ACE_LATENT_DIR", str(tmp_path / "latents"))

    # With the limit: two worker processes did the work, and never at the same time.
    log.unlink(missing_ok=True)
    client.run(_set_env, GPU_LIMIT_ENV, gpu_limit)
    try:
        ranked = _run(client, tmp_path, "limited", seeds=[31, 32, 33, 34])
    finally:
        client.run(_set_env, GPU_LIMIT_ENV, None)
    pids, overlaps = _cross_process_overlaps(log)
    assert len(pids) == 2 and os.getpid() not in pids
    assert overlaps == 0
    with get_client(sync_client=True) as prefect:
        assert prefect.read_global_concurrency_limit_by_name(gpu_limit).active_slots == 0

    # The latents the workers stored are bit-identical to the same stage run in this process with
    # the workers' one torch thread (Dask sets OMP_NUM_THREADS=1; float sums depend on the split).
    store, local = LatentStore(tmp_path / "latents", ttl_hours=24), LatentStore(tmp_path / "local", ttl_hours=24)
    register_counting(BACKEND)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for entry in ranked:
            again = run_stage(entry.result.params, local)[0]
            assert store.record(entry.result.latent_id).digest == local.record(again.latent_id).digest
    finally:
        torch.set_num_threads(threads)

    # Without it both processes still do the work (whether their calls overlap is not asserted).
    log.unlink()
    _run(client, tmp_path, "free", seeds=[41, 42, 43, 44])
    pids, _ = _cross_process_overlaps(log)
    assert len(pids) == 2


@pytest.mark.usefixtures("prefect_server")
def test_use_dask_builds_its_own_local_cluster(tmp_path, monkeypatch):
    """The path a deployment takes (use_dask=True from the run form): prefect-dask starts the local
    cluster itself, the variations run there and land in the store."""
    monkeypatch.setenv("ACE_LATENT_DIR", str(tmp_path / "latents"))
    monkeypatch.delenv(GPU_LIMIT_ENV, raising=False)
    plain = REQUEST.model_copy(update={"backend": "embedded"})
    ranked = variations_flow(plain, seeds=[51, 52], rank_by="key_adherence", out_dir=str(tmp_path / "audio"),
                             use_dask=True, workers=2)  # fmt: skip
    store = LatentStore(tmp_path / "latents", ttl_hours=24)
    assert sorted(store.record(entry.result.latent_id).seeds[0] for entry in ranked) == [51, 52]
    assert all(Path(entry.score.audio_path).is_file() for entry in ranked)
