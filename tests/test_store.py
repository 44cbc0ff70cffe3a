"""LatentStore API: every method and every error, on both sites: a real directory and a
``memory://`` root (``tests/store_sites.py``). A few tests are about one site's own layout and run
on that site alone; each says why."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import torch

from prefect_acestep.stages.backends.identity import BackendIdentity
from prefect_acestep.stages.errors import (
    InvalidLatentId,
    InvalidStageRequest,
    LatentCorrupt,
    LatentDeleted,
    LatentExpired,
    LatentNotFound,
    StageError,
    StoreBusy,
)
from prefect_acestep.stages.records import LatentRecord
from prefect_acestep.stages.store import GcReport, LatentStore, journal
from prefect_acestep.stages.store.files import latent_rel, split_header
from prefect_acestep.stages.store.fs import LocalFileSystem
from tests.store_sites import Place, local_only, place, places, site_kind  # noqa: F401 (fixtures)

TURBO = BackendIdentity(name="embedded", variant="turbo", latent_space="ace15", weights_digest="abc")
SFT = BackendIdentity(name="embedded", variant="sft", latent_space="ace15", weights_digest="def")
TINY_TTL = 1e-6  # hours (3.6 ms): expired by the time the next statement runs


@pytest.fixture
def store(place: Place) -> LatentStore:
    return place.open()


def latent(t: int = 8, batch: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, t, 64, generator=torch.Generator().manual_seed(seed))


def flip_bit_in(place: Place, latent_id: str, tensor_name: str) -> None:
    """Flip one bit in the middle of ``tensor_name``'s bytes, located through the file's header."""
    data = bytearray(place.read(latent_rel(latent_id)))
    header, data_start = split_header(bytes(data))
    begin, end = header[tensor_name]["data_offsets"]
    data[data_start + (begin + end) // 2] ^= 0x01
    place.write(latent_rel(latent_id), bytes(data))


def embedded_record(place: Place, latent_id: str) -> LatentRecord:
    header, _ = split_header(place.read(latent_rel(latent_id)))
    return LatentRecord.model_validate_json(header["__metadata__"]["record"])


# --- put / get / record ---------------------------------------------------------------------------


def test_put_with_only_stage_type_fills_every_store_field(place: Place, store: LatentStore) -> None:
    tensor = latent(batch=2)
    before = datetime.now(UTC)
    latent_id = store.put(tensor, stage_type="generate")
    record = store.record(latent_id)
    assert record.id == latent_id
    assert record.shape == [2, 8, 64] and record.dtype == "float32" and record.batch_size == 2
    assert len(record.digest) == 64 and record.digest != "0" * 64
    assert record.size_bytes == place.size(latent_rel(latent_id))
    assert before <= record.created_at <= datetime.now(UTC)
    assert record.expires_at == record.created_at + timedelta(hours=24)
    assert torch.equal(store.get(latent_id), tensor)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64, torch.int64])
def test_roundtrip_is_bit_exact_for_each_dtype(store: LatentStore, dtype: torch.dtype) -> None:
    tensor = (latent(t=5) * 100).to(dtype)
    got = store.get(store.put(tensor, stage_type="refine"))
    assert got.dtype == dtype and torch.equal(got, tensor)


def test_put_accepts_views_and_autograd_tensors(store: LatentStore) -> None:
    base = latent(t=6, batch=3).requires_grad_(True)
    view = base.transpose(0, 1)  # not contiguous, has grad history
    assert torch.equal(store.get(store.put(view, stage_type="generate", batch_size=6)), view.detach())


def test_record_keeps_every_given_field(store: LatentStore) -> None:
    fields = dict(
        backend=TURBO,
        stage_type="refine",
        params={"steps": 8, "shift": 3.0},
        seeds=[7],
        is_checkpoint=True,
        checkpoint_step=3,
        total_steps=8,
        schedule=[1.0, 0.9, 0.5, 0.0],
        t_start=0.9,
        pipeline_id="pipe",
        stage_index=1,
        flow_run_id="flow",
        task_run_id="task",
        lm_metadata={"bpm": 120},
        ttl_hours=2.0,
    )
    parent = store.put(latent(), stage_type="generate")
    latent_id = store.put(latent(), parent_ids=[parent], **fields)
    record = store.record(latent_id)
    for name, value in fields.items():
        assert getattr(record, name) == value, name
    assert record.parent_ids == [parent]
    assert record.expires_at == record.created_at + timedelta(hours=2)


def test_extras_roundtrip_and_are_digest_checked(store: LatentStore) -> None:
    momentum = torch.randn(1, 8, 64)
    generator_state = torch.Generator().manual_seed(3).get_state()
    latent_id = store.put(latent(), stage_type="generate", extras={"momentum": momentum, "rng": generator_state})
    extras = store.get_extras(latent_id)
    assert set(extras) == {"momentum", "rng"}
    assert torch.equal(extras["momentum"], momentum) and torch.equal(extras["rng"], generator_state)
    assert store.get_extras(store.put(latent(), stage_type="generate")) == {}


def test_extras_sharing_memory_with_the_latent_are_stored_separately(store: LatentStore) -> None:
    tensor = latent()
    latent_id = store.put(tensor, stage_type="generate", extras={"same": tensor, "view": tensor[0]})
    extras = store.get_extras(latent_id)
    assert torch.equal(extras["same"], tensor) and torch.equal(extras["view"], tensor[0])


@pytest.mark.parametrize(
    ("fields", "names"),
    [
        ({"stage_type": "nonsense"}, "stage_type"),
        ({"no_such_field": 1}, "no_such_field"),
        ({"ttl_hours": -1}, "ttl_hours"),
        ({"id": "abc"}, "sets id itself"),
        ({"digest": "x", "created_at": datetime.now(UTC)}, "sets created_at, digest itself"),
        ({"batch_size": 3}, "batch_size 3 does not match"),
    ],
)
def test_put_rejects_bad_fields_naming_them_and_writes_nothing(
    place: Place, store: LatentStore, fields: dict, names: str
) -> None:
    with pytest.raises(InvalidStageRequest, match=names):
        store.put(latent(), **fields)
    assert place.names("latents") == [] and store.list() == []


def test_put_rejects_non_tensors(store: LatentStore) -> None:
    with pytest.raises(TypeError, match="torch.Tensor"):
        store.put([[1.0]], stage_type="generate")
    with pytest.raises(TypeError, match="extras"):
        store.put(latent(), stage_type="generate", extras=[torch.zeros(1)])
    with pytest.raises(InvalidStageRequest, match="extra tensor name"):
        store.put(latent(), stage_type="generate", extras={"": torch.zeros(1)})


def test_constructor_rejects_bad_settings(place: Place) -> None:
    with pytest.raises(InvalidStageRequest, match="ttl_hours"):
        place.open(ttl_hours=0)
    with pytest.raises(InvalidStageRequest, match="max_bytes"):
        place.open(max_bytes=-1)


# --- errors: not found, deleted, expired, corrupt, invalid IDs -------------------------------------


def test_unknown_id_is_not_found(store: LatentStore) -> None:
    with pytest.raises(LatentNotFound, match="01hzzzzzzzzzzzzzzzzzzzzzzz"):
        store.get("01hzzzzzzzzzzzzzzzzzzzzzzz")
    assert not store.exists("01hzzzzzzzzzzzzzzzzzzzzzzz")
    for method in (store.record, store.pin, store.unpin, store.delete, store.lineage, store.get_extras):
        with pytest.raises(LatentNotFound):
            method("nope")


def test_delete_leaves_a_tombstone_that_says_when(place: Place, store: LatentStore) -> None:
    latent_id = store.put(latent(), stage_type="generate", pinned=True)
    before = datetime.now(UTC)
    store.delete(latent_id)
    assert place.names("latents") == []
    with pytest.raises(LatentDeleted) as caught:
        store.get(latent_id)
    assert caught.value.latent_id == latent_id and caught.value.reason == "deleted"
    assert before <= caught.value.deleted_at <= datetime.now(UTC)
    assert latent_id in str(caught.value)
    assert not store.exists(latent_id)
    for method in (store.record, store.pin, store.delete):
        with pytest.raises(LatentDeleted):
            method(latent_id)


def test_expired_latent_is_never_returned_even_before_gc(place: Place, store: LatentStore) -> None:
    latent_id = store.put(latent(), stage_type="generate", ttl_hours=TINY_TTL)
    expires_at = embedded_record(place, latent_id).expires_at
    time.sleep(0.01)
    with pytest.raises(LatentExpired) as caught:
        store.get(latent_id)
    assert caught.value.expired_at == expires_at
    for method in (store.record, store.get_extras, store.pin, store.lineage):
        with pytest.raises(LatentExpired):
            method(latent_id)
    assert not store.exists(latent_id) and store.list() == []
    report = store.gc()
    assert [(r.id, r.reason, r.at) for r in report.removed] == [(latent_id, "expired", expires_at)]
    with pytest.raises(LatentExpired) as caught:
        store.get(latent_id)
    assert caught.value.expired_at == expires_at


@pytest.mark.parametrize(
    "bad",
    ["../x", "..", "/etc/passwd", "a/b", "a\\b", "x\0y", "x" * 65, "ABC", "", " x", "x\n", "-x", "a.b", 7, None],
)
def test_path_traversal_and_malformed_ids_are_rejected_everywhere(
    place: Place, store: LatentStore, bad: object
) -> None:
    before = place.everything()
    for method in (
        store.get,
        store.get_extras,
        store.record,
        store.exists,
        store.pin,
        store.unpin,
        store.delete,
        store.lineage,
    ):
        with pytest.raises(InvalidLatentId):
            method(bad)
    if bad is not None:  # list(parent=None) means "any parent"
        with pytest.raises(InvalidLatentId):
            store.list(parent=bad)
    # a non-string parent is already refused by the record model
    with pytest.raises(InvalidLatentId if isinstance(bad, str) else InvalidStageRequest):
        store.put(latent(), stage_type="refine", parent_ids=[bad])
    assert place.names("latents") == []
    assert place.everything() == before


def test_flipped_bit_in_tensor_file_is_corrupt(place: Place, store: LatentStore) -> None:
    latent_id = store.put(latent(), stage_type="generate", extras={"m": torch.ones(4)})
    flip_bit_in(place, latent_id, "latent")
    with pytest.raises(LatentCorrupt, match=f"{latent_id}.*digest.*corrupt, quarantined at .*corrupt/{latent_id}") as caught:
        store.get(latent_id)
    assert caught.value.latent_id == latent_id
    # Set aside (kept for inspection) and tombstoned, journaled: every handle and a rebuilt index
    # agree that it is gone and why; gc has nothing left to do for it.
    assert place.exists(f"corrupt/{latent_id}.safetensors") and not place.exists(latent_rel(latent_id))
    assert not store.exists(latent_id) and store.list() == []
    assert b'"reason":"corrupt"' in b"".join(place.journal_lines())
    place.forget_index()
    with pytest.raises(LatentCorrupt, match="quarantined at"):
        place.open().get(latent_id)
    assert store.gc().removed == []


def test_flipped_bit_in_extras_is_corrupt(place: Place, store: LatentStore) -> None:
    latent_id = store.put(latent(), stage_type="generate", extras={"zz": torch.zeros(64)})
    flip_bit_in(place, latent_id, "extra.zz")
    store.get(latent_id)  # the latent itself is intact
    with pytest.raises(LatentCorrupt, match="extras digest.*quarantined at"):
        store.get_extras(latent_id)
    assert not store.exists(latent_id)  # a resume would read the extras: the latent as a whole is gone


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda data: data[:100], "header|unreadable|shorter"),
        (lambda data: b"\xff" * 8 + data[8:], "header length"),
        (
            lambda data: data.replace(b"prefect-acestep-latent", b"prefect-acestep-latenX"),
            "not a prefect-acestep-latent",
        ),
        (lambda data: data.replace(b'"format_version":"1"', b'"format_version":"9"'), "unknown format version"),
    ],
)
def test_damaged_or_foreign_file_is_corrupt(place: Place, store: LatentStore, damage, reason: str) -> None:
    latent_id = store.put(latent(), stage_type="generate")
    damaged = damage(place.read(latent_rel(latent_id)))
    assert damaged != place.read(latent_rel(latent_id))
    place.write(latent_rel(latent_id), damaged)
    with pytest.raises(LatentCorrupt, match=reason):
        store.get(latent_id)
    assert place.exists(f"corrupt/{latent_id}.safetensors") and not store.exists(latent_id)


def test_file_removed_behind_the_stores_back_is_corrupt_then_tombstoned_by_gc(
    place: Place, store: LatentStore
) -> None:
    latent_id = store.put(latent(), stage_type="generate")
    place.fs.rm_file(place.path(latent_rel(latent_id)))
    with pytest.raises(LatentCorrupt, match="missing"):
        store.get(latent_id)
    assert store.gc().removed == []  # the consistency pass notices and tombstones it: not a gc removal
    assert store.list() == []
    with pytest.raises(LatentCorrupt, match="vanished"):
        store.get(latent_id)


@local_only("a local open reconciles the shared index; a new remote host's index never knew the latent")
def test_file_removed_behind_the_stores_back_is_tombstoned_at_open(place: Place) -> None:
    store = place.open()
    latent_id = store.put(latent(), stage_type="generate")
    place.fs.rm_file(place.path(latent_rel(latent_id)))
    store.close()
    reopened = place.open()  # the consistency pass notices and tombstones it
    assert reopened.list() == []
    with pytest.raises(LatentCorrupt, match="vanished"):
        reopened.get(latent_id)


# --- pins, TTL, lineage-aware gc, byte budget ----------------------------------------------------


def test_pin_survives_ttl_and_unpin_lets_it_expire(store: LatentStore) -> None:
    latent_id = store.put(latent(), stage_type="generate", ttl_hours=1)
    store.pin(latent_id)
    assert store.record(latent_id).pinned and store.record(latent_id).expires_at is None
    later = datetime.now(UTC) + timedelta(hours=5)
    assert store.gc(now=later).removed == []
    assert store.list(pinned=True)[0].id == latent_id
    store.unpin(latent_id)
    record = store.record(latent_id)
    assert not record.pinned and record.expires_at == record.created_at + timedelta(hours=1)
    assert [r.id for r in store.gc(now=later).removed] == [latent_id]


def test_pin_protects_ancestors_and_only_them(store: LatentStore) -> None:
    a = store.put(latent(), stage_type="generate", ttl_hours=TINY_TTL)
    b = store.put(latent(), stage_type="refine", parent_ids=[a], ttl_hours=TINY_TTL)
    c = store.put(latent(), stage_type="refine", parent_ids=[b], ttl_hours=TINY_TTL, pinned=True)
    sibling = store.put(latent(), stage_type="cover", parent_ids=[a], ttl_hours=TINY_TTL)
    other = store.put(latent(), stage_type="generate", ttl_hours=TINY_TTL)
    time.sleep(0.01)
    assert store.exists(a) and store.exists(b) and torch.equal(store.get(a), latent())
    report = store.gc()
    assert sorted(r.id for r in report.removed) == sorted([sibling, other])
    assert all(r.reason == "expired" for r in report.removed)
    assert [x.id for x in store.lineage(c).ancestors] == [b, a]
    store.unpin(c)
    assert sorted(r.id for r in store.gc().removed) == sorted([a, b, c])


def test_pin_of_expired_latent_is_refused(store: LatentStore) -> None:
    latent_id = store.put(latent(), stage_type="generate", ttl_hours=TINY_TTL)
    time.sleep(0.01)
    with pytest.raises(LatentExpired):
        store.pin(latent_id)


def test_byte_budget_evicts_expired_then_checkpoints_then_finals_lru(place: Place, store: LatentStore) -> None:
    expired = store.put(latent(), stage_type="generate", ttl_hours=TINY_TTL)
    final_old = store.put(latent(), stage_type="generate")
    ckpt_old = store.put(latent(), stage_type="generate", is_checkpoint=True)
    final_new = store.put(latent(), stage_type="generate")
    ckpt_new = store.put(latent(), stage_type="generate", is_checkpoint=True)
    pinned_ckpt = store.put(latent(), stage_type="generate", is_checkpoint=True, pinned=True)
    store.get(ckpt_old)  # now more recently used than ckpt_new
    store.get(final_old)  # and than final_new
    time.sleep(0.01)
    size = {i: store.record(i).size_bytes for i in (final_old, ckpt_old, final_new, ckpt_new, pinned_ckpt)}
    budget = size[final_old] + size[pinned_ckpt] + size[final_new] - 1  # final_new must go, final_old fits
    store.max_bytes = budget
    report = store.gc()
    assert [(r.id, r.reason) for r in report.removed] == [
        (expired, "expired"),
        (ckpt_new, "evicted"),
        (ckpt_old, "evicted"),
        (final_new, "evicted"),
    ]
    assert [r.size_bytes for r in report.removed[1:]] == [size[ckpt_new], size[ckpt_old], size[final_new]]
    assert report.bytes_freed == sum(r.size_bytes for r in report.removed)
    assert report.bytes_in_use == size[final_old] + size[pinned_ckpt] and not report.over_budget
    assert sorted(r.id for r in store.list()) == sorted([final_old, pinned_ckpt])
    assert place.names("latents") == sorted(f"{i}.safetensors" for i in (final_old, pinned_ckpt))
    with pytest.raises(LatentDeleted, match="evicted") as caught:
        store.get(ckpt_new)
    assert caught.value.reason == "evicted"


def test_budget_never_evicts_pinned_or_their_ancestors(place: Place) -> None:
    store = place.open(max_bytes=0)
    parent = store.put(latent(), stage_type="generate")
    child = store.put(latent(), stage_type="refine", parent_ids=[parent], pinned=True)
    loose = store.put(latent(), stage_type="generate")
    report = store.gc()
    assert [r.id for r in report.removed] == [loose] and report.over_budget
    assert store.exists(parent) and store.exists(child)


def test_gc_needs_an_aware_time(store: LatentStore) -> None:
    with pytest.raises(InvalidStageRequest, match="timezone"):
        store.gc(now=datetime.now())


def test_gc_report_is_a_pydantic_model(store: LatentStore) -> None:
    report = store.gc()
    assert isinstance(report, GcReport)
    assert GcReport.model_validate_json(report.model_dump_json()) == report


@local_only("nothing is staged remotely: an object appears whole with one PUT")
def test_gc_removes_abandoned_temp_files_but_not_fresh_foreign_ones(store: LatentStore) -> None:
    latents = store.root / "latents"
    old = latents / ".tmp~otherhost~123~abcd~01hxxxxxxxxxxxxxxxxxxxxxxx.safetensors"
    fresh = latents / ".tmp~otherhost~124~abcd~01hyyyyyyyyyyyyyyyyyyyyyyy.safetensors"
    for path in (old, fresh):
        path.write_bytes(b"partial")
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))
    report = store.gc()
    assert report.orphans_removed == [f"latents/{old.name}"] and report.bytes_freed == len(b"partial")
    assert fresh.exists() and not old.exists()


# --- list, lineage -------------------------------------------------------------------------------


def test_list_filters(store: LatentStore) -> None:
    g = store.put(latent(), stage_type="generate", backend=TURBO, pipeline_id="p1", flow_run_id="f1")
    r = store.put(latent(), stage_type="refine", backend=TURBO, pipeline_id="p1", parent_ids=[g], is_checkpoint=True)
    c = store.put(latent(), stage_type="cover", backend=SFT, pipeline_id="p2", parent_ids=[g], pinned=True)

    def ids(**filters) -> list[str]:
        return [record.id for record in store.list(**filters)]

    assert ids() == [c, r, g]  # newest first
    assert ids(pipeline_id="p1") == [r, g]
    assert ids(flow_run_id="f1") == [g]
    assert ids(stage_type="cover") == [c]
    assert ids(variant="turbo") == [r, g]
    assert ids(pinned=True) == [c] and ids(pinned=False) == [r, g]
    assert ids(is_checkpoint=True) == [r] and ids(is_checkpoint=False) == [c, g]
    assert ids(parent=g) == [c, r]
    assert ids(pipeline_id="p1", is_checkpoint=False) == [g]
    assert ids(limit=2) == [c, r]
    assert ids(pipeline_id="nope") == []
    with pytest.raises(InvalidStageRequest, match="limit"):
        store.list(limit=-1)
    with pytest.raises(TypeError):
        store.list(colour="red")


def test_lineage_lists_ancestors_descendants_and_missing(store: LatentStore) -> None:
    a = store.put(latent(), stage_type="generate")
    b = store.put(latent(), stage_type="refine", parent_ids=[a])
    c1 = store.put(latent(), stage_type="refine", parent_ids=[b])
    c2 = store.put(latent(), stage_type="cover", parent_ids=[b, a])
    d = store.put(latent(), stage_type="repaint", parent_ids=[c1])
    lineage = store.lineage(b)
    assert [x.id for x in lineage.ancestors] == [a]
    assert [x.id for x in lineage.descendants] == sorted([c1, c2]) + [d]
    assert [x.id for x in store.lineage(d).ancestors] == [c1, b, a]
    store.delete(a)
    assert store.lineage(d).missing_ancestors == [a]
    assert [x.id for x in store.lineage(d).ancestors] == [c1, b]
    assert [x.id for x in store.lineage(c2).ancestors] == [b]


# --- durability: restart, rebuild, journal ------------------------------------------------------


def test_reopen_after_restart_keeps_records_pins_and_tombstones(place: Place) -> None:
    first = place.open()
    kept = first.put(latent(1), stage_type="generate", pipeline_id="p")
    pinned = first.put(latent(2), stage_type="refine", parent_ids=[kept])
    first.pin(pinned)
    gone = first.put(latent(3), stage_type="generate")
    first.delete(gone)
    first.close()
    second = place.open()
    assert sorted(r.id for r in second.list()) == sorted([kept, pinned])
    assert second.record(pinned).pinned and torch.equal(second.get(kept), latent(1))
    with pytest.raises(LatentDeleted):
        second.get(gone)


@local_only("it damages the index file in the store; a memory:// index lives in memory, one per handle")
@pytest.mark.parametrize("damage", ["remove", "garbage", "truncate"])
def test_missing_or_unreadable_index_is_rebuilt_from_files(place: Place, damage: str) -> None:
    tmp_path = Path(place.root)
    first = place.open()
    a = first.put(latent(1), stage_type="generate", pipeline_id="p", backend=TURBO)
    b = first.put(latent(2), stage_type="refine", parent_ids=[a], extras={"m": torch.ones(2)})
    first.pin(b)
    first.unpin(b)
    first.pin(b)
    gone = first.put(latent(3), stage_type="generate")
    first.delete(gone)
    expected = {r.id: r for r in first.list()}
    first.close()
    index = tmp_path / "index.sqlite3"
    for suffix in ("-wal", "-shm"):
        Path(f"{index}{suffix}").unlink(missing_ok=True)
    if damage == "remove":
        index.unlink()
    elif damage == "garbage":
        index.write_bytes(b"this is not a database" * 100)
    else:
        index.write_bytes(index.read_bytes()[:200])
    second = place.open()
    assert {r.id: r for r in second.list()} == expected
    assert second.record(b).pinned and torch.equal(second.get_extras(b)["m"], torch.ones(2))
    assert [x.id for x in second.lineage(b).ancestors] == [a]
    with pytest.raises(LatentDeleted):
        second.get(gone)


def test_rebuild_index_in_place_matches_the_live_index(store: LatentStore) -> None:
    a = store.put(latent(1), stage_type="generate")
    store.put(latent(2), stage_type="refine", parent_ids=[a], pinned=True)
    store.delete(store.put(latent(3), stage_type="generate"))
    before = store.list()
    store.rebuild_index()
    assert store.list() == before


def test_unreadable_file_found_at_rebuild_is_quarantined(place: Place) -> None:
    first = place.open()
    good = first.put(latent(1), stage_type="generate")
    bad = first.put(latent(2), stage_type="generate")
    first.close()
    place.write(latent_rel(bad), b"\x00" * 50)  # header length 0: not ours
    place.forget_index()
    second = place.open()
    assert [r.id for r in second.list()] == [good]
    assert place.exists(f"corrupt/{bad}.safetensors") and not place.exists(latent_rel(bad))
    with pytest.raises(LatentCorrupt, match="quarantined at"):
        second.get(bad)


@local_only("a torn last line belongs to the appended journal; a remote journal entry is one whole object")
def test_crash_between_journal_and_index_is_completed_at_open(place: Place) -> None:
    """A delete killed after its journal append but before its index commit: the next open must
    finish it (tombstone + file removal), and a torn journal line must be ignored then cut."""
    tmp_path = Path(place.root)
    first = place.open()
    doomed = first.put(latent(1), stage_type="generate")
    kept = first.put(latent(2), stage_type="generate")
    first.close()
    appended = journal.AppendedJournal(LocalFileSystem(tmp_path))
    appended.append([journal.Event("remove", doomed, time.time(), "deleted")], after=0)
    with open(tmp_path / "journal.jsonl", "ab") as f:
        f.write(b'{"op":"pin","id":"' + kept.encode())  # torn: the writer died mid-line
    second = place.open()
    with pytest.raises(LatentDeleted):
        second.get(doomed)
    assert not place.exists(latent_rel(doomed))
    assert not second.record(kept).pinned
    second.pin(kept)
    assert (tmp_path / "journal.jsonl").read_bytes().endswith(b"\n")
    second.close()
    place.forget_index()
    assert place.open().record(kept).pinned


def test_damaged_journal_line_is_a_clear_error(place: Place) -> None:
    place.open().close()
    place.write(place.journal_rel(), b"not json\n")
    place.forget_index()
    with pytest.raises(StageError, match="journal.*line 1"):
        place.open()


def test_lock_held_elsewhere_is_store_busy(place: Place, store: LatentStore) -> None:
    latent_id = store.put(latent(), stage_type="generate")
    impatient = place.open(lock_timeout_s=0.2)
    with store.site.lock.held():
        with pytest.raises(StoreBusy, match="lock"):
            impatient.pin(latent_id)
        with pytest.raises(StoreBusy):
            impatient.gc()
        assert torch.equal(impatient.get(latent_id), latent())  # reads do not need the lock
        impatient.put(latent(), stage_type="generate")  # nor do puts
    impatient.pin(latent_id)
    assert store.record(latent_id).pinned


def test_journal_shorter_than_the_index_expects_triggers_a_rebuild(place: Place, store: LatentStore) -> None:
    kept = store.put(latent(1), stage_type="generate")
    store.pin(kept)
    place.wipe_journal()  # e.g. restored from an older backup
    again = place.open()  # a local open finds the shared index ahead of the journal
    store.gc()  # the lock holder catches up first: a remote host finds its own index ahead
    for handle in (again, store):
        assert [r.id for r in handle.list()] == [kept]
        assert not handle.record(kept).pinned  # the pin lived only in the lost journal


def test_returned_tensors_are_private_copies(store: LatentStore) -> None:
    latent_id = store.put(latent(), stage_type="generate", extras={"m": torch.ones(3)})
    got = store.get(latent_id)
    got.add_(1.0)  # writable, and owned by the caller
    store.get_extras(latent_id)["m"].zero_()
    assert torch.equal(store.get(latent_id), latent())
    assert torch.equal(store.get_extras(latent_id)["m"], torch.ones(3))


def test_empty_and_scalar_tensors_roundtrip(store: LatentStore) -> None:
    empty = torch.zeros(1, 0, 64)
    scalar = torch.tensor(3.5)
    got = store.get(store.put(empty, stage_type="generate", extras={"none": torch.zeros(0)}))
    assert got.shape == (1, 0, 64)
    assert torch.equal(store.get(store.put(scalar, stage_type="generate")), scalar)


def test_foreign_files_in_the_latents_folder_are_left_alone(place: Place) -> None:
    place.open().close()
    foreign = ["latents/README.txt", "latents/Not An ID.safetensors"]
    for rel in foreign:
        place.write(rel, b"not ours")
    store = place.open()
    latent_id = store.put(latent(), stage_type="generate")
    assert [r.id for r in store.list()] == [latent_id]
    assert store.gc(now=datetime.now(UTC) + timedelta(days=2)).orphans_removed == []
    assert all(place.read(rel) == b"not ours" for rel in foreign)


def test_journal_naming_a_path_instead_of_an_id_is_refused(place: Place) -> None:
    place.open().close()
    place.write("victim.safetensors", b"keep me")
    place.write(place.journal_rel(), b'{"op":"remove","id":"../victim","at":1.0,"reason":"deleted"}\n')
    place.forget_index()
    with pytest.raises(StageError, match="journal.*line 1"):
        place.open()
    assert place.read("victim.safetensors") == b"keep me"
