"""LatentStore on a remote root: a real S3 API (moto's server on 127.0.0.1) and fsspec's memory://.

Each ``host`` below is a store instance with an index of its own (a separate index directory on S3;
memory:// indexes are always per instance), the way two machines sharing a bucket see it: what one
host does, the other must find through the remote objects alone.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import fsspec
import pytest
import torch

from prefect_acestep.stages.errors import (
    BundleError,
    InvalidLatentId,
    InvalidStageRequest,
    LatentCorrupt,
    LatentDeleted,
    LatentExpired,
    LatentNotFound,
    StoreBusy,
)
from prefect_acestep.stages.store import LatentStore, journal
from prefect_acestep.stages.store.files import split_header
from tests.s3_server import DUMMY_AWS_ENV, new_bucket, s3_server

ROOT = Path(__file__).resolve().parents[1]
TINY_TTL = 1e-6  # hours: expired by the next statement


@pytest.fixture(scope="module")
def aws_env() -> Any:
    with pytest.MonkeyPatch.context() as patch:
        for name, value in DUMMY_AWS_ENV.items():
            patch.setenv(name, value)
        for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"):
            patch.delenv(name, raising=False)
        yield


@pytest.fixture(scope="module")
def endpoint(aws_env: None) -> Any:
    with s3_server() as url:
        yield url


@dataclass
class Remote:
    """One remote store location and the raw filesystem under it (to look at or damage objects)."""

    url: str
    options: dict[str, Any]
    fs: Any
    index_base: Path | None
    opened: list[LatentStore] = field(default_factory=list)

    def host(self, name: str = "a", **kwargs: Any) -> LatentStore:
        if self.index_base is not None:
            kwargs.setdefault("index_dir", self.index_base / name)
        store = LatentStore(self.url, storage_options=self.options, **kwargs)
        self.opened.append(store)
        return store

    def path(self, rel: str) -> str:
        return f"{self.url.split('://', 1)[1]}/{rel}"

    def keys(self, prefix: str) -> list[str]:
        try:
            return sorted(p.rsplit("/", 1)[-1] for p in self.fs.find(self.path(prefix)))
        except FileNotFoundError:
            return []


@pytest.fixture(params=["s3", "memory"])
def remote(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "s3":
        endpoint = request.getfixturevalue("endpoint")
        bucket = new_bucket(endpoint)
        options = {"endpoint_url": endpoint}
        fs = fsspec.filesystem("s3", skip_instance_cache=True, use_listings_cache=False, **options)
        where = Remote(f"s3://{bucket}/store", options, fs, tmp_path / "index")
    else:
        where = Remote(f"memory://store-{secrets.token_hex(6)}", {}, fsspec.filesystem("memory"), None)
    yield where
    for store in where.opened:
        store.close()
    if request.param == "memory" and where.fs.exists(where.path("")):
        where.fs.rm(where.path(""), recursive=True)


def latent(t: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randn(1, t, 64, generator=torch.Generator().manual_seed(seed))


def flip_tensor_bit(data: bytes) -> bytes:
    header, start = split_header(data)
    begin, end = header["latent"]["data_offsets"]
    damaged = bytearray(data)
    damaged[start + (begin + end) // 2] ^= 0x01
    return bytes(damaged)


# --- one host ---------------------------------------------------------------------------------------


def test_put_get_record_and_objects(remote: Remote) -> None:
    store = remote.host()
    tensor, extra = latent(seed=1), torch.arange(6, dtype=torch.int64)
    latent_id = store.put(tensor, stage_type="generate", pipeline_id="p1", extras={"codes": extra})
    assert torch.equal(store.get(latent_id), tensor)
    assert torch.equal(store.get_extras(latent_id)["codes"], extra)
    record = store.record(latent_id)
    assert record.pipeline_id == "p1" and record.shape == [1, 8, 64] and len(record.digest) == 64
    assert remote.keys("latents") == [f"{latent_id}.safetensors"]
    assert record.size_bytes == remote.fs.size(remote.path(f"latents/{latent_id}.safetensors"))
    assert store.root == remote.url and store.remote
    assert [r.id for r in store.list(pipeline_id="p1")] == [latent_id]


def test_unknown_invalid_and_refused_roots(remote: Remote, tmp_path: Path) -> None:
    store = remote.host()
    with pytest.raises(LatentNotFound):
        store.get("01abcdefghjkmnpqrstvwxyz00")
    assert not store.exists("01abcdefghjkmnpqrstvwxyz00")
    for bad in ("../x", "a/b", "/etc/passwd", "x" * 65):
        with pytest.raises(InvalidLatentId):
            store.get(bad)
    with pytest.raises(InvalidStageRequest, match="gs://"):
        LatentStore("gs://bucket/store")
    with pytest.raises(InvalidStageRequest, match="URL roots only"):
        LatentStore(tmp_path / "local", storage_options={"endpoint_url": "http://127.0.0.1:1"})


def test_corrupt_object_is_refused_and_set_aside(remote: Remote) -> None:
    store = remote.host()
    latent_id = store.put(latent(seed=2), stage_type="generate")
    rel = remote.path(f"latents/{latent_id}.safetensors")
    remote.fs.pipe_file(rel, flip_tensor_bit(remote.fs.cat_file(rel)))
    with pytest.raises(LatentCorrupt, match="digest.*corrupt, quarantined at (s3|memory)://"):
        store.get(latent_id)  # the first read sets it aside, journaled
    assert remote.keys("corrupt") == [f"{latent_id}.safetensors"]
    other = store.put(latent(seed=3), stage_type="generate")
    other_rel = remote.path(f"latents/{other}.safetensors")
    remote.fs.pipe_file(other_rel, b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    fresh = remote.host("b")  # never saw it: finds the object, and refuses it
    with pytest.raises(LatentCorrupt):
        fresh.get(other)
    fresh.gc()  # sets the file whose header is unreadable aside, so every host says why it is gone
    assert remote.keys("corrupt") == sorted([f"{latent_id}.safetensors", f"{other}.safetensors"])
    with pytest.raises(LatentCorrupt, match="corrupt"):
        store.get(other)


def test_ttl_pins_lineage_and_gc(remote: Remote) -> None:
    store = remote.host()
    parent = store.put(latent(seed=4), stage_type="generate", ttl_hours=TINY_TTL)
    child = store.put(latent(seed=5), stage_type="refine", parent_ids=[parent], pinned=True)
    loose = store.put(latent(seed=6), stage_type="generate", ttl_hours=TINY_TTL)
    time.sleep(0.01)
    with pytest.raises(LatentExpired):
        store.get(loose)
    assert store.exists(parent)  # protected by its pinned child
    lineage = store.lineage(child)
    assert [r.id for r in lineage.ancestors] == [parent] and lineage.missing_ancestors == []
    report = remote.host("b").gc()
    assert [(r.id, r.reason) for r in report.removed] == [(loose, "expired")]
    assert remote.keys("latents") == sorted(f"{i}.safetensors" for i in (parent, child))
    store.unpin(child)
    later = datetime.now(UTC) + timedelta(days=2)
    assert {r.id for r in store.gc(now=later).removed} == {parent, child}
    assert remote.keys("latents") == []
    with pytest.raises(LatentExpired):
        store.record(child)


def test_byte_budget_evicts_checkpoints_first(remote: Remote) -> None:
    store = remote.host()
    final = store.put(latent(seed=7), stage_type="generate")
    checkpoint = store.put(latent(seed=8), stage_type="generate", is_checkpoint=True)
    kept = store.put(latent(seed=9), stage_type="generate", pinned=True)
    size = store.record(final).size_bytes
    report = remote.host("b", max_bytes=2 * size).gc()
    assert [(r.id, r.reason) for r in report.removed] == [(checkpoint, "evicted")]
    report = remote.host("c", max_bytes=0).gc()
    assert [r.id for r in report.removed] == [final] and report.over_budget
    assert store.exists(kept)
    with pytest.raises(LatentDeleted, match="evicted"):
        store.get(checkpoint)


def test_bundles_move_latents_between_remote_and_local(remote: Remote, tmp_path: Path) -> None:
    store = remote.host()
    first = store.put(latent(seed=10), stage_type="generate", pinned=True)
    second = store.put(latent(seed=11), stage_type="refine", parent_ids=[first])
    bundle = store.export_bundle([first, second], tmp_path / "two.bundle")
    local = LatentStore(tmp_path / "local")
    assert local.import_bundle(bundle) == [first, second]
    assert torch.equal(local.get(second), store.get(second))
    store.delete(second)
    other_host = remote.host("b")
    assert other_host.import_bundle(bundle) == [first, second]  # revives the deleted one
    assert torch.equal(store.get(second), local.get(second)) and store.record(first).pinned
    local.delete(first)
    clash = local.put(latent(seed=12), stage_type="generate")
    forged = local.export_bundle([clash], tmp_path / "clash.bundle")
    data = bytearray(forged.read_bytes())
    forged.write_bytes(bytes(data).replace(clash.encode(), first.encode()))
    with pytest.raises(BundleError, match="different content"):
        remote.host("c").import_bundle(forged)  # host c never saw ``first``: it must look remotely


@pytest.mark.parametrize("remote", ["s3"], indirect=True)  # a memory:// index lives as long as its store
def test_index_is_a_cache_rebuilt_from_the_objects(remote: Remote) -> None:
    assert remote.index_base is not None
    store = remote.host()
    pinned = store.put(latent(seed=13), stage_type="generate")
    store.pin(pinned)
    gone = store.put(latent(seed=14), stage_type="generate")
    store.delete(gone)
    store.close()
    for path in (remote.index_base / "a").rglob("index.sqlite3*"):
        path.unlink()
    again = remote.host("a")
    assert again.record(pinned).pinned
    with pytest.raises(LatentDeleted):
        again.get(gone)
    assert remote.keys("journal") == ["000000000001.jsonl", "000000000002.jsonl"]


# --- several hosts ------------------------------------------------------------------------------------


def test_what_one_host_does_the_other_sees(remote: Remote) -> None:
    a, b = remote.host("a"), remote.host("b")
    parent = a.put(latent(seed=15), stage_type="generate")
    child = a.put(latent(seed=16), stage_type="refine", parent_ids=[parent])
    assert torch.equal(b.get(child), a.get(child))  # a miss looks for the object before NotFound
    assert {r.id for r in b.list()} == {parent, child}
    assert [r.id for r in b.lineage(parent).descendants] == [child]
    a.pin(parent)
    assert b.record(parent).pinned
    late = a.put(latent(seed=21), stage_type="generate")
    a.pin(late)
    assert remote.host("c").record(late).pinned  # the pin was applied before c ever saw the file
    b.unpin(parent)
    assert not a.record(parent).pinned
    a.delete(child)
    with pytest.raises(LatentDeleted):
        b.get(child)
    assert not b.exists(child)
    assert remote.keys("journal") == [f"{n:012d}.jsonl" for n in range(1, 5)]


def test_a_stale_journal_writer_loses_without_changing_anything(remote: Remote) -> None:
    """The journal is the fence behind the lease: a writer whose view is one change behind (as a
    holder whose lease was taken over would be) cannot commit over the change it missed."""
    a, b = remote.host("a"), remote.host("b")
    latent_id = a.put(latent(seed=17), stage_type="generate")
    b.record(latent_id)
    position = b._index.journal_offset()
    a.pin(latent_id)
    before = remote.keys("journal")
    with pytest.raises(StoreBusy, match="another process"):
        b.site.journal.append([journal.Event("remove", latent_id, time.time(), "deleted")], after=position)
    assert remote.keys("journal") == before and a.exists(latent_id) and b.record(latent_id).pinned


def test_the_lock_is_exclusive_between_hosts(remote: Remote) -> None:
    a, b = remote.host("a"), remote.host("b", lock_timeout_s=0.3)
    latent_id = a.put(latent(seed=18), stage_type="generate")
    with a.site.lock.held():
        started = time.monotonic()
        with pytest.raises(StoreBusy, match="held by"):
            b.pin(latent_id)
        assert time.monotonic() - started >= 0.3
    b.pin(latent_id)  # released: free again at once
    assert a.record(latent_id).pinned


def test_endpoint_from_the_environment(endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without storage options, s3fs/botocore take the endpoint from AWS_ENDPOINT_URL."""
    bucket = new_bucket(endpoint)
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    store = LatentStore(f"s3://{bucket}/env", index_dir=tmp_path / "index")
    latent_id = store.put(latent(seed=19), stage_type="generate")
    assert LatentStore(f"s3://{bucket}/env", index_dir=tmp_path / "other").exists(latent_id)


