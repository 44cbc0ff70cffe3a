"""The stage cache beside a remote store: a stage computed on one machine is a cache hit on another.

"Machines" are this test process and a fresh process that share only the bucket (a real S3 API on
127.0.0.1) and the Prefect server: the second has its own Prefect home (so no local result storage
in common), its own store index directory and its own lock directory.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import fsspec
import pytest
from prefect import flow

from prefect_acestep.stages.errors import InvalidStageRequest
from prefect_acestep.stages.params import StageParams
from prefect_acestep.tasks.blocks import AceLatentStore
from prefect_acestep.tasks.cache_storage import LOCK_MANAGER_ENV, cache_storage
from prefect_acestep.tasks.stage_tasks import stage_task_for
from tests.flow_helpers import read_call_log, register_counting
from tests.s3_server import DUMMY_AWS_ENV, new_bucket, s3_server

ROOT = Path(__file__).resolve().parents[1]

BACKEND = "counting-remote-cache"

SECOND_MACHINE = """
import sys
from pathlib import Path
from tests.flow_helpers import register_counting
register_counting("counting-remote-cache", call_log=Path(sys.argv[1]))
from tests.test_store_remote_cache import one_stage
print(one_stage(sys.argv[2], sys.argv[3]))
"""


@flow
def one_stage(root: str, endpoint: str) -> str:
    """One cacheable stage against the store at ``root``; its task state and latent ID."""
    block = AceLatentStore(root=root, storage_options={"endpoint_url": endpoint})
    params = StageParams(caption="shared cache", backend=BACKEND, seed=11, duration=2.0, inference_steps=4)
    state = stage_task_for(params, block)(params, block, return_state=True)
    return f"{state.name} {state.result()[0].latent_id}"


@pytest.fixture(scope="module")
def endpoint() -> Any:
    with pytest.MonkeyPatch.context() as patch:
        for name, value in DUMMY_AWS_ENV.items():
            patch.setenv(name, value)
        with s3_server() as url:
            yield url


@pytest.mark.usefixtures("fast_prefect")
def test_a_stage_computed_on_one_machine_is_a_hit_on_another(
    endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.settings import PREFECT_API_URL

    bucket = new_bucket(endpoint)
    root = f"s3://{bucket}/store"
    monkeypatch.setenv("ACE_INDEX_DIR", str(tmp_path / "one" / "index"))
    register_counting(BACKEND, call_log=tmp_path / "one.calls")
    first_state, first_id = one_stage(root, endpoint).split()  # machine one: this process
    assert first_state == "Completed"
    assert [row[2] for row in read_call_log(tmp_path / "one.calls")].count("velocity") == 4

    home = tmp_path / "two"  # machine two: a fresh process sharing only the bucket and the server
    env = {
        **os.environ,
        **DUMMY_AWS_ENV,
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "PREFECT_HOME": str(home / "prefect"),
        "ACE_INDEX_DIR": str(home / "index"),
        "PYTHONPATH": str(ROOT),
    }
    done = subprocess.run(
        [sys.executable, "-c", SECOND_MACHINE, str(tmp_path / "two.calls"), root, endpoint],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    second_state, second_id = done.stdout.strip().splitlines()[-1].split()
    assert (second_state, second_id) == ("Cached", first_id)
    assert read_call_log(tmp_path / "two.calls") == []  # no model call on the second machine
    fs = fsspec.filesystem("s3", skip_instance_cache=True, use_listings_cache=False, endpoint_url=endpoint)
    cache = f"{bucket}/store/.prefect-cache"
    assert len(fs.ls(f"{cache}/keys")) == 1 and len(fs.ls(f"{cache}/results")) == 1
    assert fs.exists(f"{bucket}/store/latents/{first_id}.safetensors")


SHARED_LOCKS = None
"""Set by the test below: the object ``ACE_CACHE_LOCK_MANAGER`` names."""


def test_a_lock_manager_for_several_hosts_is_taken_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.locking.filesystem import FileSystemLockManager

    global SHARED_LOCKS
    SHARED_LOCKS = FileSystemLockManager(lock_files_directory=tmp_path / "shared-locks")
    monkeypatch.setenv(LOCK_MANAGER_ENV, f"{__name__}:SHARED_LOCKS")
    assert cache_storage(AceLatentStore(root=str(tmp_path / "store"))).lock_manager is SHARED_LOCKS
    monkeypatch.setenv(LOCK_MANAGER_ENV, f"{__name__}:ROOT")
    with pytest.raises(InvalidStageRequest, match="not a Prefect LockManager"):
        cache_storage(AceLatentStore(root=str(tmp_path / "store")))
    monkeypatch.setenv(LOCK_MANAGER_ENV, "no_such_module_here:x")
    with pytest.raises(InvalidStageRequest, match="importable"):
        cache_storage(AceLatentStore(root=str(tmp_path / "store")))
