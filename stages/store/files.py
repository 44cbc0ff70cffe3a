"""The on-disk form of one latent: a safetensors file that carries its own record.

A latent file is self-describing (format marker, format version, the record as JSON, digests in the
safetensors metadata), which is what lets the index be rebuilt from the files alone. Digests are
sha256 over raw C-order bytes, so a flipped bit anywhere in a tensor is caught on read.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import safetensors.torch
import torch

from prefect_acestep.stages.errors import LatentCorrupt
from prefect_acestep.stages.records import LatentRecord
from prefect_acestep.stages.store.fs import FileSystem

if sys.byteorder != "little":  # tensors are read in place from little-endian safetensors data
    raise ImportError("the latent store supports little-endian hosts only")

FORMAT = "prefect-acestep-latent"
FORMAT_VERSION = "1"
LATENT_KEY = "latent"
EXTRA_PREFIX = "extra."
LATENTS_DIR = "latents"
CORRUPT_DIR = "corrupt"
SUFFIX = ".safetensors"
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit; guards against reading garbage lengths


def latent_rel(latent_id: str) -> str:
    """Where a latent's file lives, relative to the store root. ``latent_id`` must be validated."""
    return f"{LATENTS_DIR}/{latent_id}{SUFFIX}"


def dtype_name(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


def _raw_bytes(tensor: torch.Tensor) -> memoryview:
    """The tensor's bytes in C order, without a copy when it is already contiguous on the CPU."""
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy())


def tensor_digest(tensor: torch.Tensor) -> str:
    return hashlib.sha256(_raw_bytes(tensor)).hexdigest()


def extras_digest(extras: dict[str, torch.Tensor]) -> str:
    """One digest over names, dtypes, shapes and bytes of the extras, so a swapped or reshaped
    extra is caught as well as a flipped bit."""
    h = hashlib.sha256()
    for name in sorted(extras):
        tensor = extras[name]
        h.update(f"{name}|{dtype_name(tensor)}|{list(tensor.shape)}\n".encode())
        h.update(_raw_bytes(tensor))
    return h.hexdigest()


def write_latent(
    path: Path,
    record: LatentRecord,
    tensor: torch.Tensor,
    extras: dict[str, torch.Tensor],
    digests: Callable[[], tuple[str, str]],
) -> None:
    """Write a latent file at ``path``: tensors straight from their memory, the record and the
    digests in the metadata.

    Hashing 1.5 MB takes about a millisecond, as long as the write itself. So the file is written
    with same-length placeholder digests, ``digests()`` (typically waiting on a background hash) is
    asked only afterwards, and the 64 hex characters are patched in place; the caller's fsync then
    covers the finished file. ``size_bytes`` is left out of the embedded record: it is the file's
    own size, read back from the file system instead.
    """
    digest_mark, extras_mark = secrets.token_hex(32).encode(), secrets.token_hex(32).encode()
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "record": record.model_copy(update={"digest": digest_mark.decode()}).model_dump_json(exclude={"size_bytes"}),
        "extras_digest": extras_mark.decode(),
    }
    tensors = {LATENT_KEY: tensor}
    tensors.update({EXTRA_PREFIX + name: value for name, value in extras.items()})
    safetensors.torch.save_file(tensors, path, metadata)
    with open(path, "r+b", buffering=0) as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = f.read(length)
        digest, extras_hex = digests()
        for mark, value in ((digest_mark, digest), (extras_mark, extras_hex)):
            f.seek(8 + header.index(mark))
            if f.write(value.encode()) != len(mark):
                raise OSError(f"short write patching the digest into {path}")


