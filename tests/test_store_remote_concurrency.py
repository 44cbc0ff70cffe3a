"""Two worker processes sharing one bucket (a real S3 API on 127.0.0.1), each with its own index as on
two machines, writing, pinning, reading each other's latents and collecting with a byte budget so
small that every gc evicts all it may, all at once. No record may be lost (each put either loads
with its value or says it was evicted), nothing pinned may be removed, and a latent one process
wrote must load in the other."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path
from typing import Any

import fsspec
import pytest
import torch
from loguru import logger

from prefect_acestep.stages.errors import LatentDeleted
from prefect_acestep.stages.store import LatentStore
from tests.s3_server import DUMMY_AWS_ENV, new_bucket, s3_server

PUTS_PER_WORKER = 30


def _value(worker: int, i: int) -> float:
    return float(1000 * worker + i)


def _other_pinned(log_path: Path) -> tuple[str, float] | None:
    """The other worker's latest latent pinned at creation (such a latent is never collected)."""
    try:
        lines = log_path.read_text().splitlines()
    except FileNotFoundError:
        return None
    pinned = [line.split() for line in lines if line.startswith("put ") and line.endswith(" 1")]
    return (pinned[-1][1], float(pinned[-1][2])) if pinned else None


def _worker(url: str, options: dict[str, Any], index_dir: str, log_dir: str, worker: int) -> None:
    """Blocks of six steps: a put pinned at creation; a put pinned right after (racing the other's
    gc); a read of the other worker's latest pinned latent; a gc that evicts everything unpinned."""
    os.environ.update(DUMMY_AWS_ENV)  # the forkserver may predate the test's environment
    logger.remove()
    store = LatentStore(url, storage_options=options, index_dir=index_dir)
    collector = LatentStore(url, max_bytes=0, storage_options=options, index_dir=index_dir)
    other_log = Path(log_dir) / f"w{1 - worker}.log"
    with open(Path(log_dir) / f"w{worker}.log", "w", buffering=1) as log:
        for i in range(PUTS_PER_WORKER):
            step = i % 6
            value = _value(worker, i)
            latent_id = store.put(torch.full((1, 16, 64), value), stage_type="generate", pinned=step == 0)
            log.write(f"put {latent_id} {value} {int(step == 0)}\n")
            if step == 1:
                try:
                    store.pin(latent_id)
                    log.write(f"pin {latent_id}\n")
                except LatentDeleted:
                    log.write(f"evicted-before-pin {latent_id}\n")
            elif step == 3 and (theirs := _other_pinned(other_log)) is not None:
                other_id, other_value = theirs
                assert torch.equal(store.get(other_id), torch.full((1, 16, 64), other_value)), other_id
                log.write(f"read {other_id}\n")
            elif step == 5:
                for removed in collector.gc().removed:
                    log.write(f"{removed.reason} {removed.id}\n")


@pytest.fixture
def bucket_url() -> Any:
    with pytest.MonkeyPatch.context() as patch:
        for name, value in DUMMY_AWS_ENV.items():
            patch.setenv(name, value)
        with s3_server() as endpoint:
            yield f"s3://{new_bucket(endpoint)}/shared", {"endpoint_url": endpoint}


def test_two_workers_on_one_bucket_lose_nothing_and_never_remove_pins(bucket_url: Any, tmp_path: Path) -> None:
    url, options = bucket_url
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "prefect_acestep.stages.store", __name__])
    workers = [
        context.Process(target=_worker, args=(url, options, str(tmp_path / f"index{n}"), str(tmp_path), n))
        for n in range(2)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0

    values, pinned, evicted, reads = {}, set(), set(), 0
    for n in range(2):
        for op, latent_id, *rest in (line.split() for line in (tmp_path / f"w{n}.log").read_text().splitlines()):
            if op == "put":
                values[latent_id] = float(rest[0])
                if rest[1] == "1":
                    pinned.add(latent_id)
            elif op == "pin":
                pinned.add(latent_id)
            elif op == "evicted":
                evicted.add(latent_id)
            elif op == "read":
                reads += 1
    assert len(values) == 2 * PUTS_PER_WORKER
    assert evicted, "the collectors must have evicted something, or this test proves nothing"
    assert reads >= 2, "each worker must have read latents the other wrote"
    assert pinned.isdisjoint(evicted)

    fresh = LatentStore(url, storage_options=options, index_dir=tmp_path / "fresh")  # a third machine
    for latent_id, value in values.items():
        if latent_id in pinned or fresh.exists(latent_id):
            assert torch.equal(fresh.get(latent_id), torch.full((1, 16, 64), value))
            assert fresh.record(latent_id).pinned == (latent_id in pinned)
        else:
            assert latent_id in evicted, latent_id
            with pytest.raises(LatentDeleted, match="evicted"):
                fresh.get(latent_id)
    fs = fsspec.filesystem("s3", skip_instance_cache=True, use_listings_cache=False, **options)
    objects = sorted(p.rsplit("/", 1)[-1] for p in fs.find(url.removeprefix("s3://") + "/latents"))
    assert objects == sorted(f"{r.id}.safetensors" for r in fresh.list())
