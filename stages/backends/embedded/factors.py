"""The building block of the embedded prior: a factor is an independent choice, made once per time
segment, among a few musical options over a fixed set of channels.

A harmony factor picks a chord per bar, a melody factor a note per beat, a rhythm factor a drum
pattern per bar. Options are stored as full-length patterns (the option "everywhere"); a segment
only reads its own frames. Factors over disjoint channels and segments are independent given the
scene, which is what keeps the exact posterior cheap: it factorises over (factor, segment).
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Separable:
    """A factor whose patterns are envelope x vector: ``patterns[0, o, t, c] =
    envelopes[envelope_of[o], t] * vectors[vector_of[o], c]``. Scoring then needs one projection
    of ``x`` per vector and one matrix product per timing, instead of a pass per option and frame,
    which is what keeps priors over many keys and tempos fast."""

    vectors: torch.Tensor
    """``[D, C]``"""
    envelopes: torch.Tensor
    """``[E, T]``"""
    vector_of: torch.Tensor
    """``[O]`` long"""
    envelope_of: torch.Tensor
    """``[O]`` long"""
    timing: Hashable
    """Equal for factors with the same envelopes and segments (they share their columns)."""


@dataclass(frozen=True)
class Factor:
    channels: torch.Tensor
    """``[C]`` channel indices; tonic-relative pitched channels when ``transposes``."""
    segment: torch.Tensor
    """``[T]`` segment index of every frame (segments are runs of consecutive frames)."""
    patterns: torch.Tensor
    """``[Bp, O, T, C]`` float32: option ``o`` played over the whole piece; ``Bp`` is 1 when every
    batch item shares the factor, else the batch size (covers follow each item's own source)."""
    log_weights: torch.Tensor
    """``[S, O]`` float64 log prior of each option in each segment (rows normalised)."""
    transposes: bool
    """Whether the factor follows the key (pitched parts) or not (percussion, covers)."""
    separable: Separable | None = None

    @property
    def segments(self) -> int:
        return self.log_weights.shape[0]


def normalised_log(weights: torch.Tensor) -> torch.Tensor:
    """Row-normalised log weights; zero weights become -inf (options a segment cannot take)."""
    weights = weights.to(torch.float64)
    return torch.log(weights / weights.sum(dim=-1, keepdim=True))
