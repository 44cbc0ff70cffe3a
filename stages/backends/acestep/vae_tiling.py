"""VAE decode and encode in overlapping tiles, so that memory is bounded by the tile, not the song.

Untiled, the Oobleck VAE's activations at 48 kHz take about 133 MB per second of audio in fp32: a
4-minute song needs ~31 GB and a 10-minute one fits no GPU. Upstream ACE-Step decodes in windows
of 512 latent frames that overlap their neighbours by 64 frames on each side, keeping only each
window's core, and encodes 30-second windows with 2 seconds of overlap the same way ("overlap and
discard"). The overlap is wider than the decoder's and encoder's receptive fields, so the kept cores
equal an untiled pass up to float rounding, tile edges included. Batch items go one at a time, as
upstream does, so the peak does not grow with the batch either.

This is upstream's scheme; diffusers' ``AutoencoderOobleck.enable_tiling`` implements the same
windows but is a switch on the module (one VAE is shared by every variant loaded in the process,
each of which may tile differently) and concatenates the tiles at the end, holding the output
twice; here each core is written straight into the preallocated result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from prefect_acestep.stages.errors import BackendLoadError
from prefect_acestep.stages.geometry import HOP_LENGTH


@dataclass(frozen=True)
class VaeTiling:
    """Tile geometry in latent frames (25 Hz; one frame is 1920 samples at 48 kHz).

    The defaults are upstream's: decode windows of 512 frames with 64 frames of overlap per side
    (core stride 384 frames, 15.4 s), encode windows of 750 frames (30 s) with 50 (2 s).
    """

    decode_frames: int = 512
    decode_overlap: int = 64
    encode_frames: int = 750
    encode_overlap: int = 50

    def __post_init__(self) -> None:
        for kind in ("decode", "encode"):
            frames, overlap = getattr(self, f"{kind}_frames"), getattr(self, f"{kind}_overlap")
            if overlap < 0 or frames <= 2 * overlap:
                raise BackendLoadError(
                    f"vae_tiling: {kind}_frames ({frames}) must exceed twice {kind}_overlap ({overlap}) >= 0"
                )


@dataclass(frozen=True)
class Window:
    """One tile: the frames it runs on (``start``, ``end``) and the core it keeps (``core_start``, ``core_end``)."""

    start: int
    end: int
    core_start: int
    core_end: int


def windows(frames: int, tile: int, overlap: int) -> list[Window]:
    """Upstream's windows over ``frames``: one window when the input fits a tile, else cores of
    ``tile - 2 * overlap`` frames, each widened by ``overlap`` on both sides where there is room."""
    if frames <= tile:
        return [Window(0, frames, 0, frames)]
    stride = tile - 2 * overlap
    result = []
    for i in range(math.ceil(frames / stride)):
        core_start, core_end = i * stride, min((i + 1) * stride, frames)
        result.append(Window(max(0, core_start - overlap), min(frames, core_end + overlap), core_start, core_end))
    return result


def decode(vae: torch.nn.Module, latents: torch.Tensor, tiling: VaeTiling) -> torch.Tensor:
    """``[B, 64, T]`` latents -> ``[B, channels, T * 1920]`` audio, one item and one tile at a time."""
    batch, _channels, frames = latents.shape
    out: torch.Tensor | None = None
    for item in range(batch):
        for w in windows(frames, tiling.decode_frames, tiling.decode_overlap):
            tile = vae.decoder(latents[item : item + 1, :, w.start : w.end])
            if out is None:
                out = tile.new_empty(batch, tile.shape[1], frames * HOP_LENGTH)
            keep = tile[0, :, (w.core_start - w.start) * HOP_LENGTH : (w.core_end - w.start) * HOP_LENGTH]
            out[item, :, w.core_start * HOP_LENGTH : w.core_end * HOP_LENGTH] = keep
            del tile, keep
    assert out is not None
    return out


def encode(
    vae: torch.nn.Module, audio: torch.Tensor, tiling: VaeTiling, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``[B, channels, T * 1920]`` audio -> ``[B, 64, T]`` latents: the posterior mean, or a sample
    drawn from ``generator`` (item by item, tile by tile, so a seed replays it exactly)."""
    from diffusers.models.autoencoders.autoencoder_oobleck import OobleckDiagonalGaussianDistribution

    batch, _channels, samples = audio.shape
    frames = samples // HOP_LENGTH
    out: torch.Tensor | None = None
    for item in range(batch):
        for w in windows(frames, tiling.encode_frames, tiling.encode_overlap):
            features = vae.encoder(audio[item : item + 1, :, w.start * HOP_LENGTH : w.end * HOP_LENGTH])
            core = features[:, :, w.core_start - w.start : w.core_end - w.start]
            posterior = OobleckDiagonalGaussianDistribution(core)
            latent = posterior.mode() if generator is None else posterior.sample(generator)
            if out is None:
                out = latent.new_empty(batch, latent.shape[1], frames)
            out[item, :, w.core_start : w.core_end] = latent[0]
            del features
    assert out is not None
    return out
