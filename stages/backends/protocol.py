"""What the diffusion loop needs from a model, and nothing more.

The loop (schedules, truncation, ODE/SDE, guidance, cover switch, repaint masks, checkpoints) is
shared by every backend; a backend only turns conditioning into something its denoiser reads,
predicts velocity, and moves between audio, latents and VQ codes. Keeping the surface this small
is what lets the embedded model and the real ACE-Step model share every test of the loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from prefect_acestep.stages.backends.identity import BackendIdentity
from prefect_acestep.stages.vocabulary import TaskKind

if TYPE_CHECKING:  # the request models use ConditionSpec and must not load torch for it
    import torch


@dataclass(frozen=True)
class ConditionSpec:
    """Everything a model is conditioned on for one stage, in structured form.

    Backends that read text (ACE-Step) render it with ``backends/acestep/prompt.py``; the embedded
    model reads the fields directly. ``None`` metas mean unset; an empty caption stays empty (never
    replaced by a default).
    """

    task: TaskKind
    caption: str = ""
    lyrics: str = ""
    instrumental: bool = False
    vocal_language: str = "en"
    bpm: int | None = None
    keyscale: str | None = None
    timesignature: str | None = None
    duration_s: float | None = None
    track_names: tuple[str, ...] = ()


@runtime_checkable
class Backend(Protocol):
    """A model as the loop sees it. Tensors are float32 on ``device`` unless noted.

    Shapes: latents ``[B, T, 64]`` at 25 Hz; audio ``[B, 2, T * 1920]`` at 48 kHz; ``t`` is ``[B]``
    in flow-matching time (1 = noise, 0 = clean); velocity is ``eps - x0``.
    """

    identity: BackendIdentity
    device: torch.device

    def encode_condition(self, spec: ConditionSpec, batch_size: int) -> Any:
        """Conditioning for ``batch_size`` items; opaque to the loop."""

    def null_condition(self, cond: Any) -> Any:
        """The unconditional counterpart of ``cond`` (CFG's uncond branch)."""

    def silence_latent(self, frames: int) -> torch.Tensor:
        """The latent of silence, ``[frames, 64]``: text2music context and repaint fill."""

    def make_context(self, src_latents: torch.Tensor, chunk_mask: torch.Tensor) -> Any:
        """Context from source latents ``[B, T, 64]`` and a 0/1 chunk mask ``[B, T]`` (1 = generate)."""

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, cond: Any, context: Any) -> torch.Tensor:
        """Predicted velocity ``[B, T, 64]`` at noise level ``t``."""

    def noise(self, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        """Standard normal noise of ``shape`` drawn from ``generator`` (reproducible)."""

    def vae_encode(self, audio: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Audio ``[B, 2, S]`` -> latents ``[B, S // 1920, 64]``: the posterior mean (deterministic),
        or with ``generator`` a posterior sample drawn from it; a backend without a posterior
        refuses a generator (``InvalidStageRequest``)."""

    def vae_decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents ``[B, T, 64]`` -> audio ``[B, 2, T * 1920]``."""

    def tokenize(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents ``[B, T, 64]`` -> integer VQ codes at 5 Hz, ``[B, ceil(T / 5), ...]``."""

    def detokenize(self, codes: torch.Tensor, frames: int) -> torch.Tensor:
        """VQ codes -> 25 Hz latents ``[B, frames, 64]`` (the cover bottleneck)."""

    def reset_cache(self) -> None:
        """Drop cached cross-attention state; called at the cover switch."""
