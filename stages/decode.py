"""Stored latents to audio files, each carrying the params that made it.

The decoding backend is the one named by the latent's own record (same latent space by
construction), so a latent can be listened to without knowing which model made it. The audio is
the latent's as ``latent_audio`` renders it (a repaint's source spliced back outside its window),
then peak-normalised to -1 dBFS per sample, as upstream ACE-Step does by default
(``normalize_dbfs=None`` writes the decoder's level, guarded only against clipping).

A latent ID names immutable content, so a file that already holds a sample (its embedded metadata
names the same latent, sample and digest) is that sample's audio: flows replaying a cached stage
find it with ``existing_audio`` instead of running the VAE again. ``write_audio`` publishes files
atomically, so an existing file with our metadata is a complete one.
"""

from __future__ import annotations

from pathlib import Path

from prefect_acestep.stages.audio import peak_normalize, read_audio_metadata, write_audio
from prefect_acestep.stages.backends.protocol import Backend
from prefect_acestep.stages.backends.registry import load_backend
from prefect_acestep.stages.errors import AudioError, IncompatibleLatent, InvalidStageRequest
from prefect_acestep.stages.latent_audio import latent_audio_items
from prefect_acestep.stages.records import LatentRecord
from prefect_acestep.stages.sources import as_float32
from prefect_acestep.stages.store import LatentStore

DEFAULT_NORMALIZE_DBFS = -1.0
"""Upstream's ``normalization_db`` default (its ``enable_normalization`` is on by default)."""


def decode_latent(
    store: LatentStore,
    latent_id: str,
    out_dir: str | Path,
    *,
    sample_indices: list[int] | None = None,
    suffix: str = ".wav",
    stem: str | None = None,
    backend: Backend | None = None,
    normalize_dbfs: float | None = DEFAULT_NORMALIZE_DBFS,
    exact_name: bool = False,
) -> list[Path]:
    """Decode samples of ``latent_id`` (all by default) to ``out_dir/<stem>_<i><suffix>``; with
    ``exact_name``, a single sample goes to ``out_dir/<stem><suffix>`` (a file name the caller
    chose). Every file is published whole or not at all, and never over a directory or a device."""
    if normalize_dbfs is not None and not normalize_dbfs <= 0:
        raise InvalidStageRequest(f"normalize_dbfs: a peak level must be <= 0 dBFS (or None: off), got {normalize_dbfs}")
    record = store.record(latent_id)
    targets = _targets(record, out_dir, sample_indices, suffix, stem, exact_name)
    model = backend if backend is not None else load_backend(record.backend.name, variant=record.backend.variant)
    if model.identity.latent_space != record.backend.latent_space:
        raise IncompatibleLatent(latent_id, "latent space", model.identity.latent_space, record.backend.latent_space)
    latents = as_float32(latent_id, store.get(latent_id))
    indices = [index for index, _ in targets]
    items = latent_audio_items(store, model, record, latents[indices], indices)
    paths = []
    for (index, target), audio in zip(targets, items, strict=True):  # one item's audio in memory at a time
        audio = audio.cpu()
        metadata = {
            "latent_id": latent_id,
            "latent_digest": record.digest,
            "sample_index": index,
            "seed": record.seeds[index] if index < len(record.seeds) else None,
            "stage_type": record.stage_type,
            "backend": record.backend.model_dump(),
            "params": record.params,
            "normalize_dbfs": normalize_dbfs,
        }
        sample = audio if normalize_dbfs is None else peak_normalize(audio, normalize_dbfs)
        paths.append(write_audio(target, sample, metadata=metadata))
    return paths


def existing_audio(
    store: LatentStore,
    latent_id: str,
    out_dir: str | Path,
    *,
    sample_indices: list[int] | None = None,
    suffix: str = ".wav",
    stem: str | None = None,
    normalize_dbfs: float | None = DEFAULT_NORMALIZE_DBFS,
) -> list[Path] | None:
    """The files ``decode_latent`` with the same arguments would write, when every one of them is
    already there holding its sample; else None. A latent that no longer resolves raises."""
    record = store.record(latent_id)
    targets = _targets(record, out_dir, sample_indices, suffix, stem)
    if all(_holds(path, record, index, normalize_dbfs) for index, path in targets):
        return [path for _, path in targets]
    return None


def _targets(
    record: LatentRecord,
    out_dir: str | Path,
    sample_indices: list[int] | None,
    suffix: str,
    stem: str | None,
    exact_name: bool = False,
) -> list[tuple[int, Path]]:
    batch = record.shape[0]
    indices = list(range(batch)) if sample_indices is None else sample_indices
    for index in indices:
        if not 0 <= index < batch:
            raise IncompatibleLatent(record.id, "sample index", f"0..{batch - 1}", index)
    name = record.id if stem is None else stem
    if exact_name and len(indices) == 1:
        return [(indices[0], Path(out_dir) / f"{name}{suffix}")]
    return [(index, Path(out_dir) / f"{name}_{index}{suffix}") for index in indices]


def _holds(path: Path, record: LatentRecord, index: int, normalize_dbfs: float | None) -> bool:
    """Whether ``path`` is the decoded audio of sample ``index`` of ``record`` at that level."""
    if not path.is_file():
        return False
    try:
        metadata = read_audio_metadata(path)
    except AudioError:
        return False  # damaged: decode again and replace it
    found = (metadata.get("latent_id"), metadata.get("latent_digest"), metadata.get("sample_index"))
    return found == (record.id, record.digest, index) and metadata.get("normalize_dbfs") == normalize_dbfs
