"""The real ACE-Step 1.5 model as a ``Backend``: diffusers modules driven by our loop.

The diffusers pipeline's own loop is not used: its cover strength blends two velocities instead of
switching conditioning, and it has no partial start, SDE or checkpoints. This class only turns
conditioning into what the DiT reads and exposes the model's velocity, VAE and VQ bottleneck.

Tensors cross the protocol in float32; inside, the model runs in its dtype (bf16 on CUDA, fp32 on
CPU). Every call runs under ``torch.no_grad`` rather than ``inference_mode``: the loop edits some
returned tensors in place (repaint fills), which inference tensors forbid.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from prefect_acestep.stages.backends.acestep import conditioning as cnd
from prefect_acestep.stages.backends.acestep import vae_tiling
from prefect_acestep.stages.backends.acestep.identity import checkpoint_identity, identity_of
from prefect_acestep.stages.backends.acestep.layout import VQ_PARTS, resolve_layout
from prefect_acestep.stages.backends.acestep.loading import Components, load_components, require_extra, resolve_device, resolve_dtype
from prefect_acestep.stages.backends.acestep.variant import check_guidance, check_task
from prefect_acestep.stages.backends.acestep.vae_tiling import VaeTiling
from prefect_acestep.stages.backends.identity import BackendIdentity
from prefect_acestep.stages.backends.protocol import ConditionSpec
from prefect_acestep.stages.errors import BackendLoadError, InvalidStageRequest
from prefect_acestep.stages.geometry import AUDIO_CHANNELS, HOP_LENGTH, LATENT_DIM, VQ_POOL

CHECKPOINT_DIR_ENV = "ACESTEP_CHECKPOINT_DIR"
_PAD_NOISE_SEED = 0x0AC3_57E9_0128
"""Seeds the fixed noise of the min-length tail (see conditioning.pad_to_min_frames)."""


class AceStepBackend:
    """ACE-Step 1.5 (base, sft or turbo) from a local checkpoint: the official ``checkpoints/``
    folder as downloaded, or a diffusers-layout folder.

    ``variant`` picks the DiT folder of an official folder and defaults to the checkpoint's own
    (required when an official folder holds several); in the diffusers layout it is needed only
    for the turbo sampling flavours (turbo-shift1/-shift3/-continuous), which share the turbo
    config. ``vae_tiling`` sets the VAE's tile geometry (default: upstream's, see ``vae_tiling``).
    """

    def __init__(
        self,
        checkpoint_dir: str | None = None,
        variant: str | None = None,
        device: str | None = None,
        dtype: str | None = None,
        vae_tiling: VaeTiling | None = None,
    ) -> None:
        """``checkpoint_dir`` and ``device`` default to ``ACESTEP_CHECKPOINT_DIR`` and ``ACESTEP_DEVICE``
        (else cuda when available, else cpu): stages name only the backend and variant, so a worker's
        environment says where its weights are."""
        require_extra()
        root = _checkpoint_root(checkpoint_dir)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(self.device, dtype)
        self.tiling = VaeTiling() if vae_tiling is None else vae_tiling
        self.layout = resolve_layout(root, variant)
        resolved = checkpoint_identity(self.layout)
        self.identity: BackendIdentity = resolved.identity
        self._parts = load_components(self.layout, resolved.parts, self.device, self.dtype)
        generator = torch.Generator().manual_seed(_PAD_NOISE_SEED)
        self._pad_noise = torch.randn(cnd.MIN_FRAMES, LATENT_DIM, generator=generator).to(self.device, self.dtype)

    @classmethod
    def identity_for(
        cls,
        checkpoint_dir: str | None = None,
        variant: str | None = None,
        device: str | None = None,
        dtype: str | None = None,
        vae_tiling: VaeTiling | None = None,
    ) -> BackendIdentity:
        """The identity a backend built with these options has, read from the checkpoint directory's
        files (layout, configs, sampled weights) without importing diffusers or loading a module: a
        cache lookup needs it, and on a fresh worker loading the model costs gigabytes. ``device``,
        ``dtype`` and ``vae_tiling`` are the constructor's options too; they do not enter the identity."""
        del device, dtype, vae_tiling
        return identity_of(_checkpoint_root(checkpoint_dir), variant)

    @property
    def components(self) -> Components:
        """The loaded modules, for benchmarks that time the bare DiT against the loop."""
        return self._parts

    @torch.no_grad()
    def encode_condition(self, spec: ConditionSpec, batch_size: int) -> cnd.AceStepCondition:
        check_task(self.identity.variant, spec.task)
        if batch_size < 1:
            raise InvalidStageRequest(f"batch_size: must be >= 1, got {batch_size}")
        return cnd.encode_spec(self._parts, spec, self.device).expand(batch_size)

    @torch.no_grad()
    def null_condition(self, cond: cnd.AceStepCondition) -> cnd.AceStepCondition:
        check_guidance(self.identity.variant)
        return cnd.null_of(self._parts, cond)

    def silence_latent(self, frames: int) -> torch.Tensor:
        cnd.check_frames(frames, "frames")
        return self._parts.silence[:frames].to(torch.float32, copy=True)

    @torch.no_grad()
    def make_context(self, src_latents: torch.Tensor, chunk_mask: torch.Tensor) -> torch.Tensor:
        return cnd.context_of(src_latents.to(self.device), chunk_mask.to(self.device), self.dtype)

    @torch.no_grad()
    def velocity(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: cnd.AceStepCondition, context: torch.Tensor
    ) -> torch.Tensor:
        batch, frames, _ = x_t.shape
        cnd.check_frames(frames, "x_t")
        if cond.hidden_states.shape[0] != batch or tuple(context.shape[:2]) != (batch, frames):
            raise InvalidStageRequest(
                f"velocity: x_t {tuple(x_t.shape)} does not match cond batch {cond.hidden_states.shape[0]} "
                f"/ context {tuple(context.shape)}"
            )
        timestep = t.to(self.device, self.dtype)
        x, ctx = cnd.pad_to_min_frames(
            x_t.to(self.device, self.dtype), context, timestep, self._parts.silence, self._pad_noise
        )
        out = self._parts.transformer(
            hidden_states=x,
            timestep=timestep,
            timestep_r=timestep,
            encoder_hidden_states=cond.hidden_states,
            context_latents=ctx,
            return_dict=False,
        )[0]
        return out[:, :frames].float()

    def noise(self, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        drawn = torch.randn(shape, generator=generator, device=generator.device, dtype=torch.float32)
        return drawn.to(self.device)

    @torch.no_grad()
    def vae_encode(self, audio: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The posterior mean, or (``generator`` given) a posterior sample as upstream draws it."""
        if audio.dim() != 3 or audio.shape[1] != AUDIO_CHANNELS:
            raise InvalidStageRequest(f"audio: expected [B, {AUDIO_CHANNELS}, samples], got {tuple(audio.shape)}")
        frames = audio.shape[2] // HOP_LENGTH
        cnd.check_frames(frames, "audio frames")
        wave = audio[:, :, : frames * HOP_LENGTH].to(self.device, self.dtype)
        return vae_tiling.encode(self._parts.vae, wave, self.tiling, generator).transpose(1, 2).float()

    @torch.no_grad()
    def vae_decode(self, latents: torch.Tensor) -> torch.Tensor:
        _check_latents(latents, "latents")
        z = latents.to(self.device, self.dtype).transpose(1, 2)
        return vae_tiling.decode(self._parts.vae, z, self.tiling).float()

    @torch.no_grad()
    def tokenize(self, latents: torch.Tensor) -> torch.Tensor:
        _check_latents(latents, "latents")
        tokenizer = self._vq()[0]
        _quantized, codes = tokenizer.tokenize(latents.to(self.device, self.dtype), self._parts.silence.unsqueeze(0))
        return codes

    @torch.no_grad()
    def detokenize(self, codes: torch.Tensor, frames: int) -> torch.Tensor:
        cnd.check_frames(frames, "frames")
        if codes.dim() != 3 or codes.shape[1] != math.ceil(frames / VQ_POOL):
            raise InvalidStageRequest(
                f"codes: expected [B, ceil({frames} / {VQ_POOL}), quantizers], got {tuple(codes.shape)}"
            )
        tokenizer, detokenizer = self._vq()
        size = tokenizer.quantizer.codebook_size
        if codes.numel() and not 0 <= int(codes.min()) <= int(codes.max()) < size:
            raise InvalidStageRequest(f"codes: values must lie in 0..{size - 1} (this checkpoint's codebook)")
        quantized = tokenizer.quantizer.get_output_from_indices(codes.to(self.device))
        return detokenizer(quantized.to(self.dtype))[:, :frames].float()

    def reset_cache(self) -> None:
        """Nothing to drop: the diffusers DiT recomputes cross-attention keys and values from
        ``encoder_hidden_states`` on every call, so a switch of condition takes effect at once."""

    def _vq(self) -> tuple:
        parts = self._parts
        if parts.audio_tokenizer is None:
            raise BackendLoadError(
                f"this checkpoint has no {list(VQ_PARTS)} subfolders, so the cover bottleneck cannot run; "
                "re-convert it with a diffusers converter that exports them, or use the official checkpoints/ folder"
            )
        return parts.audio_tokenizer, parts.audio_token_detokenizer


def _check_latents(latents: torch.Tensor, what: str) -> None:
    if latents.dim() != 3 or latents.shape[2] != LATENT_DIM:
        raise InvalidStageRequest(f"{what}: expected [B, T, {LATENT_DIM}], got {tuple(latents.shape)}")
    cnd.check_frames(latents.shape[1], what)


def _checkpoint_root(checkpoint_dir: str | None) -> Path:
    if checkpoint_dir is None:
        checkpoint_dir = os.environ.get(CHECKPOINT_DIR_ENV, "")
        if checkpoint_dir == "":
            raise BackendLoadError(f"checkpoint_dir: not given and {CHECKPOINT_DIR_ENV} is not set")
    return Path(checkpoint_dir).expanduser()
