"""The embedded model's VQ bottleneck: 25 Hz latents -> integer codes at 5 Hz -> coarse 25 Hz latents.

A code keeps what a cover must keep (the coarse structure) and nothing else: per 5-frame pool the
quantised chroma of the comping registers, the energy of each register, the bass and lead pitch
classes, and how busy each percussion group is. Quantisation is a fixed scalar grid per entry
(FSQ-like), so codes are integers in known ranges and ``tokenize(detokenize(c)) == c``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prefect_acestep.stages.backends.embedded.channels import PITCH_CLASSES
from prefect_acestep.stages.backends.embedded.tracks import PART_CHANNELS
from prefect_acestep.stages.errors import InvalidStageRequest
from prefect_acestep.stages.geometry import LATENT_DIM, VQ_POOL

CHROMA_LEVELS = 5
ENERGY_LEVELS = 8
HIT_LEVELS = 4
ENERGY_MAX = 1.4
HIT_MAX = 1.0
CHORD_LEVEL = 2
"""A pitch class belongs to a code's chord when its chroma level reaches this (of 4)."""

CHROMA = slice(0, 12)
ENERGY = slice(12, 16)
BASS_PC = 16
LEAD_PC = 17
HITS = slice(18, 21)
CODE_WIDTH = 21
HIT_GROUPS = ("drums", "percussion", "fx")

LEVELS: tuple[int, ...] = (CHROMA_LEVELS,) * 12 + (ENERGY_LEVELS,) * 4 + (PITCH_CLASSES,) * 2 + (HIT_LEVELS,) * 3
"""Number of values of each code entry (codes are in ``[0, LEVELS[i])``)."""


def _quantise(value: torch.Tensor, top: float, levels: int) -> torch.Tensor:
    return torch.round((value / top).clamp(0, 1) * (levels - 1)).to(torch.long)


