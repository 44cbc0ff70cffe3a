"""One open latent store per block configuration per process: a pipeline opens its store once, threads
share it, a forked child opens its own, and closing hands every store of the process back.

Opens are counted where they happen: each open connects to the store's SQLite index, and Python
raises the ``sqlite3.connect`` audit event for every connection, with the database's path.
"""

from __future__ import annotations

import json
import os
import select
import signal
import sqlite3
import sys
import threading
from pathlib import Path

import pytest
import torch

from prefect_acestep import pipeline_flow
from prefect_acestep.tasks import open_stores
from prefect_acestep.tasks.blocks import AceLatentStore
from prefect_acestep.tasks.open_stores import close_stores
from tests.flow_helpers import pipeline_request

BACKEND = "counting-open-stores"

_connected: list[str] = []


def _count_index_connections(event: str, args: tuple) -> None:
    if event == "sqlite3.connect":
        _connected.append(str(args[0]))


sys.addaudithook(_count_index_connections)  # audit hooks cannot be removed: this one only appends


def opens(root: Path) -> int:
    """How often this process has opened the local store at ``root`` so far."""
    return _connected.count(str(root / "index.sqlite3"))


@pytest.mark.usefixtures("fast_prefect", "counting_backend")
def test_a_pipeline_of_three_stages_opens_its_store_once(latent_dir: Path, tmp_path: Path) -> None:
    stages = [
        {"stage_type": "generate", "seed": 1},
        {"stage_type": "refine", "src_stage": 0, "denoise": 0.5, "seed": 2},
        {"stage_type": "refine", "src_stage": 1, "denoise": 0.5, "seed": 3},
    ]
    hops = pipeline_flow(pipeline_request(stages, backend=BACKEND), out_dir=str(tmp_path / "audio"))
    assert len(hops) == 3 and Path(hops[2][0].audio_path).exists()
    assert opens(latent_dir) == 1  # three cache keys, three stages, the audio: one open store
    pipeline_flow(pipeline_request(stages, backend=BACKEND), out_dir=str(tmp_path / "audio"))
    assert opens(latent_dir) == 1  # a second run in the same process opens nothing


def test_threads_share_one_open_store(tmp_path: Path) -> None:
    block = AceLatentStore(root=str(tmp_path / "store"))
    start = threading.Barrier(8)
    stores = []

    def open_one() -> None:
        start.wait(timeout=60)
        stores.append(block.get_store())

    threads = [threading.Thread(target=open_one) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(stores) == 8 and all(store is stores[0] for store in stores)
    assert opens(tmp_path / "store") == 1
    # Another block document with the same settings is the same store; other settings are another.
    assert AceLatentStore(root=str(tmp_path / "store")).get_store() is stores[0]
    assert AceLatentStore(root=str(tmp_path / "store"), ttl_hours=1).get_store() is not stores[0]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_opens_its_own_store(tmp_path: Path) -> None:
    """The child reads the parent's latents through a connection of its own, even when the parent
    forked while another of its threads was opening a store."""
    block = AceLatentStore(root=str(tmp_path / "store"))
    parents = block.get_store()
    latent_id = parents.put(torch.zeros(1, 4, 64), stage_type="generate")
    read, write = os.pipe()
    held, done = threading.Event(), threading.Event()

    def opening_a_store() -> None:  # another thread in the middle of opening a store at the fork
        with open_stores._lock:
            held.set()
            done.wait(timeout=120)

    opener = threading.Thread(target=opening_a_store)
    opener.start()
    assert held.wait(timeout=60)
    pid = os.fork()
    if pid == 0:  # the child: report, and leave without running the parent's exit handlers
        try:
            before = opens(tmp_path / "store")
            childs = block.get_store()
            report = {
                "own": childs is not parents,
                "opened": opens(tmp_path / "store") - before,
                "reads": childs.exists(latent_id),
            }
            os.write(write, json.dumps(report).encode())
        finally:
            os._exit(0)
    done.set()
    opener.join()
    os.close(write)
    answered, _, _ = select.select([read], [], [], 120)
    if not answered:  # a child stuck on a lock it inherited held
        os.kill(pid, signal.SIGKILL)
    with os.fdopen(read) as pipe:
        report = json.loads(pipe.read() or "{}")
    os.waitpid(pid, 0)
    assert report == {"own": True, "opened": 1, "reads": True}
    assert block.get_store() is parents and parents.exists(latent_id)


def test_closing_hands_back_every_store_of_the_process(tmp_path: Path) -> None:
    """What runs at interpreter exit: the stores are closed, and a later use opens afresh."""
    block = AceLatentStore(root=str(tmp_path / "store"))
    first = block.get_store()
    close_stores()
    with pytest.raises(sqlite3.ProgrammingError, match="closed database"):
        first.list()
    again = block.get_store()
    assert again is not first and again.list() == []
    assert opens(tmp_path / "store") == 2