def split_header(data: bytes) -> tuple[dict, int]:
    """The JSON header of safetensors bytes and where the data section starts.

    Raises ``ValueError`` with the reason; callers turn it into their own typed error (a latent
    file is ``LatentCorrupt``, a bundle is ``BundleError``). ``data`` may be a prefix of the file
    as long as it holds the whole header.
    """
    if len(data) < 8:
        raise ValueError("shorter than a safetensors header")
    (length,) = struct.unpack("<Q", data[:8])
    if length > _MAX_HEADER:
        raise ValueError(f"header length {length} is not plausible")
    if len(data) < 8 + length:
        raise ValueError("ends inside its header")
    header = json.loads(data[8 : 8 + length])
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    return header, 8 + length


def check_format(metadata: dict, expected: str, version: str) -> None:
    """Raise ``ValueError`` unless ``metadata`` marks a file of format ``expected``, version ``version``."""
    if metadata.get("format") != expected:
        raise ValueError(f"not a {expected} file (format={metadata.get('format')!r})")
    if metadata.get("format_version") != version:
        raise ValueError(f"unknown format version {metadata.get('format_version')!r} (this store reads {version})")


def _latent_header(data: bytes, latent_id: str) -> tuple[dict, dict[str, str], int]:
    """Header, our metadata, and where the data section starts, for a file that must be ours."""
    try:
        header, data_start = split_header(data)
        metadata = header.get("__metadata__", {})
        if not isinstance(metadata, dict):
            raise ValueError("metadata is not a JSON object")
        check_format(metadata, FORMAT, FORMAT_VERSION)
    except ValueError as exc:
        raise LatentCorrupt(latent_id, str(exc)) from exc
    return header, metadata, data_start


# safetensors dtype names (format spec) -> torch dtype names; those this torch lacks are left out.
_DTYPES = {
    name: getattr(torch, torch_name)
    for name, torch_name in {
        "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
        "I32": "int32", "I16": "int16", "I8": "int8", "U64": "uint64", "U32": "uint32", "U16": "uint16",
        "U8": "uint8", "BOOL": "bool", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "C64": "complex64",
    }.items()
    if hasattr(torch, torch_name)
}  # fmt: skip


def _tensor_at(
    data: bytearray, data_start: int, name: str, info: object, latent_id: str
) -> tuple[torch.Tensor, memoryview]:
    """One tensor of a safetensors file, built on ``data`` in place (no copy), and its raw bytes.

    Reading the tensors straight out of the buffer the file was read into saves the copy that
    ``safetensors.torch.load`` makes, a third of the cost of a read besides the digest.
    """
    try:
        dtype = _DTYPES[info["dtype"]]  # type: ignore[index]
        shape = [int(n) for n in info["shape"]]  # type: ignore[index]
        begin, end = (data_start + int(x) for x in info["data_offsets"])  # type: ignore[index]
    except (KeyError, TypeError, ValueError) as exc:
        raise LatentCorrupt(latent_id, f"header entry of tensor {name!r} unreadable: {exc!r}") from exc
    count = 1
    for n in shape:
        count *= n
    if (
        not data_start <= begin <= end <= len(data)
        or end - begin != count * dtype.itemsize
        or min(shape, default=0) < 0
    ):
        raise LatentCorrupt(latent_id, f"tensor {name!r} does not fit its header entry")
    if count == 0:
        return torch.empty(shape, dtype=dtype), memoryview(data)[begin:end]
    return torch.frombuffer(data, dtype=dtype, count=count, offset=begin).reshape(shape), memoryview(data)[begin:end]


def record_from_metadata(metadata: dict[str, str], latent_id: str, size_bytes: int) -> LatentRecord:
    try:
        record = LatentRecord.model_validate_json(metadata["record"])
    except (KeyError, ValueError) as exc:
        raise LatentCorrupt(latent_id, f"embedded record unreadable: {exc}") from exc
    if record.id != latent_id:
        raise LatentCorrupt(latent_id, f"file holds the record of {record.id!r}")
    if record.created_at is None or record.expires_at is None:
        raise LatentCorrupt(latent_id, "embedded record lacks its creation or expiry time")
    return record.model_copy(update={"size_bytes": size_bytes})


