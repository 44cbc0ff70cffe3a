"""Repaint and lego seams as upstream ACE-Step 1.5 makes them (since its March 2026 rework).

Upstream keeps the source outside the window by injecting it, renoised to the current level, only
for the first part of the steps; after that the whole latent evolves freely, so the model can make
the window's edges fit. It then blends the result back into the clean source over a few frames
outside each window edge, and after decoding it splices the source waveform back in with a short
linear crossfade outside the window. One ``repaint_mode`` sets all three (``RepaintSeams``):

- ``balanced`` (upstream's default) with ``repaint_strength`` s: inject for ``1 - s`` of the steps,
  blend over ``round(25 * (1 - s))`` frames, crossfade ``0.05 * (1 - s)`` seconds;
- ``conservative``: inject for every step, 25 frames, 0.05 s;
- ``aggressive``: no injection, no blend, no splice (only the context mask keeps the source);
- ``strict`` (this project's, and upstream's behaviour before the rework): the source is injected
  at every step and the output equals it exactly outside the window; no blend, no splice.

The mode and strength are stage params, recorded on every latent, so a replay makes the same seams.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

RepaintMode = Literal["balanced", "conservative", "aggressive", "strict"]
REPAINT_MODES: tuple[str, ...] = ("balanced", "conservative", "aggressive", "strict")
DEFAULT_REPAINT_MODE: RepaintMode = "balanced"
DEFAULT_REPAINT_STRENGTH = 0.5
_FULL_BLEND_FRAMES = 25
_FULL_CROSSFADE_S = 0.05


@dataclass(frozen=True)
class RepaintSeams:
    """How a repaint/lego run joins its window to the source (see the module docstring)."""

    mode: RepaintMode = DEFAULT_REPAINT_MODE
    strength: float = DEFAULT_REPAINT_STRENGTH
    """Only ``balanced`` reads it: 0 keeps the most of the source, 1 is pure diffusion."""

    def __post_init__(self) -> None:
        if self.mode not in REPAINT_MODES:
            raise ValueError(f"repaint_mode: one of {list(REPAINT_MODES)}, got {self.mode!r}")
        if not 0.0 <= self.strength <= 1.0:
            raise ValueError(f"repaint_strength: must lie in [0, 1], got {self.strength}")

    @property
    def strict(self) -> bool:
        return self.mode == "strict"

    def _resolved(self) -> tuple[float, int, float]:
        """(injection ratio, latent blend frames, waveform crossfade seconds), as upstream resolves
        them (``strict`` injects every step and blends nothing)."""
        if self.mode == "aggressive":
            return 0.0, 0, 0.0
        if self.mode == "strict":
            return 1.0, 0, 0.0
        if self.mode == "conservative":
            return 1.0, _FULL_BLEND_FRAMES, _FULL_CROSSFADE_S
        keep = 1.0 - self.strength
        return keep, round(_FULL_BLEND_FRAMES * keep), _FULL_CROSSFADE_S * keep

    def injection_steps(self, total_steps: int) -> int:
        """Absolute steps ``i < injection_steps`` re-inject the source after their update."""
        return round(self._resolved()[0] * total_steps)

    @property
    def blend_frames(self) -> int:
        """Frames outside each window edge over which the output ramps back to the source (0: none)."""
        return self._resolved()[1]

    @property
    def splices_waveform(self) -> bool:
        """Upstream splices unless aggressive; strict needs no splice (its latent is the source)."""
        return self.mode in ("balanced", "conservative")

    @property
    def crossfade_seconds(self) -> float:
        return self._resolved()[2]


def window_weights(window: torch.Tensor, ramp: int) -> torch.Tensor:
    """Per-position weight of the generated signal: 1 inside the window (``window`` True), 0 far
    outside, and over ``ramp`` positions outside each edge a linear ramp without its end points
    (``linspace(0, 1, ramp + 2)[1:-1]``), as upstream's latent blend and waveform splice build it.

    ``window`` is ``[..., L]`` bool with one contiguous window per row.
    """
    weights = window.to(torch.float32).clone()
    if ramp <= 0:
        return weights
    rows = weights.reshape(-1, weights.shape[-1])
    for row, inside in zip(rows, window.reshape(-1, window.shape[-1])):
        positions = torch.nonzero(inside).flatten()
        if positions.numel() == 0 or positions.numel() == inside.numel():
            continue
        left, right = int(positions[0]), int(positions[-1]) + 1
        start, end = max(left - ramp, 0), min(right + ramp, inside.numel())
        row[start:left] = torch.linspace(0.0, 1.0, left - start + 2)[1:-1]
        row[right:end] = torch.linspace(1.0, 0.0, end - right + 2)[1:-1]
    return weights.reshape(window.shape)


def blend_edges(generated: torch.Tensor, source: torch.Tensor, window: torch.Tensor, frames: int) -> torch.Tensor:
    """Latents ``[B, T, D]``: the generated window, the source outside, ramped over ``frames``."""
    weights = window_weights(window, frames).to(generated.device, generated.dtype).unsqueeze(-1)
    return weights * generated + (1.0 - weights) * source


def splice_waveform(
    decoded: torch.Tensor, source: torch.Tensor, window: tuple[int, int], crossfade_samples: int
) -> torch.Tensor:
    """Audio ``[C, S]``: the source outside the window ``[start, end)`` (samples), the decoded
    audio inside, crossfaded linearly over ``crossfade_samples`` outside each edge."""
    inside = torch.zeros(decoded.shape[-1], dtype=torch.bool)
    inside[window[0] : window[1]] = True
    weights = window_weights(inside, crossfade_samples).to(decoded.device, decoded.dtype)
    return weights * decoded + (1.0 - weights) * source.to(decoded.device, decoded.dtype)
