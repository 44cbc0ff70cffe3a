"""Digests of weights by value, read from safetensors headers and sampled elements.

The weights digest is part of every latent's provenance and of every cache key, and the registry
computes it without loading a model, so it must be cheap: hashing ~5 GB of weights would take tens
of seconds. Per tensor it hashes the name, the shape and a fixed sample of elements (all of a small
tensor; three windows of ``SAMPLE_ELEMENTS`` of a large one), read straight from the file at the
header's offsets.

The sampled elements are hashed as float32 values, not as stored bytes: a bf16 checkpoint and its
exact fp32 copy hold the same weights and get one digest, while any tensor whose sampled values
change (a fine-tune changes every matrix) gets another. Paths never enter: the same weights at two
places, or under the two layouts' file names, digest alike.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

SAMPLE_ELEMENTS = 4096
"""Elements per sampled window of a large tensor (start, middle, end)."""
_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}  # fmt: skip
_MAX_HEADER = 100 * 1024 * 1024


def safetensors_tensor_digests(path: Path) -> Iterator[tuple[str, str]]:
    """(tensor name, digest) for every tensor in a safetensors file, in file order."""
    with path.open("rb") as f:
        size = path.stat().st_size
        (header_len,) = struct.unpack("<Q", f.read(8))
        if header_len > min(_MAX_HEADER, size - 8):
            raise ValueError(f"{path}: not a safetensors file (header length {header_len})")
        header = json.loads(f.read(header_len))
        data_start = 8 + header_len
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            dtype = _SAFETENSORS_DTYPES.get(entry["dtype"])
            if dtype is None:
                raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {entry['dtype']}")
            begin, _end = entry["data_offsets"]
            yield name, _sampled_digest(f, data_start + begin, dtype, entry["shape"])


def _sampled_digest(f: Any, offset: int, dtype: torch.dtype, shape: list[int]) -> str:
    numel = 1
    for dim in shape:
        numel *= dim
    itemsize = torch.empty((), dtype=dtype).element_size()
    h = hashlib.sha256(json.dumps(list(shape)).encode())
    for start, count in _windows(numel):
        f.seek(offset + start * itemsize)
        raw = f.read(count * itemsize)
        h.update(_canonical_bytes(torch.frombuffer(bytearray(raw), dtype=dtype)))
    return h.hexdigest()


def tensor_digest(tensor: torch.Tensor) -> str:
    """The digest ``safetensors_tensor_digests`` gives the same tensor stored in a file."""
    flat = tensor.detach().reshape(-1).cpu()
    h = hashlib.sha256(json.dumps(list(tensor.shape)).encode())
    for start, count in _windows(flat.numel()):
        h.update(_canonical_bytes(flat[start : start + count]))
    return h.hexdigest()


def _windows(numel: int) -> list[tuple[int, int]]:
    if numel <= 3 * SAMPLE_ELEMENTS:
        return [(0, numel)] if numel else []
    middle = numel // 2 - SAMPLE_ELEMENTS // 2
    return [(0, SAMPLE_ELEMENTS), (middle, SAMPLE_ELEMENTS), (numel - SAMPLE_ELEMENTS, SAMPLE_ELEMENTS)]


def _canonical_bytes(values: torch.Tensor) -> bytes:
    """Floats as float32 (exact for bf16/fp16), everything else as int64."""
    canonical = values.to(torch.float32) if values.is_floating_point() else values.to(torch.int64)
    return canonical.contiguous().numpy().tobytes()


def json_digest(data: Any) -> str:
    """Digest of a JSON-able value, independent of key order and formatting."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def combined_digest(entries: dict[str, str]) -> str:
    """One digest over named digests (order-independent)."""
    return json_digest(entries)
