"""The embedded model's "VAE": a linear, exactly invertible codec whose channels are musical.

Each latent frame scales one kernel per channel: pitched channels are harmonic tones at their
equal-tempered pitch with a global phase (so a held note is one continuous tone across frames),
under a flat-top window whose crossfades make overlap-add interpolate amplitudes smoothly between
frames; percussion channels are one-shots starting at their frame's hop. Decode is therefore one
matrix product per pan group plus an overlap-add. Encode is the least-squares inverse: the normal
matrix is block-tridiagonal (a frame only overlaps its neighbours) and is solved exactly by block
cyclic reduction, which makes ``encode(decode(z)) == z`` up to rounding and a tiny ridge.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from prefect_acestep.stages.backends.embedded.blocksolve import solve_block_tridiagonal
from prefect_acestep.stages.backends.embedded.channels import PITCH_CLASSES, PITCHED, frequency
from prefect_acestep.stages.backends.embedded.sounds import (
    KERNEL_LENGTH,
    ONSET,
    PITCHED_GAIN,
    TONE_LENGTH,
    partial_phase,
    percussion_kernels,
    register_partials,
    tone_window,
)
from prefect_acestep.stages.errors import InvalidStageRequest
from prefect_acestep.stages.geometry import AUDIO_CHANNELS, HOP_LENGTH, LATENT_DIM, SAMPLE_RATE

SLOTS = 8
"""Basis rows per channel: up to 4 harmonics x (cos, sin); percussion uses slot 0 only."""

PAN_ANGLES = (0.0, -0.3, 0.3)
"""Pan groups (centre, left, right) as offsets from the centre angle pi/4."""

RIDGE = 1e-6
"""Relative Tikhonov term of the encode: negligible for the codec's own outputs, but it keeps the
least-squares solve bounded on real audio, which lies outside the codec's range."""

_GRAM_CHUNK = 128


def _pan_group(channel: int) -> int:
    """Bass register, kick, snare and clap sit in the centre; other channels alternate sides."""
    if channel < PITCH_CLASSES or channel in (PITCHED, PITCHED + 1, PITCHED + 4):
        return 0
    return 1 + channel % 2


def _pan_gains(group: int) -> tuple[float, float]:
    angle = math.pi / 4 + PAN_ANGLES[group]
    return math.cos(angle), math.sin(angle)