@dataclass(frozen=True)
class DecodedLatent:
    record: LatentRecord
    tensor: torch.Tensor
    extras: dict[str, torch.Tensor]
    extras_digest: str


def decode(data: bytearray, latent_id: str) -> DecodedLatent:
    """Parse a whole latent file (read into a mutable buffer, which the returned tensors share) and
    verify the main tensor against its record: shape, dtype, digest. Extras are verified on demand
    by ``verify_extras``: most reads never need them."""
    header, metadata, data_start = _latent_header(data, latent_id)
    record = record_from_metadata(metadata, latent_id, len(data))
    if LATENT_KEY not in header:
        raise LatentCorrupt(latent_id, f"no {LATENT_KEY!r} tensor in file")
    tensor, raw = _tensor_at(data, data_start, LATENT_KEY, header[LATENT_KEY], latent_id)
    if list(tensor.shape) != record.shape or dtype_name(tensor) != record.dtype:
        raise LatentCorrupt(
            latent_id, f"tensor is {dtype_name(tensor)}{list(tensor.shape)}, record says {record.dtype}{record.shape}"
        )
    actual = hashlib.sha256(raw).hexdigest()
    if actual != record.digest:
        raise LatentCorrupt(latent_id, f"digest mismatch: record {record.digest}, data {actual}")
    extras = {
        name.removeprefix(EXTRA_PREFIX): _tensor_at(data, data_start, name, info, latent_id)[0]
        for name, info in header.items()
        if name.startswith(EXTRA_PREFIX)
    }
    return DecodedLatent(record, tensor, extras, metadata.get("extras_digest", ""))


def verify_extras(decoded: DecodedLatent, latent_id: str) -> dict[str, torch.Tensor]:
    actual = extras_digest(decoded.extras)
    if actual != decoded.extras_digest:
        raise LatentCorrupt(latent_id, f"extras digest mismatch: recorded {decoded.extras_digest}, data {actual}")
    return decoded.extras


_HEAD_READ = 65536
"""Bytes read to find a record: the header of a latent file is a few KB unless its record is huge."""


def _record_from_head(fs: FileSystem, rel: str, latent_id: str, head: bytes, size: int) -> LatentRecord:
    if len(head) >= 8 and 8 + struct.unpack("<Q", head[:8])[0] > len(head):
        head = fs.read_range(rel, 0, 8 + min(struct.unpack("<Q", head[:8])[0], _MAX_HEADER))
    return record_from_metadata(_latent_header(head, latent_id)[1], latent_id, size)


def read_record(fs: FileSystem, rel: str, latent_id: str) -> LatentRecord:
    """The record embedded in a latent file, reading only its header."""
    return _record_from_head(fs, rel, latent_id, fs.read_range(rel, 0, _HEAD_READ), fs.size(rel))


def read_records(
    fs: FileSystem, sizes: dict[str, int | None]
) -> dict[str, LatentRecord | LatentCorrupt | FileNotFoundError]:
    """The records of many latent files (ID -> size from a listing, None if it gave none), reading
    only their headers, in batches the filesystem may fetch concurrently (index rebuilds and
    refreshes from an object store). A file removed since the listing maps to
    ``FileNotFoundError``, an unreadable one to ``LatentCorrupt``."""
    ids = sorted(sizes)
    heads = fs.read_heads([f"{LATENTS_DIR}/{i}{SUFFIX}" for i in ids], _HEAD_READ)
    found: dict[str, LatentRecord | LatentCorrupt | FileNotFoundError] = {}
    for latent_id, head in zip(ids, heads, strict=True):
        if isinstance(head, FileNotFoundError):
            found[latent_id] = head
            continue
        if isinstance(head, Exception):
            raise head
        rel, size = latent_rel(latent_id), sizes[latent_id]
        try:
            found[latent_id] = _record_from_head(fs, rel, latent_id, head, fs.size(rel) if size is None else size)
        except (LatentCorrupt, FileNotFoundError) as exc:
            found[latent_id] = exc
    return found
