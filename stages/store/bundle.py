"""Bundles: several latents (tensors, extras and records) in one safetensors file, to move them
between stores or machines.

Reading streams: the manifest is checked when the bundle is opened (format, version, records, the
tensor names, each tensor's size and place in the file), and each latent's tensors are read and
verified (shape, dtype, digests) one entry at a time, so memory holds one latent whatever the
bundle's size, and a file that is not a bundle (``/dev/zero``) is refused before it is read. An import
verifies every entry before it writes any (``LatentStore.import_bundle``).
"""

from __future__ import annotations

import json
import os
import stat
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import safetensors
import safetensors.torch
import torch
from pydantic import ValidationError
from safetensors import safe_open

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


MAX_MANIFEST_BYTES = 32 * 1024 * 1024
"""A bundle's header (its manifest of records) is read whole; thousands of records fit in this."""
MAX_TENSOR_BYTES = 1024**3
"""Each tensor of a bundle is read into memory on its own; the largest latent a stage makes (64 x
15,000 frames x 64 channels, float64) is under half of this."""


@dataclass(frozen=True)
class BundleEntry:
    """One latent of a bundle as its manifest describes it, before its tensors are read."""

    position: int
    record: LatentRecord
    extras: list[str]
    extras_digest: str


class BundleReader:
    """An open bundle: its manifest checked at once, its tensors read one entry at a time
    (``load``), so memory holds one latent whatever the bundle's size."""

    def __init__(self, path: Path) -> None:
        self.path = path
        header = _read_header(path)
        metadata = header.pop("__metadata__", {})
        try:
            if not isinstance(metadata, dict):
                raise ValueError("metadata is not a JSON object")
            check_format(metadata, BUNDLE_FORMAT, BUNDLE_VERSION)
            manifest = json.loads(metadata["manifest"])
            if not isinstance(manifest, list):
                raise ValueError("manifest is not a list")
        except (ValueError, KeyError) as exc:
            raise BundleError(f"bundle {path} refused: {exc}") from exc
        self.entries = [_entry(path, position, item) for position, item in enumerate(manifest)]
        ids = [entry.record.id for entry in self.entries]
        if len(set(ids)) != len(ids):
            raise BundleError(f"bundle {path} refused: it lists a latent ID twice")
        expected = {f"{e.position}" for e in self.entries} | {f"{e.position}.{n}" for e in self.entries for n in e.extras}
        if set(header) != expected:
            mismatch = sorted(set(header) ^ expected)
            raise BundleError(f"bundle {path} refused: tensors {mismatch} do not match its manifest")
        for name, info in header.items():
            size = _declared_bytes(info)
            if size is None or size > MAX_TENSOR_BYTES:
                raise BundleError(f"bundle {path} refused: tensor {name!r} is not a tensor of at most {MAX_TENSOR_BYTES} bytes")
        try:
            self._file = safe_open(str(path), framework="pt")  # checks every offset against the file's size
        except (safetensors.SafetensorError, OSError) as exc:
            raise BundleError(f"bundle {path} refused: tensor data unreadable: {exc}") from exc

    def load(self, entry: BundleEntry) -> BundleItem:
        """The entry's tensors, verified against its record (shape, dtype, digests)."""
        where = f"bundle {self.path} refused: entry {entry.position} ({entry.record.id})"
        try:
            tensor = self._file.get_tensor(f"{entry.position}")
            extras = {name: self._file.get_tensor(f"{entry.position}.{name}") for name in entry.extras}
        except (safetensors.SafetensorError, OSError) as exc:
            raise BundleError(f"{where}: tensor data unreadable: {exc}") from exc
        record = entry.record
        if list(tensor.shape) != record.shape or dtype_name(tensor) != record.dtype:
            raise BundleError(
                f"{where}: tensor is {dtype_name(tensor)}{list(tensor.shape)}, record says {record.dtype}{record.shape}"
            )
        if tensor_digest(tensor) != record.digest:
            raise BundleError(f"{where}: digest mismatch")
        if extras_digest(extras) != entry.extras_digest:
            raise BundleError(f"{where}: extras digest mismatch")
        return BundleItem(record, tensor, extras)

    def close(self) -> None:
        self._file = None


@contextmanager
def open_bundle(path: Path) -> Iterator[BundleReader]:
    """The bundle at ``path``, open for reading; ``BundleError`` naming the first problem."""
    reader = BundleReader(Path(path))
    try:
        yield reader
    finally:
        reader.close()


def _read_header(path: Path) -> dict:
    """The safetensors header of a regular file (a device such as /dev/zero, a FIFO or a directory
    is refused before anything is read from it), at most ``MAX_MANIFEST_BYTES``."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # before opening: opening a FIFO waits for a writer
            raise BundleError(f"bundle {path} refused: not a regular file")
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) == 8:
                (length,) = struct.unpack("<Q", head)
                if length > MAX_MANIFEST_BYTES:
                    raise BundleError(f"bundle {path} refused: header length {length} is over {MAX_MANIFEST_BYTES} bytes")
                head += f.read(length)
    except OSError as exc:
        raise BundleError(f"bundle {path} unreadable: {exc}") from exc
    try:
        return split_header(head)[0]
    except ValueError as exc:
        raise BundleError(f"bundle {path} refused: {exc}") from exc


def _declared_bytes(info: object) -> int | None:
    """Bytes a header entry says its tensor takes (None when the entry is not a tensor's)."""
    try:
        begin, end = (int(x) for x in info["data_offsets"])  # type: ignore[index]
    except (KeyError, TypeError, ValueError):
        return None
    return end - begin if end >= begin else None


def _entry(path: Path, position: int, entry: object) -> BundleEntry:
    where = f"bundle {path} refused: entry {position}"
    if not isinstance(entry, dict):
        raise BundleError(f"{where}: not a JSON object")
    try:
        record = LatentRecord.model_validate(entry["record"])
        validate_latent_id(record.id)
        for parent in record.parent_ids:
            validate_latent_id(parent)
        names = entry["extras"]
        if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
            raise TypeError("extras is not a list of names")
        digest = entry["extras_digest"]
        if not isinstance(digest, str):
            raise TypeError("extras_digest is not a string")
    except (KeyError, TypeError, ValidationError, InvalidLatentId) as exc:
        raise BundleError(f"{where}: malformed ({type(exc).__name__}: {exc})") from exc
    return BundleEntry(position, record, names, digest)
