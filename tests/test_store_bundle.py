"""Bundles: export several latents to one file, import them elsewhere; a corrupt, foreign or
conflicting bundle is refused with nothing written. On both sites (``tests/store_sites.py``)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from prefect_acestep.stages.backends.identity import BackendIdentity
from prefect_acestep.stages.errors import BundleError, LatentDeleted, LatentExpired, LatentNotFound
from prefect_acestep.stages.store import LatentStore
from prefect_acestep.stages.store.files import split_header, tensor_digest
from tests.store_sites import Place, places, site_kind  # noqa: F401 (fixtures)

TURBO = BackendIdentity(name="embedded", variant="turbo", latent_space="ace15", weights_digest="abc")


@pytest.fixture
def source_place(places: Callable[[str], Place]) -> Place:
    return places("source")


@pytest.fixture
def source(source_place: Place) -> LatentStore:
    return source_place.open()


@pytest.fixture
def target_place(places: Callable[[str], Place]) -> Place:
    return places("target")


@pytest.fixture
def target(target_place: Place) -> LatentStore:
    return target_place.open(ttl_hours=2)


def chain(store: LatentStore) -> list[str]:
    a = store.put(torch.randn(2, 8, 64), stage_type="generate", backend=TURBO, seeds=[1, 2], pipeline_id="p")
    b = store.put(
        torch.randn(1, 8, 64).to(torch.bfloat16),
        stage_type="refine",
        backend=TURBO,
        parent_ids=[a],
        is_checkpoint=True,
        checkpoint_step=2,
        total_steps=4,
        schedule=[1.0, 0.75, 0.5, 0.25, 0.0],
        extras={"momentum": torch.randn(1, 8, 64), "rng": torch.Generator().manual_seed(5).get_state()},
        pinned=True,
    )
    return [a, b]


def store_state(place: Place) -> tuple[list[str], list[bytes]]:
    """The latent files and the journal: what 'nothing written' is checked against."""
    return place.names("latents"), place.journal_lines()


def rewrite_bundle(path: Path, edit) -> None:
    """Rewrite a bundle's tensors and metadata through ``edit(tensors, metadata)``."""
    with safe_open(str(path), "pt") as f:
        metadata = dict(f.metadata())
        tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
    edit(tensors, metadata)
    save_file(tensors, path, metadata)


def test_roundtrip_keeps_tensors_extras_records_and_lineage(
    source: LatentStore, target: LatentStore, tmp_path: Path
) -> None:
    ids = chain(source)
    path = source.export_bundle(ids, tmp_path / "out" / "two.bundle")
    assert path == (tmp_path / "out" / "two.bundle").resolve() and path.exists()
    before = datetime.now(UTC)
    assert target.import_bundle(path) == ids
    for latent_id in ids:
        assert torch.equal(target.get(latent_id), source.get(latent_id))
        mine, theirs = target.record(latent_id), source.record(latent_id)
        assert mine.model_dump(exclude={"expires_at"}) == theirs.model_dump(exclude={"expires_at"})
    extras = target.get_extras(ids[1])
    assert set(extras) == {"momentum", "rng"}
    assert all(torch.equal(extras[k], v) for k, v in source.get_extras(ids[1]).items())
    imported_a = target.record(ids[0])
    assert imported_a.expires_at >= before + timedelta(hours=2)  # TTL restarts with the target's 2 h
    assert target.record(ids[1]).pinned
    assert [r.id for r in target.lineage(ids[1]).ancestors] == [ids[0]]


def test_import_is_idempotent_and_revives_deleted_or_expired(
    source_place: Place, source: LatentStore, tmp_path: Path
) -> None:
    ids = chain(source)
    originals = {latent_id: source.get(latent_id) for latent_id in ids}
    path = source.export_bundle(ids, tmp_path / "b.bundle")
    assert source.import_bundle(path) == ids  # same content already here: fine
    source.delete(ids[0])
    source.unpin(ids[1])
    source.gc(now=datetime.now(UTC) + timedelta(days=2))
    with pytest.raises(LatentDeleted):
        source.get(ids[0])
    with pytest.raises(LatentExpired):
        source.get(ids[1])
    assert source.import_bundle(path) == ids
    assert all(torch.equal(source.get(latent_id), originals[latent_id]) for latent_id in ids)
    assert source.record(ids[1]).pinned  # the bundle carried the pin
    source.close()
    source_place.forget_index()
    rebuilt = source_place.open()  # the revival survives an index rebuild from files + journal
    assert sorted(r.id for r in rebuilt.list()) == sorted(ids) and rebuilt.record(ids[1]).pinned


