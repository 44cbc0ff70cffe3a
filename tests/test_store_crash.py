"""Crash safety: writer processes killed with SIGKILL at random points, many times over.

Each round starts a real writer process (put, pin, unpin, delete, gc in a random mix, logging each
operation before and after it), kills it with SIGKILL, then reopens the store and checks it against
the log: everything listed loads with its digest verified, every completed put is there (unless
deleted), completed deletes and pins took effect, no record is lost or corrupt, and files and
records correspond one to one. At the end gc must leave no orphan files.

Nothing here depends on how fast the machine is. The writer reports each completed put through a
pipe; a round waits for a random number of them, then lets the writer run a random fraction of the
time its last put took (so kills fall anywhere in an operation, at any machine speed) before the
kill. Every fifth round (the last included) instead freezes the writer (SIGSTOP) while one of its writes is staged on
disk and kills it there, so some kills always land inside a write.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import time
from multiprocessing.connection import Connection
from pathlib import Path

import pytest
import torch
from loguru import logger

from prefect_acestep.stages.atomic import STAGING_PREFIX
from prefect_acestep.stages.errors import LatentDeleted
from prefect_acestep.stages.store import LatentStore

ROUNDS = 50
PATIENCE_S = 120.0
"""How long a round waits for the writer's next put before it fails (a hung writer, not a slow one)."""


def _writer(root: str, log_path: str, seed: int, progress: Connection) -> None:
    """Runs until killed. Every operation is logged as started ("x?") and then as done ("x"); each
    completed put is also reported on ``progress``."""
    logger.remove()
    rng = random.Random(seed)
    store = LatentStore(root)
    mine = [record.id for record in store.list()]
    with open(log_path, "a", buffering=1) as log:
        while True:
            roll = rng.random()
            if roll < 0.7 or not mine:
                parents = [rng.choice(mine)] if mine and rng.random() < 0.5 else []
                extras = {"momentum": torch.randn(1, 4, 64)} if rng.random() < 0.3 else None
                pinned = rng.random() < 0.1
                log.write("put?\n")
                latent_id = store.put(
                    torch.randn(1, rng.randint(1, 64), 64),
                    stage_type="generate",
                    parent_ids=parents,
                    extras=extras,
                    pinned=pinned,
                )
                log.write(f"put {latent_id} {int(pinned)}\n")
                progress.send_bytes(b"p")
                mine.append(latent_id)
            elif roll < 0.8:
                target = rng.choice(mine)
                log.write(f"pin? {target}\n")
                store.pin(target)
                log.write(f"pin {target}\n")
            elif roll < 0.87:
                target = rng.choice(mine)
                log.write(f"unpin? {target}\n")
                store.unpin(target)
                log.write(f"unpin {target}\n")
            elif roll < 0.95:
                target = mine.pop(rng.randrange(len(mine)))
                log.write(f"delete? {target}\n")
                store.delete(target)
                log.write(f"delete {target}\n")
            else:
                store.gc()


class Expectations:
    """What the log proves about the store. Only the last operation of a round can be unfinished."""

    def __init__(self) -> None:
        self.put: set[str] = set()
        self.deleting: set[str] = set()
        self.deleted: set[str] = set()
        self.pinned: dict[str, bool] = {}
        self.pin_unsure: set[str] = set()

    def read(self, log_path: Path) -> None:
        self.__init__()
        for line in log_path.read_text().splitlines(keepends=True):
            if not line.endswith("\n"):
                break  # torn by the kill
            op, *args = line.split()
            if op == "put":
                self.put.add(args[0])
                self.pinned[args[0]] = args[1] == "1"
            elif op in ("pin?", "unpin?"):
                self.pin_unsure.add(args[0])
            elif op in ("pin", "unpin"):
                self.pinned[args[0]] = op == "pin"
                self.pin_unsure.discard(args[0])
            elif op == "delete?":
                self.deleting.add(args[0])
            elif op == "delete":
                self.deleted.add(args[0])


