"""Bundles: several latents (tensors, extras and records) in one safetensors file, to move them
between stores or machines.

Reading checks everything (format, version, manifest, every digest) before returning, so an import
either has a fully verified set of latents in hand or raises ``BundleError`` having written nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import safetensors
import safetensors.torch
import torch
from pydantic import ValidationError

from prefect_acestep.stages.atomic import staged_output
from prefect_acestep.stages.errors import BundleError, InvalidLatentId
from prefect_acestep.stages.records import LatentRecord
from prefect_acestep.stages.store.files import check_format, dtype_name, extras_digest, split_header, tensor_digest
from prefect_acestep.stages.store.ids import validate_latent_id

BUNDLE_FORMAT = "prefect-acestep-bundle"
BUNDLE_VERSION = "1"


@dataclass(frozen=True)
class BundleItem:
    record: LatentRecord
    tensor: torch.Tensor
    extras: dict[str, torch.Tensor]


def write_bundle(path: Path, items: list[BundleItem]) -> Path:
    """Write ``items`` atomically to ``path`` (tensors keyed by position, so IDs never become keys)."""
    tensors: dict[str, torch.Tensor] = {}
    manifest = []
    for position, item in enumerate(items):
        tensors[f"{position}"] = item.tensor
        for name, value in item.extras.items():
            tensors[f"{position}.{name}"] = value
        manifest.append(
            {
                "record": item.record.model_dump(mode="json"),
                "extras": sorted(item.extras),
                "extras_digest": extras_digest(item.extras),
            }
        )
    metadata = {"format": BUNDLE_FORMAT, "format_version": BUNDLE_VERSION, "manifest": json.dumps(manifest)}
    path = path.expanduser().resolve()
    with staged_output(path.parent, target=path) as staged:
        safetensors.torch.save_file(tensors, staged.tmp, metadata)
    return path


def read_bundle(path: Path) -> list[BundleItem]:
    """Every latent in the bundle at ``path``, verified; ``BundleError`` naming the first problem."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise BundleError(f"bundle {path} unreadable: {exc}") from exc
    try:
        header, _ = split_header(data)
        metadata = header.get("__metadata__", {})
        if not isinstance(metadata, dict):
            raise ValueError("metadata is not a JSON object")
        check_format(metadata, BUNDLE_FORMAT, BUNDLE_VERSION)
        manifest = json.loads(metadata["manifest"])
        if not isinstance(manifest, list):
            raise ValueError("manifest is not a list")
    except (ValueError, KeyError) as exc:
        raise BundleError(f"bundle {path} refused: {exc}") from exc
    try:
        tensors = safetensors.torch.load(data)
    except safetensors.SafetensorError as exc:
        raise BundleError(f"bundle {path} refused: tensor data unreadable: {exc}") from exc
    items = [_item(path, position, entry, tensors) for position, entry in enumerate(manifest)]
    ids = [item.record.id for item in items]
    if len(set(ids)) != len(ids):
        raise BundleError(f"bundle {path} refused: it lists a latent ID twice")
    expected_keys = {f"{p}" for p in range(len(items))} | {
        f"{p}.{name}" for p, item in enumerate(items) for name in item.extras
    }
    if set(tensors) != expected_keys:
        mismatch = sorted(set(tensors) ^ expected_keys)
        raise BundleError(f"bundle {path} refused: tensors {mismatch} do not match its manifest")
    return items


def _item(path: Path, position: int, entry: object, tensors: dict[str, torch.Tensor]) -> BundleItem:
    where = f"bundle {path} refused: entry {position}"
    if not isinstance(entry, dict):
        raise BundleError(f"{where}: not a JSON object")
    try:
        record = LatentRecord.model_validate(entry["record"])
        validate_latent_id(record.id)
        for parent in record.parent_ids:
            validate_latent_id(parent)
        names = entry["extras"]
        recorded_extras_digest = entry["extras_digest"]
        tensor = tensors[f"{position}"]
        extras = {name: tensors[f"{position}.{name}"] for name in names}
    except (KeyError, TypeError, ValidationError, InvalidLatentId) as exc:
        raise BundleError(f"{where}: malformed ({type(exc).__name__}: {exc})") from exc
    if list(tensor.shape) != record.shape or dtype_name(tensor) != record.dtype:
        raise BundleError(
            f"{where} ({record.id}): tensor is {dtype_name(tensor)}{list(tensor.shape)}, "
            f"record says {record.dtype}{record.shape}"
        )
    if tensor_digest(tensor) != record.digest:
        raise BundleError(f"{where} ({record.id}): digest mismatch")
    if extras_digest(extras) != recorded_extras_digest:
        raise BundleError(f"{where} ({record.id}): extras digest mismatch")
    return BundleItem(record, tensor, extras)
