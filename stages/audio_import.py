"""User audio (a path or an http(s) URL) into the store as an encoded latent.

This is how user audio becomes a source: the returned ID is what ``src_audio_id`` names. The latent
is the backend's VAE encoding of the audio, recorded as stage type ``import`` with the source and
the audio's digest, so audio tasks use it without another decode/encode round trip.
"""

from __future__ import annotations

import hashlib

import torch

from prefect_acestep.stages.audio import import_audio
from prefect_acestep.stages.backends.protocol import Backend
from prefect_acestep.stages.errors import AudioError
from prefect_acestep.stages.geometry import HOP_LENGTH, SAMPLE_RATE
from prefect_acestep.stages.redact import scrub_url
from prefect_acestep.stages.store import LatentStore
from prefect_acestep.stages.vocabulary import IMPORT_STAGE


def import_audio_latent(
    source: str,
    store: LatentStore,
    backend: Backend,
    *,
    max_seconds: float | None = None,
    pin: bool = False,
) -> str:
    """Fetch, validate and encode ``source``; store it and return its latent ID. Nothing is stored
    when the audio is unreadable, empty, too long or not audio (``AudioError``)."""
    audio = import_audio(source) if max_seconds is None else import_audio(source, max_seconds=max_seconds)
    frames = audio.shape[-1] // HOP_LENGTH
    if frames < 1:
        raise AudioError(f"{scrub_url(source)}: shorter than one latent frame ({HOP_LENGTH} samples at {SAMPLE_RATE} Hz)")
    audio = audio[:, : frames * HOP_LENGTH].contiguous()
    digest = hashlib.sha256(audio.numpy().tobytes()).hexdigest()
    latents = backend.vae_encode(audio.unsqueeze(0).to(backend.device)).to(torch.float32).cpu().contiguous()
    return store.put(
        latents,
        stage_type=IMPORT_STAGE,
        backend=backend.identity,
        params={
            "source": scrub_url(str(source)),  # no user:password or signed query in a record
            "audio_sha256": digest,
            "seconds": frames * HOP_LENGTH / SAMPLE_RATE,
            "vae_encode": "mean",  # the posterior mean: the same audio always imports to the same latent
        },
        seeds=[],
        pinned=pin,
    )