def test_export_needs_resolvable_ids_and_writes_nothing_otherwise(source: LatentStore, tmp_path: Path) -> None:
    ids = chain(source)
    with pytest.raises(LatentNotFound):
        source.export_bundle([ids[0], "nope"], tmp_path / "x.bundle")
    with pytest.raises(BundleError, match="at least one"):
        source.export_bundle([], tmp_path / "x.bundle")
    assert not (tmp_path / "x.bundle").exists()
    assert [name for name in os.listdir(tmp_path) if name.startswith(".") or name.endswith(".bundle")] == []


def _flip_tensor_byte(tensors: dict, metadata: dict) -> None:
    tensors["0"] = tensors["0"].clone()
    tensors["0"].view(-1)[3] += 1


def _flip_extra_byte(tensors: dict, metadata: dict) -> None:
    tensors["1.momentum"] = tensors["1.momentum"] + 1


def _future_version(tensors: dict, metadata: dict) -> None:
    metadata["format_version"] = "99"


def _foreign_format(tensors: dict, metadata: dict) -> None:
    metadata["format"] = "someone-else"


def _traversal_id(tensors: dict, metadata: dict) -> None:
    manifest = json.loads(metadata["manifest"])
    manifest[0]["record"]["id"] = "../../etc/evil"
    metadata["manifest"] = json.dumps(manifest)


def _duplicate_entry(tensors: dict, metadata: dict) -> None:
    manifest = json.loads(metadata["manifest"])
    manifest[1] = {**manifest[0]}
    tensors["1"] = tensors["0"].clone()
    for name in [n for n in tensors if n.startswith("1.")]:
        del tensors[name]
    metadata["manifest"] = json.dumps(manifest)


def _stray_tensor(tensors: dict, metadata: dict) -> None:
    tensors["7"] = torch.zeros(1)


def _missing_tensor(tensors: dict, metadata: dict) -> None:
    del tensors["1.rng"]


def _bad_record(tensors: dict, metadata: dict) -> None:
    manifest = json.loads(metadata["manifest"])
    manifest[0]["record"]["stage_type"] = "nonsense"
    metadata["manifest"] = json.dumps(manifest)


def _no_manifest(tensors: dict, metadata: dict) -> None:
    del metadata["manifest"]


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (_flip_tensor_byte, "digest mismatch"),
        (_flip_extra_byte, "extras digest mismatch"),
        (_future_version, "unknown format version '99'"),
        (_foreign_format, "not a prefect-acestep-bundle"),
        (_traversal_id, "malformed.*InvalidLatentId"),
        (_duplicate_entry, "twice"),
        (_stray_tensor, "do not match its manifest"),
        (_missing_tensor, "do not match its manifest"),
        (_bad_record, "(?s)malformed.*stage_type"),
        (_no_manifest, "manifest"),
    ],
)
def test_bad_bundle_is_refused_with_nothing_written(
    source: LatentStore, target_place: Place, target: LatentStore, tmp_path: Path, edit, reason: str
) -> None:
    path = source.export_bundle(chain(source), tmp_path / "b.bundle")
    rewrite_bundle(path, edit)
    target.put(torch.zeros(1, 2, 64), stage_type="generate")
    before = store_state(target_place), [r.id for r in target.list()]
    with pytest.raises(BundleError, match=reason):
        target.import_bundle(path)
    assert (store_state(target_place), [r.id for r in target.list()]) == before


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "shorter than a safetensors header"),
        (b"not a bundle at all, just text", "header length"),
        (None, "unreadable"),
    ],
)
def test_unreadable_bundle_is_refused(
    target_place: Place, target: LatentStore, tmp_path: Path, content: bytes | None, reason: str
) -> None:
    path = tmp_path / "junk.bundle"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(BundleError, match=reason):
        target.import_bundle(path)
    assert store_state(target_place) == ([], [])


def test_truncated_bundle_is_refused(
    source: LatentStore, target_place: Place, target: LatentStore, tmp_path: Path
) -> None:
    path = source.export_bundle(chain(source), tmp_path / "b.bundle")
    data = path.read_bytes()
    _, data_start = split_header(data)
    path.write_bytes(data[: data_start + 100])
    with pytest.raises(BundleError, match="tensor data unreadable"):
        target.import_bundle(path)
    assert store_state(target_place) == ([], [])


