"""Stored latents to audio files, each carrying the params that made it.

The decoding backend is the one named by the latent's own record (same latent space by
construction), so a latent can be listened to without knowing which model made it.
"""

from __future__ import annotations

from pathlib import Path

from stages.audio import write_audio
from stages.backends.protocol import Backend
from stages.backends.registry import load_backend
from stages.compat import as_float32
from stages.errors import IncompatibleLatent
from stages.records import LatentRecord
from stages.store import LatentStore


def backend_of(record: LatentRecord) -> Backend:
    """The backend that made ``record`` (loaded once per process)."""
    return load_backend(record.backend.name, variant=record.backend.variant)


def decode_latent(
    store: LatentStore,
    latent_id: str,
    out_dir: str | Path,
    *,
    sample_indices: list[int] | None = None,
    suffix: str = ".wav",
    stem: str | None = None,
    backend: Backend | None = None,
) -> list[Path]:
    """Decode samples of ``latent_id`` (all by default) to ``out_dir/<stem>_<i><suffix>``."""
    record = store.record(latent_id)
    model = backend if backend is not None else backend_of(record)
    if model.identity.latent_space != record.backend.latent_space:
        raise IncompatibleLatent(latent_id, "latent space", model.identity.latent_space, record.backend.latent_space)
    latents = as_float32(latent_id, store.get(latent_id))
    indices = list(range(latents.shape[0])) if sample_indices is None else sample_indices
    for index in indices:
        if not 0 <= index < latents.shape[0]:
            raise IncompatibleLatent(latent_id, "sample index", f"0..{latents.shape[0] - 1}", index)
    audio = model.vae_decode(latents[indices].to(model.device)).cpu()
    name = latent_id if stem is None else stem
    paths = []
    for position, index in enumerate(indices):
        metadata = {
            "latent_id": latent_id,
            "sample_index": index,
            "seed": record.seeds[index] if index < len(record.seeds) else None,
            "stage_type": record.stage_type,
            "backend": record.backend.model_dump(),
            "params": record.params,
        }
        paths.append(write_audio(Path(out_dir) / f"{name}_{index}{suffix}", audio[position], metadata=metadata))
    return paths