class MusicCodec:
    """Decode latents ``[B, T, 64]`` to 48 kHz stereo ``[B, 2, T * 1920]`` and encode back."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        window = tone_window()
        m = np.arange(KERNEL_LENGTH)
        basis = np.zeros((LATENT_DIM, SLOTS, KERNEL_LENGTH))
        omega = np.zeros((LATENT_DIM, SLOTS // 2))
        phase = np.zeros((LATENT_DIM, SLOTS // 2))
        for channel in range(PITCHED):
            register, pitch_class = divmod(channel, PITCH_CLASSES)
            for j, amplitude in enumerate(register_partials(register)):
                w = 2.0 * np.pi * (j + 1) * frequency(register, pitch_class) / SAMPLE_RATE
                omega[channel, j] = w
                phase[channel, j] = partial_phase(channel, j)
                basis[channel, 2 * j] = PITCHED_GAIN * amplitude * window * np.cos(w * m)
                basis[channel, 2 * j + 1] = PITCHED_GAIN * amplitude * window * np.sin(w * m)
        basis[PITCHED:, 0] = percussion_kernels()
        self._omega = omega
        self._phase = phase
        groups = np.array([_pan_group(c) for c in range(LATENT_DIM)])
        gains = np.array([_pan_gains(g) for g in range(len(PAN_ANGLES))])  # [group, (L, R)]
        self._gains = torch.tensor(gains, dtype=torch.float32, device=self.device)  # [group, (L, R)]

        # Decode: active rows ordered by pan group, so each group is one contiguous matmul.
        active = [(c, s) for c in range(LATENT_DIM) for s in range(SLOTS) if np.any(basis[c, s])]
        order = sorted(active, key=lambda cs: (groups[cs[0]], cs[0] >= PITCHED, cs[0], cs[1]))
        self._row_channel = torch.tensor([c for c, _ in order], device=self.device)
        self._row_slot = torch.tensor([s for _, s in order], device=self.device)
        # (group, first tone row, first one-shot row, end): tones are TONE_LENGTH long, one-shots 2 hops.
        self._group_bounds: list[tuple[int, int, int, int]] = []
        for g in range(len(PAN_ANGLES)):
            rows = [i for i, (c, _) in enumerate(order) if groups[c] == g]
            shots = [i for i in rows if order[i][0] >= PITCHED]
            self._group_bounds.append((g, rows[0], shots[0] if shots else rows[-1] + 1, rows[-1] + 1))
        rows_basis = np.stack([basis[c, s] for c, s in order])
        self._basis32 = torch.tensor(rows_basis, dtype=torch.float32, device=self.device)
        self._basis64 = torch.tensor(rows_basis, dtype=torch.float64, device=self.device)

        # Encode: Gram matrices of the slot layout, weighted by how two pan groups overlap in stereo.
        flat = basis.reshape(LATENT_DIM * SLOTS, KERNEL_LENGTH)
        slot_group = np.repeat(groups, SLOTS)
        pan = gains[slot_group] @ gains[slot_group].T
        h, half = HOP_LENGTH, ONSET

        def gram(a: slice, b: slice) -> torch.Tensor:
            g = (flat[:, a] @ flat[:, b].T) * pan
            return torch.tensor(g, dtype=torch.float64, device=self.device).view(LATENT_DIM, SLOTS, LATENT_DIM, SLOTS)

        self._gram_inner = gram(slice(0, 2 * h), slice(0, 2 * h))
        self._gram_first = gram(slice(half, 2 * h), slice(half, 2 * h))
        self._gram_last = gram(slice(0, h + half), slice(0, h + half))
        self._gram_single = gram(slice(half, h + half), slice(half, h + half))
        self._gram_next = torch.tensor(
            (flat[:, h:] @ flat[:, :h].T) * pan, dtype=torch.float64, device=self.device
        ).view(LATENT_DIM, SLOTS, LATENT_DIM, SLOTS)
        self._rotation_cache: dict[int, torch.Tensor] = {}

    def _rotations(self, frames: int) -> torch.Tensor:
        """Per-frame slot coefficients ``[T, 64, 8]`` (float64): the carrier's global phase at each
        kernel start, so that a constant amplitude decodes to one continuous tone."""
        cached = self._rotation_cache.get(frames)
        if cached is not None:
            return cached
        start = np.arange(frames, dtype=np.float64)[:, None, None] * HOP_LENGTH - ONSET  # output sample of m = 0
        theta = np.mod(self._omega[None] * start + self._phase[None], 2.0 * np.pi)
        rot = np.zeros((frames, LATENT_DIM, SLOTS))
        rot[:, :PITCHED, 0::2] = np.cos(theta[:, :PITCHED])
        rot[:, :PITCHED, 1::2] = -np.sin(theta[:, :PITCHED])
        rot[:, PITCHED:, 0] = 1.0
        out = torch.tensor(rot, dtype=torch.float64, device=self.device)
        if len(self._rotation_cache) > 8:
            self._rotation_cache.clear()
        self._rotation_cache[frames] = out
        return out

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        if latents.ndim != 3 or latents.shape[2] != LATENT_DIM or latents.shape[1] < 1:
            raise InvalidStageRequest(f"decode expects latents [B, T>=1, {LATENT_DIM}], got {tuple(latents.shape)}")
        batch, frames, _ = latents.shape
        h = HOP_LENGTH
        rot = self._rotations(frames).to(torch.float32)[:, self._row_channel, self._row_slot]  # [T, rows]
        coeff = (latents.to(self.device, torch.float32)[:, :, self._row_channel] * rot).reshape(batch * frames, -1)
        mono = coeff.new_zeros(len(self._group_bounds), batch, frames + 1, h)
        for group, lo, mid, hi in self._group_bounds:
            tones = (coeff[:, lo:mid] @ self._basis32[lo:mid, :TONE_LENGTH]).view(batch, frames, TONE_LENGTH)
            mono[group, :, :frames] += tones[..., :h]
            mono[group, :, 1:, : TONE_LENGTH - h] += tones[..., h:]
            if hi > mid:
                shots = (coeff[:, mid:hi] @ self._basis32[mid:hi]).view(batch, frames, 2 * h)
                mono[group, :, :frames] += shots[..., :h]
                mono[group, :, 1:] += shots[..., h:]
        mono = mono.view(len(self._group_bounds), batch, (frames + 1) * h)[:, :, ONSET : ONSET + frames * h]
        return torch.einsum("gc,gbn->bcn", self._gains, mono).contiguous()

    def encode(self, audio: torch.Tensor) -> torch.Tensor:
        if audio.ndim != 3 or audio.shape[1] != AUDIO_CHANNELS or audio.shape[2] < HOP_LENGTH:
            raise InvalidStageRequest(
                f"encode expects audio [B, {AUDIO_CHANNELS}, S >= {HOP_LENGTH}], got {tuple(audio.shape)}"
            )
        batch = audio.shape[0]
        frames = audio.shape[2] // HOP_LENGTH
        x = audio[:, :, : frames * HOP_LENGTH].to(self.device, torch.float64)
        x = torch.nn.functional.pad(x, (ONSET, 2 * HOP_LENGTH - ONSET))
        gains = self._gains.to(torch.float64)
        proj = x.new_zeros(batch, frames, self._basis64.shape[0])
        for group, lo, _, hi in self._group_bounds:
            mono = gains[group, 0] * x[:, 0] + gains[group, 1] * x[:, 1]
            seg = mono.unfold(1, KERNEL_LENGTH, HOP_LENGTH)[:, :frames]  # [B, T, 2H]
            proj[:, :, lo:hi] = seg @ self._basis64[lo:hi].T
        rot = self._rotations(frames)
        weighted = proj * rot[:, self._row_channel, self._row_slot]
        rhs = x.new_zeros(batch, frames, LATENT_DIM).index_add_(2, self._row_channel, weighted)
        diag, upper = self._normal_blocks(rot)
        scale = torch.diagonal(diag, dim1=1, dim2=2).mean()
        diag = diag + RIDGE * scale * torch.eye(LATENT_DIM, dtype=torch.float64, device=self.device)
        z = solve_block_tridiagonal(diag, upper, rhs.permute(1, 2, 0))  # [T, 64, B]
        return z.permute(2, 0, 1).to(torch.float32).contiguous()

    def _normal_blocks(self, rot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Diagonal ``[T, 64, 64]`` and upper ``[T-1, 64, 64]`` blocks of the decode's Gram matrix."""
        frames = rot.shape[0]

        def block(gram: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
            tmp = torch.einsum("fci,cidk->fcdk", left, gram)
            return torch.einsum("fcdk,fdk->fcd", tmp, right)

        diag = torch.cat([block(self._gram_inner, rot[i : i + _GRAM_CHUNK], rot[i : i + _GRAM_CHUNK])
                          for i in range(0, frames, _GRAM_CHUNK)])
        if frames == 1:
            diag[0] = block(self._gram_single, rot[:1], rot[:1])[0]
        else:
            diag[0] = block(self._gram_first, rot[:1], rot[:1])[0]
            diag[-1] = block(self._gram_last, rot[-1:], rot[-1:])[0]
        upper = [
            block(self._gram_next, rot[i : min(i + _GRAM_CHUNK, frames - 1)], rot[i + 1 : i + 1 + _GRAM_CHUNK])
            for i in range(0, frames - 1, _GRAM_CHUNK)
        ]
        upper_t = torch.cat(upper) if upper else rot.new_zeros(0, LATENT_DIM, LATENT_DIM)
        return diag, upper_t
