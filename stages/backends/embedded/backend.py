"""The embedded backend: the default model, shipped in the package, no weights, no network.

A linear musical codec as its VAE, an exact posterior-mean denoiser of a known musical prior as its
"network", and a VQ bottleneck of coarse chroma codes; see the package modules for each.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import torch

from prefect_acestep.stages.backends.embedded import vq
from prefect_acestep.stages.backends.embedded.codec import MusicCodec
from prefect_acestep.stages.backends.embedded.condition import GUIDED_BLEND, EmbeddedCondition, build_condition, build_prior
from prefect_acestep.stages.backends.embedded.condition import null_condition as _null_condition
from prefect_acestep.stages.backends.embedded.digest import model_digest
from prefect_acestep.stages.backends.embedded.observation import observe
from prefect_acestep.stages.backends.identity import BackendIdentity
from prefect_acestep.stages.backends.protocol import ConditionSpec
from prefect_acestep.stages.errors import InvalidStageRequest
from prefect_acestep.stages.geometry import LATENT_DIM
from prefect_acestep.stages.vocabulary import MODEL_VARIANTS, TASKS, is_guided, refusal

NAME = "embedded"
LATENT_SPACE = "embedded-music-v1"

_codecs: dict[torch.device, MusicCodec] = {}
_codecs_lock = threading.Lock()


def _shared_codec(device: torch.device) -> MusicCodec:
    """One codec per device per process: its basis and Gram tables take a moment to build."""
    with _codecs_lock:
        if device not in _codecs:
            _codecs[device] = MusicCodec(device)
        return _codecs[device]


@dataclass(frozen=True)
class EmbeddedContext:
    """Source latents ``[B, T, 64]`` and chunk mask ``[B, T]`` (1 = generate), as given."""

    src: torch.Tensor
    mask: torch.Tensor


class EmbeddedBackend:
    """The embedded model under one of the model variants (base, sft, turbo, turbo-shift1,
    turbo-shift3, turbo-continuous). Variants share the prior; they differ as the real ones do in
    the tasks they accept (extract, lego and complete on base only) and in guidance: the guided ones
    (base, sft) keep part of the unconditional prior in their conditional one, so that CFG matters
    for them as it does for the real model."""

    def __init__(self, variant: str = "turbo", device: str | torch.device = "cpu") -> None:
        self.identity = self.identity_for(variant)
        self.device = torch.device(device)
        self.variant = variant
        self._guided = is_guided(variant)
        self.codec = _shared_codec(self.device)
        self.cache_resets = 0
        """How often the loop told the model to drop cached conditioning (the cover switch)."""

    @classmethod
    def identity_for(cls, variant: str = "turbo", device: str | torch.device = "cpu") -> BackendIdentity:
        """The identity of the model under ``variant``, without building it: the weights digest is
        the digest of the model's code. ``device`` does not change the identity."""
        del device
        if variant not in MODEL_VARIANTS:
            raise InvalidStageRequest(f"unknown embedded variant {variant!r}: expected one of {sorted(MODEL_VARIANTS)}")
        return BackendIdentity(name=NAME, variant=variant, latent_space=LATENT_SPACE, weights_digest=model_digest())

    def encode_condition(self, spec: ConditionSpec, batch_size: int) -> EmbeddedCondition:
        refused = refusal(self.variant, spec.task)
        if refused is not None:
            raise InvalidStageRequest(refused)
        if TASKS[spec.task].tracks == "one" and not spec.track_names:
            # The model has no default stem to pick, so a task about one track must name it.
            raise InvalidStageRequest(f"task {spec.task!r} needs track_names naming the track to {spec.task}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidStageRequest(f"batch_size must be a positive integer, got {batch_size!r}")
        blend = GUIDED_BLEND if self._guided else 0.0
        return build_condition(spec, batch_size, blend)

    def null_condition(self, cond: Any) -> EmbeddedCondition:
        return _null_condition(self._check_condition(cond))

    def silence_latent(self, frames: int) -> torch.Tensor:
        """The codec is linear, so silence is the zero latent."""
        if frames < 1:
            raise InvalidStageRequest(f"frames must be positive, got {frames}")
        return torch.zeros(frames, LATENT_DIM, device=self.device)

    def make_context(self, src_latents: torch.Tensor, chunk_mask: torch.Tensor) -> EmbeddedContext:
        if src_latents.ndim != 3 or src_latents.shape[2] != LATENT_DIM:
            raise InvalidStageRequest(f"source latents must be [B, T, {LATENT_DIM}], got {tuple(src_latents.shape)}")
        if chunk_mask.shape != src_latents.shape[:2]:
            raise InvalidStageRequest(
                f"chunk mask {tuple(chunk_mask.shape)} must be [B, T] = {tuple(src_latents.shape[:2])}"
            )
        return EmbeddedContext(
            src=src_latents.to(self.device, torch.float32), mask=chunk_mask.to(self.device, torch.float32)
        )

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, cond: Any, context: Any) -> torch.Tensor:
        """``(x_t - E[x0 | x_t]) / t``: the exact flow-matching velocity of the prior."""
        cond = self._check_condition(cond)
        if not isinstance(context, EmbeddedContext):
            raise InvalidStageRequest(f"context must come from make_context, got {type(context).__name__}")
        if x_t.ndim != 3 or x_t.shape[2] != LATENT_DIM or x_t.shape[0] != cond.batch_size:
            raise InvalidStageRequest(f"x_t must be [{cond.batch_size}, T, {LATENT_DIM}], got {tuple(x_t.shape)}")
        if context.src.shape != x_t.shape:
            raise InvalidStageRequest(f"context {tuple(context.src.shape)} does not match x_t {tuple(x_t.shape)}")
        t = torch.as_tensor(t, dtype=torch.float32, device=self.device).reshape(-1).expand(x_t.shape[0])
        if bool(((t <= 0) | (t > 1)).any()):
            raise InvalidStageRequest(f"velocity needs 0 < t <= 1, got {t.tolist()}")
        observation, style = observe(cond, context.src, context.mask)
        x_t = x_t.to(self.device, torch.float32)
        if not bool(observation.free.any()):  # extract: the result is fixed, no prior to consult
            return (x_t - observation.fixed) / t.view(-1, 1, 1)
        reading = vq.cover_reading(vq.tokenize(context.src)) if cond.spec.task == "cover" else None
        prior = build_prior(cond, style, x_t.shape[1], reading)
        x0 = prior.posterior_mean(x_t, t, observation)
        return (x_t - x0) / t.view(-1, 1, 1)

    def noise(self, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        return torch.randn(shape, generator=generator, dtype=torch.float32, device=self.device)

    def vae_encode(self, audio: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if generator is not None:
            raise InvalidStageRequest("vae_encode: the embedded codec is exact and has no posterior to sample; use 'mean'")
        return self.codec.encode(audio)

    def vae_decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.codec.decode(latents)

    def tokenize(self, latents: torch.Tensor) -> torch.Tensor:
        return vq.tokenize(latents.to(self.device))

    def detokenize(self, codes: torch.Tensor, frames: int) -> torch.Tensor:
        return vq.detokenize(codes.to(self.device), frames)

    def reset_cache(self) -> None:
        """The embedded model caches no cross-attention state; it counts the resets so that the
        cover switch can be observed."""
        self.cache_resets += 1

    def _check_condition(self, cond: Any) -> EmbeddedCondition:
        if not isinstance(cond, EmbeddedCondition):
            raise InvalidStageRequest(f"condition must come from encode_condition, got {type(cond).__name__}")
        return cond
