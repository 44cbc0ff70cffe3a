"""A cheap digest of checkpoint weights: names, sizes, safetensors headers and sampled bytes.

The digest is part of every latent's provenance and of every cache key, so it is computed at each
backend load; hashing ~5 GB of weights each time would cost tens of seconds. A safetensors header
already pins every tensor's name, dtype, shape and offset, and the file size pins the layout, but
two fine-tunes of one architecture (base vs sft) have identical headers and sizes, so a fixed set of
sampled data chunks is hashed too. Small files (configs, tokenizers, tiny test weights) are hashed
whole.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

FULL_HASH_LIMIT = 4 * 1024 * 1024
"""Files up to this size are hashed whole."""
SAMPLE_COUNT = 16
SAMPLE_BYTES = 64 * 1024
"""Larger files: this many evenly spaced chunks of this size from the data region (1 MiB read)."""
_SAFETENSORS_MAX_HEADER = 100 * 1024 * 1024


def file_digest(path: Path, rel_name: str) -> str:
    """Hex sha256 over the relative name, the size, and the (sampled) content of one file."""
    size = path.stat().st_size
    h = hashlib.sha256()
    h.update(json.dumps([rel_name, size]).encode())
    with path.open("rb") as f:
        if size <= FULL_HASH_LIMIT:
            h.update(f.read())
            return h.hexdigest()
        data_start = 0
        if path.suffix == ".safetensors":
            (header_len,) = struct.unpack("<Q", f.read(8))
            if header_len > min(_SAFETENSORS_MAX_HEADER, size - 8):
                raise ValueError(f"{path}: not a safetensors file (header length {header_len})")
            h.update(f.read(header_len))
            data_start = 8 + header_len
        span = size - data_start
        for i in range(SAMPLE_COUNT):
            f.seek(data_start + (span - SAMPLE_BYTES) * i // (SAMPLE_COUNT - 1))
            h.update(f.read(SAMPLE_BYTES))
    return h.hexdigest()


def directory_digest(root: Path) -> str:
    """Hex sha256 over every regular file under ``root`` (hidden entries skipped, e.g. hub caches).

    Relative paths, not absolute ones, enter the hash: a checkpoint copied elsewhere keeps its
    digest, so caches stay valid across machines.
    """
    h = hashlib.sha256()
    files = sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    for path in files:
        rel = path.relative_to(root).as_posix()
        h.update(f"{rel}\0{file_digest(path, rel)}\n".encode())
    return h.hexdigest()