def tokenize(latents: torch.Tensor) -> torch.Tensor:
    """``[B, T, 64]`` -> codes ``[B, ceil(T / 5), 21]`` (int64)."""
    if latents.ndim != 3 or latents.shape[2] != LATENT_DIM or latents.shape[1] < 1:
        raise InvalidStageRequest(f"tokenize expects latents [B, T>=1, {LATENT_DIM}], got {tuple(latents.shape)}")
    batch, frames, _ = latents.shape
    pools = -(-frames // VQ_POOL)
    z = torch.nn.functional.pad(latents.to(torch.float32), (0, 0, 0, pools * VQ_POOL - frames))
    z = z.view(batch, pools, VQ_POOL, LATENT_DIM)
    counts = torch.full((pools,), float(VQ_POOL), device=z.device)
    counts[-1] = frames - (pools - 1) * VQ_POOL
    mean = z.sum(dim=2) / counts[None, :, None]  # partial last pool: mean over its real frames only
    pitched = mean[..., : 4 * PITCH_CLASSES].clamp(min=0).view(batch, pools, 4, PITCH_CLASSES)
    energy = _quantise(pitched.amax(dim=-1), ENERGY_MAX, ENERGY_LEVELS)  # [B, n, 4]
    comping = pitched[:, :, 1] + pitched[:, :, 2]
    peak = comping.amax(dim=-1, keepdim=True)
    has_chroma = (energy[..., 1] + energy[..., 2] > 0)[..., None]
    chroma = torch.where(has_chroma, _quantise(comping / peak.clamp(min=1e-12), 1.0, CHROMA_LEVELS), 0)
    bass = torch.where(energy[..., 0] > 0, pitched[:, :, 0].argmax(dim=-1), 0)
    lead = torch.where(energy[..., 3] > 0, pitched[:, :, 3].argmax(dim=-1), 0)
    hits = torch.stack(
        [z[..., list(PART_CHANNELS[g])].clamp(min=0).amax(dim=(2, 3)) for g in HIT_GROUPS], dim=-1
    )
    return torch.cat(
        [chroma, energy, bass[..., None], lead[..., None], _quantise(hits, HIT_MAX, HIT_LEVELS)], dim=-1
    )


def check_codes(codes: torch.Tensor) -> None:
    levels = torch.tensor(LEVELS, device=codes.device)
    if codes.ndim != 3 or codes.shape[2] != CODE_WIDTH or codes.dtype not in (torch.int64, torch.int32):
        raise InvalidStageRequest(f"codes must be integer [B, n, {CODE_WIDTH}], got {tuple(codes.shape)} {codes.dtype}")
    if bool(((codes < 0) | (codes >= levels)).any()):
        raise InvalidStageRequest("codes hold values outside their quantisation grid")


def detokenize(codes: torch.Tensor, frames: int) -> torch.Tensor:
    """Codes ``[B, n, 21]`` -> coarse latents ``[B, frames, 64]``; ``n`` must be ``ceil(frames / 5)``."""
    check_codes(codes)
    batch, pools, _ = codes.shape
    if frames < 1 or -(-frames // VQ_POOL) != pools:
        raise InvalidStageRequest(
            f"{pools} codes cover {(pools - 1) * VQ_POOL + 1}..{pools * VQ_POOL} frames, not {frames}"
        )
    energy = codes[..., ENERGY].to(torch.float32) * (ENERGY_MAX / (ENERGY_LEVELS - 1))
    chroma = codes[..., CHROMA].to(torch.float32) / (CHROMA_LEVELS - 1)
    pitched = torch.zeros(batch, pools, 4, PITCH_CLASSES, device=codes.device)
    pitched[:, :, 0] = torch.nn.functional.one_hot(codes[..., BASS_PC], PITCH_CLASSES) * energy[..., 0:1]
    pitched[:, :, 1] = chroma * energy[..., 1:2]
    pitched[:, :, 2] = chroma * energy[..., 2:3]
    pitched[:, :, 3] = torch.nn.functional.one_hot(codes[..., LEAD_PC], PITCH_CLASSES) * energy[..., 3:4]
    latents = torch.zeros(batch, pools, VQ_POOL, LATENT_DIM, device=codes.device)
    latents[..., : 4 * PITCH_CLASSES] = pitched.view(batch, pools, 1, -1)
    hits = codes[..., HITS].to(torch.float32) * (HIT_MAX / (HIT_LEVELS - 1))
    for i, group in enumerate(HIT_GROUPS):
        latents[:, :, 0, PART_CHANNELS[group][0]] = hits[..., i]
    return latents.view(batch, pools * VQ_POOL, LATENT_DIM)[:, :frames].contiguous()


@dataclass(frozen=True)
class CoverCodes:
    """The musical reading of codes that a cover keeps, per item and code: ``chord`` ``[B, n, 12]``
    (bool), ``bass`` and ``lead`` ``[B, n]`` pitch classes, ``sounding`` ``[B, n]`` (bool)."""

    chord: torch.Tensor
    bass: torch.Tensor
    lead: torch.Tensor
    sounding: torch.Tensor


def _root(chroma: torch.Tensor) -> torch.Tensor:
    """Likeliest chord root of each chroma ``[..., 12]``: a chord tone with a fifth (and a third)
    above it in the chord, the strongest such tone first."""
    present = chroma >= CHORD_LEVEL
    above = lambda interval: torch.roll(present, -interval, dims=-1)  # noqa: E731  (pc + interval present)
    score = present * (4.0 * above(7) + 2.0 * (above(3) | above(4)) + chroma / CHROMA_LEVELS)
    return score.argmax(dim=-1)


def cover_reading(codes: torch.Tensor) -> CoverCodes:
    """Chord, bass and lead of each code. A part the source lacks is read from the ones it has
    (no comping: the chord is the bass note, else the lead; no bass: the chord's root), so that a
    cover can voice the source's harmony in parts the source did not play."""
    check_codes(codes)
    energy = codes[..., ENERGY]
    chroma = codes[..., CHROMA]
    has_chroma = chroma.amax(dim=-1) > 0
    root = _root(chroma)
    bass = torch.where(energy[..., 0] > 0, codes[..., BASS_PC], torch.where(has_chroma, root, codes[..., LEAD_PC]))
    lead = torch.where(energy[..., 3] > 0, codes[..., LEAD_PC], torch.where(has_chroma, root, bass))
    fallback = torch.nn.functional.one_hot(torch.where(energy[..., 0] > 0, bass, lead), PITCH_CLASSES).bool()
    chord = torch.where(has_chroma[..., None], chroma >= CHORD_LEVEL, fallback)
    sounding = energy.amax(dim=-1) > 0
    return CoverCodes(chord=chord, bass=bass, lead=lead, sounding=sounding)