def test_id_clash_with_different_content_is_refused(
    source: LatentStore, target_place: Place, target: LatentStore, tmp_path: Path
) -> None:
    ids = chain(source)
    path = source.export_bundle(ids, tmp_path / "b.bundle")
    target.import_bundle(path)
    # same ID, different content, digests consistent: as if another store had made the same ID
    rewrite_bundle(path, _flip_tensor_byte)
    rewrite_bundle(path, _redigest)
    before = store_state(target_place)
    with pytest.raises(BundleError, match=f"{ids[0]} exists here with different content"):
        target.import_bundle(path)
    assert store_state(target_place) == before
    assert torch.equal(target.get(ids[0]), source.get(ids[0]))


def _redigest(tensors: dict, metadata: dict) -> None:
    manifest = json.loads(metadata["manifest"])
    manifest[0]["record"]["digest"] = tensor_digest(tensors["0"])
    metadata["manifest"] = json.dumps(manifest)


def test_import_never_unpins_and_agrees_with_a_rebuild(
    source_place: Place, source: LatentStore, tmp_path: Path
) -> None:
    loose = source.put(torch.randn(1, 4, 64), stage_type="generate")
    path = source.export_bundle([loose], tmp_path / "b.bundle")  # exported unpinned
    source.pin(loose)
    source.import_bundle(path)
    assert source.record(loose).pinned
    source.close()
    source_place.forget_index()
    assert source_place.open().record(loose).pinned


# --- hostile bundles (issue 14, item 7) -----------------------------------------------------------


def test_a_device_or_a_huge_declared_tensor_is_refused_before_reading_it(
    target_place: Place, target: LatentStore, tmp_path: Path
) -> None:
    """Before: ``latents import /dev/zero`` read the whole "file" into memory (MemoryError)."""
    with pytest.raises(BundleError, match="not a regular file"):
        target.import_bundle("/dev/zero")
    path = LatentStore(tmp_path / "other").export_bundle(
        [LatentStore(tmp_path / "other").put(torch.randn(1, 8, 64), stage_type="generate")], tmp_path / "b.bundle"
    )
    data = path.read_bytes()
    header, start = split_header(data)
    header["0"] = {"dtype": "F32", "shape": [2**31], "data_offsets": [0, 2**33]}  # claims 8 GiB
    forged = json.dumps(header).encode()
    path.write_bytes(len(forged).to_bytes(8, "little") + forged + data[start:])
    with pytest.raises(BundleError, match="tensor '0' is not a tensor of at most 1073741824 bytes"):
        target.import_bundle(path)
    assert store_state(target_place) == ([], [])


def forge(path: Path, edit_record) -> None:
    """Rewrite the records in a bundle's manifest (digests stay consistent: a forgery, not damage)."""

    def edit(tensors: dict, metadata: dict) -> None:
        manifest = json.loads(metadata["manifest"])
        for entry in manifest:
            edit_record(entry["record"])
        metadata["manifest"] = json.dumps(manifest)

    rewrite_bundle(path, edit)


def test_a_forged_pin_never_protects_a_latent_already_in_the_store(
    source: LatentStore, target: LatentStore, tmp_path: Path
) -> None:
    """Before: a bundle record claiming ``pinned`` with ``parent_ids`` naming an unrelated latent of
    the target made that latent survive every gc."""
    victim = target.put(torch.randn(1, 8, 64), stage_type="generate", ttl_hours=1)
    carrier = source.put(torch.randn(1, 8, 64), stage_type="refine")
    path = source.export_bundle([carrier], tmp_path / "forged.bundle")
    forge(path, lambda record: record.update(pinned=True, parent_ids=[victim]))
    assert target.import_bundle(path) == [carrier]
    assert not target.record(carrier).pinned
    report = target.gc(now=datetime.now(UTC) + timedelta(hours=3))
    assert victim in {removed.id for removed in report.removed}


def test_a_bundle_cannot_rewrite_a_latent_already_in_the_store(
    source: LatentStore, target: LatentStore, tmp_path: Path
) -> None:
    """Same ID, same content, another record (pinned, a TTL of a century): this store's record,
    pin and expiry stay."""
    ids = chain(source)
    path = source.export_bundle(ids[:1], tmp_path / "one.bundle")
    target.import_bundle(path)
    before = target.record(ids[0])
    forge(path, lambda record: record.update(pinned=True, ttl_hours=876_000.0, pipeline_id="forged"))
    assert target.import_bundle(path) == ids[:1]
    assert target.record(ids[0]) == before