def _check(root: Path, expect: Expectations) -> set[str]:
    store = LatentStore(root)
    listed = {record.id: record for record in store.list()}
    for latent_id in listed:
        store.get(latent_id)
        store.get_extras(latent_id)
    for latent_id in expect.put - expect.deleting:
        assert latent_id in listed, f"completed put {latent_id} lost"
    for latent_id in expect.deleted | (expect.deleting - listed.keys()):
        with pytest.raises(LatentDeleted):
            store.get(latent_id)
    for latent_id, pinned in expect.pinned.items():
        if latent_id in listed and latent_id not in expect.pin_unsure:
            assert listed[latent_id].pinned == pinned, latent_id
    on_disk = {name for name in os.listdir(root / "latents") if not name.startswith(".")}
    assert on_disk == {f"{latent_id}.safetensors" for latent_id in listed}
    store.close()
    return set(listed)


def _wait_for_puts(progress: Connection, count: int) -> float:
    """Block until the writer reports ``count`` more completed puts; return how long the last took."""
    started = time.monotonic()
    for _ in range(count):
        assert progress.poll(PATIENCE_S), f"the writer completed no put in {PATIENCE_S} s"
        progress.recv_bytes()
        took, started = time.monotonic() - started, time.monotonic()
    return took


def _stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "T"


def _freeze_inside_a_write(pid: int, latents: Path) -> None:
    """Stop the writer (SIGSTOP) at a moment when one of its writes is staged on disk."""
    deadline = time.monotonic() + PATIENCE_S
    while time.monotonic() < deadline:
        if any(name.startswith(STAGING_PREFIX) and f"~{pid}~" in name for name in os.listdir(latents)):
            os.kill(pid, signal.SIGSTOP)
            while not _stopped(pid):
                time.sleep(0.001)
            if any(name.startswith(STAGING_PREFIX) and f"~{pid}~" in name for name in os.listdir(latents)):
                return
            os.kill(pid, signal.SIGCONT)  # it published the file meanwhile: catch the next one
        time.sleep(0.0002)
    raise AssertionError(f"the writer staged no write within {PATIENCE_S} s")


def test_sigkill_at_random_points_never_breaks_the_store(tmp_path: Path) -> None:
    root, log_path = tmp_path / "store", tmp_path / "ops.log"
    LatentStore(root).close()
    log_path.touch()
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "prefect_acestep.stages.store", __name__])
    rng = random.Random(1234)
    expect = Expectations()
    reported = 0
    for round_number in range(ROUNDS):
        progress, report = context.Pipe(duplex=False)
        writer = context.Process(target=_writer, args=(str(root), str(log_path), round_number, report))
        writer.start()
        report.close()
        puts = rng.randint(1, 6)
        last_put_s = _wait_for_puts(progress, puts)
        reported += puts
        frozen = (ROUNDS - 1 - round_number) % 5 == 0  # the last round too, so its leftover awaits the final gc
        if frozen:
            _freeze_inside_a_write(writer.pid, root / "latents")
        else:
            time.sleep(rng.uniform(0, last_put_s))
        writer.kill()
        writer.join()
        progress.close()
        assert writer.exitcode == -signal.SIGKILL, "the writer must die by SIGKILL, not by an error"
        if frozen:
            assert any(f"~{writer.pid}~" in name for name in os.listdir(root / "latents")), "killed mid-write"
        expect.read(log_path)
        _check(root, expect)
    assert len(expect.put) >= reported, "every put the writers reported must be in their log"
    store = LatentStore(root)
    leftovers = sorted(f"latents/{name}" for name in os.listdir(root / "latents") if name.startswith(".tmp~"))
    assert leftovers, "the rounds killed inside a write must have left their staging behind"
    report = store.gc()
    assert report.removed == []  # nothing expired: only leftovers go
    assert sorted(report.orphans_removed) == leftovers
    assert sorted(os.listdir(root / "latents")) == sorted(f"{r.id}.safetensors" for r in store.list())
    assert not (root / "corrupt").exists()
