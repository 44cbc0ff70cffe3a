"""Several processes at once: two writers putting and pinning while a third runs gc under a byte
budget so small that it evicts everything it may. No record may be lost (each put ID either loads or
says it was evicted), and nothing pinned, nor any ancestor of a pinned latent, may be removed."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import torch
from loguru import logger

from prefect_acestep.stages.errors import LatentDeleted
from prefect_acestep.stages.store import LatentStore

PUTS_PER_WRITER = 60


def _writer(root: str, log_path: str, name: str) -> None:
    """Blocks of ten puts: one pinned at creation, one pinned right after its put (racing the gc),
    and a parent pinned at creation whose pinned child is put next, after which the parent is
    unpinned: from then on only its child's pin protects it."""
    logger.remove()
    store = LatentStore(root)
    with open(log_path, "w", buffering=1) as log:
        parent = ""
        for i in range(PUTS_PER_WRITER):
            step = i % 10
            latent_id = store.put(
                torch.full((1, 16, 64), float(i)),
                stage_type="generate",
                pipeline_id=name,
                parent_ids=[parent] if step == 9 else [],
                pinned=step in (0, 8, 9),
            )
            log.write(f"put {latent_id} {i} {int(step in (0, 9))}\n")
            if step == 5:
                try:
                    store.pin(latent_id)
                    log.write(f"pin {latent_id}\n")
                except LatentDeleted:
                    log.write(f"evicted-before-pin {latent_id}\n")
            elif step == 8:
                parent = latent_id
            elif step == 9:
                store.unpin(parent)
                log.write(f"protected {parent}\n")


def _collector(root: str, stop_path: str, log_path: str) -> None:
    logger.remove()
    store = LatentStore(root, max_bytes=0)
    with open(log_path, "w", buffering=1) as log:
        while not os.path.exists(stop_path):
            for removed in store.gc().removed:
                log.write(f"{removed.reason} {removed.id}\n")


def test_two_writers_and_a_gc_lose_nothing_and_never_remove_pins(tmp_path: Path) -> None:
    root = tmp_path / "store"
    LatentStore(root).close()
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "prefect_acestep.stages.store", __name__])
    stop = tmp_path / "stop"
    writers = [
        context.Process(target=_writer, args=(str(root), str(tmp_path / f"w{n}.log"), f"w{n}")) for n in range(2)
    ]
    collector = context.Process(target=_collector, args=(str(root), str(stop), str(tmp_path / "gc.log")))
    collector.start()
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=120)
        assert writer.exitcode == 0
    stop.touch()
    collector.join(timeout=60)
    assert collector.exitcode == 0

    values, pinned, protected = {}, set(), set()
    for n in range(2):
        lines = [line.split() for line in (tmp_path / f"w{n}.log").read_text().splitlines()]
        assert sum(op == "put" for op, *_ in lines) == PUTS_PER_WRITER
        for op, latent_id, *rest in lines:
            if op == "put":
                values[latent_id] = float(rest[0])
                if rest[1] == "1":
                    pinned.add(latent_id)
            elif op == "pin":
                pinned.add(latent_id)
            elif op == "protected":
                protected.add(latent_id)
    evicted = {line.split()[1] for line in (tmp_path / "gc.log").read_text().splitlines()}
    assert evicted, "the collector must have evicted something, or this test proves nothing"
    assert pinned.isdisjoint(evicted) and protected.isdisjoint(evicted)

    store = LatentStore(root)
    for latent_id, value in values.items():
        if latent_id in pinned | protected:
            assert torch.equal(store.get(latent_id), torch.full((1, 16, 64), value))
            assert store.record(latent_id).pinned == (latent_id in pinned)
        elif store.exists(latent_id):
            assert torch.equal(store.get(latent_id), torch.full((1, 16, 64), value))
        else:
            assert latent_id in evicted
            try:
                store.get(latent_id)
            except LatentDeleted as exc:
                assert exc.reason == "evicted", exc
            else:
                raise AssertionError(f"{latent_id} neither loads nor says it was evicted")
    assert len(protected) == 2 * (PUTS_PER_WRITER // 10)
    assert sorted(os.listdir(root / "latents")) == sorted(f"{r.id}.safetensors" for r in store.list())