HOLDER = """
import sys, time
from prefect_acestep.stages.store import LatentStore
store = LatentStore(sys.argv[1], storage_options={"endpoint_url": sys.argv[2]}, index_dir=sys.argv[3], lease_s=1.0)
with store.site.lock.held():
    print("held", flush=True)
    time.sleep(600)
"""


def test_a_crashed_holders_lease_is_taken_over(endpoint: str, tmp_path: Path) -> None:
    url = f"s3://{new_bucket(endpoint)}/store"
    options = {"endpoint_url": endpoint}
    store = LatentStore(url, storage_options=options, index_dir=tmp_path / "a", lock_timeout_s=0.5, lease_s=1.0)
    latent_id = store.put(latent(seed=20), stage_type="generate")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, url, endpoint, str(tmp_path / "b")],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        time.sleep(1.5)  # longer than the lease: a live holder's heartbeat keeps it anyway
        with pytest.raises(StoreBusy, match="held by"):
            store.pin(latent_id)
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=10)
        patient = LatentStore(url, storage_options=options, index_dir=tmp_path / "a", lock_timeout_s=10, lease_s=1.0)
        started = time.monotonic()
        patient.pin(latent_id)
        waited = time.monotonic() - started
        assert waited >= 1.0, waited  # a whole lease without a heartbeat, then taken over
        assert store.record(latent_id).pinned
    finally:
        holder.kill()
        holder.wait()
