"""Latents a running flow still needs survive gc until it ends (issue 14, item 8).

Before: a byte-budget gc evicted the intermediates of a running pipeline (a generate task returned
an ID evicted 70 ms earlier, and the next stage failed on it). Now a flow holds a lease in the
store: what it made, what it borrowed (sources named by ID, stages answered from the cache) and
their ancestors stay until the flow ends; a flow killed with SIGKILL stops renewing, and its lease
ends by itself. The store's leases on both sites, then real pipelines in a real subprocess against
the shared Prefect server, with gc running flat out in this process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import torch

from prefect_acestep import pipeline_flow
from prefect_acestep.stages.store import LatentStore
from prefect_acestep.stages.store.flow_leases import CLOCK_SKEW_S, LEASES_DIR
from tests.flow_helpers import pipeline_request, register_counting, wait_until
from tests.store_sites import Place, places, place, site_kind  # noqa: F401 (fixtures)

ROOT = Path(__file__).resolve().parents[1]
BACKEND = "counting-leases"
HOLDER = "0b7c2a3e-5d1f-4c8e-9a6b-2f4e8d1c3a57"


def latent(seed: int) -> torch.Tensor:
    return torch.randn(1, 8, 64, generator=torch.Generator().manual_seed(seed))


# --- the store: both sites -----------------------------------------------------------------------


def test_a_lease_keeps_what_its_flow_made_and_borrowed_with_their_ancestors(place: Place) -> None:
    store = place.open(max_bytes=0)  # gc evicts every unpinned latent it may
    borrowed_parent = store.put(latent(1), stage_type="generate")
    borrowed = store.put(latent(2), stage_type="refine", parent_ids=[borrowed_parent])
    made = store.put(latent(3), stage_type="refine", parent_ids=[borrowed], pipeline_id=HOLDER)
    bystander = store.put(latent(4), stage_type="generate", pipeline_id="someone-else")
    store.lease(HOLDER, lease_s=300)
    store.lease_latents(HOLDER, [borrowed])
    other = place.open(max_bytes=0)  # another process (local) or host (remote): it sees the lease
    assert [r.id for r in other.gc().removed] == [bystander]
    for latent_id in (made, borrowed, borrowed_parent):
        other.get(latent_id)
    store.release(HOLDER)
    assert sorted(r.id for r in other.gc().removed) == sorted([made, borrowed, borrowed_parent])
    assert place.names(LEASES_DIR) == []


def test_an_abandoned_lease_ends_by_itself_and_gc_clears_it(place: Place) -> None:
    store = place.open(max_bytes=0)
    store.lease(HOLDER, lease_s=60)
    made = store.put(latent(5), stage_type="generate", pipeline_id=HOLDER)
    borrowed = store.put(latent(6), stage_type="generate")
    store.lease_latents(HOLDER, [borrowed])
    assert store.gc().removed == []  # the holder never releases (it was killed)
    later = datetime.now(UTC) + timedelta(seconds=60 + CLOCK_SKEW_S + 1)
    assert sorted(r.id for r in store.gc(now=later).removed) == sorted([made, borrowed])
    assert place.names(LEASES_DIR) == []


# --- real pipelines ------------------------------------------------------------------------------


SLOW_PIPELINE = """
import sys
from tests.flow_helpers import pipeline_request, register_counting
register_counting("counting-leases", velocity_delay_s=float(sys.argv[1]))
from prefect_acestep import pipeline_flow
first = {"stage_type": "refine", "denoise": 0.5, "src_latent_id": sys.argv[3]} if len(sys.argv) > 3 else {}
stages = [
    {"stage_type": "generate", "seed": 1, "backend": "counting-leases", **first},
    {"stage_type": "refine", "src_stage": 0, "denoise": 0.5, "seed": 2, "backend": "counting-leases"},
    {"stage_type": "refine", "src_stage": 1, "denoise": 0.75, "seed": 3, "backend": "counting-leases"},
]
hops = pipeline_flow(pipeline_request(stages), out_dir=sys.argv[2])
print("DONE", *[hop[0].latent_id for hop in hops])
"""


def start_pipeline(tmp_path: Path, delay_s: float, name: str, *source: str) -> subprocess.Popen[str]:
    from prefect.settings import PREFECT_API_URL

    env = {
        **os.environ,
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "PREFECT_HOME": str(tmp_path / f"{name}-home"),
        "PYTHONPATH": str(ROOT),
    }
    return subprocess.Popen(
        [sys.executable, "-c", SLOW_PIPELINE, str(delay_s), str(tmp_path / f"{name}-audio"), *source],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip


def leases_in(root: Path) -> list[Path]:
    return sorted((root / LEASES_DIR).glob("*.json")) if (root / LEASES_DIR).exists() else []


@pytest.mark.usefixtures("fast_prefect")
def test_gc_flat_out_never_takes_what_a_running_pipeline_needs(latent_dir: Path, tmp_path: Path) -> None:
    """The pipeline refines a latent an earlier run made (borrowed by ID), and makes three more,
    slowly; from the moment its lease exists, gc with a byte budget of 0 runs all the while."""
    register_counting(BACKEND)
    [[source]] = pipeline_flow(pipeline_request([{"stage_type": "generate", "seed": 7, "backend": BACKEND}]),
                               out_dir=str(tmp_path / "early"))  # fmt: skip
    running = start_pipeline(tmp_path, 0.15, "running", source.latent_id)
    gc_store = LatentStore(latent_dir, max_bytes=0)
    removed: set[str] = set()
    everything: set[str] = set()
    runs = 0
    try:
        wait_until(lambda: leases_in(latent_dir) or running.poll() is not None, "the pipeline's lease", 120)
        while running.poll() is None:
            held = bool(leases_in(latent_dir))
            report = gc_store.gc()
            everything |= {r.id for r in report.removed}
            if held and leases_in(latent_dir):  # a gc wholly inside the run (the flow releases at its end)
                removed |= {r.id for r in report.removed}
                runs += 1
        out, err = running.communicate(timeout=60)
    finally:
        if running.poll() is None:
            os.killpg(running.pid, signal.SIGKILL)
    assert running.returncode == 0, err[-4000:]
    made = set(out.strip().splitlines()[-1].split()[1:])
    assert len(made) == 3 and runs > 0
    assert not (made | {source.latent_id}) & removed, "gc took a latent the running pipeline needed"
    # Ended: the lease is gone and the pipeline's latents are the budget's to evict.
    assert made | {source.latent_id} <= everything | {r.id for r in gc_store.gc().removed}
    assert leases_in(latent_dir) == []


@pytest.mark.usefixtures("fast_prefect")
def test_a_killed_pipelines_lease_ends_and_gc_then_collects(latent_dir: Path, tmp_path: Path) -> None:
    running = start_pipeline(tmp_path, 0.5, "killed")
    store = LatentStore(latent_dir, max_bytes=0)
    try:
        wait_until(lambda: store.list(), "the pipeline's first latent", timeout_s=120)
    finally:
        os.killpg(running.pid, signal.SIGKILL)  # kill -9: no release, no cleanup
        running.wait(timeout=30)
    made = {record.id for record in store.list()}
    assert made and store.gc().removed == []  # its lease has not ended yet
    assert list((latent_dir / LEASES_DIR).glob("*.json"))
    after = datetime.now(UTC) + timedelta(seconds=300 + CLOCK_SKEW_S + 1)  # the default lease, unrenewed
    assert {r.id for r in store.gc(now=after).removed} >= made
    assert list((latent_dir / LEASES_DIR).iterdir()) == []
