"""A small but real backend: the exact denoiser of a Gaussian prior, to test the loop on its own.

The prior over clean latents is ``x0 ~ N(mu, sigma^2 I)`` with a mean that depends on the
conditioning and the context: ``mu = m * (c + 0.5 * src) + (1 - m) * src`` where ``c`` is a
per-channel pattern derived from the caption and metas (zero for the null condition), ``src`` the
context's source latents and ``m`` its chunk mask (1 = generate). Under flow matching
(``x_t = t * eps + (1 - t) * x0``) the posterior mean is closed-form:

    E[x0 | x_t] = mu + g * (x_t - (1 - t) * mu),   g = (1 - t) sigma^2 / ((1 - t)^2 sigma^2 + t^2)

and the velocity is ``(x_t - E[x0 | x_t]) / t``. So sampling with it is real diffusion with a known
answer (the Euler ODE keeps the mean path exact), CFG has a real unconditional branch, and every
call is recorded for the tests.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import torch

from prefect_acestep.stages.backends.identity import BackendIdentity
from prefect_acestep.stages.backends.protocol import ConditionSpec
from prefect_acestep.stages.geometry import HOP_LENGTH, LATENT_DIM, VQ_POOL

_CODE_LEVELS = 4.0
"""VQ codes are the 5-frame mean quantised to steps of 1/4."""


@dataclass(frozen=True)
class GaussCond:
    mean: torch.Tensor  # [B, 1, D]
    spec: ConditionSpec
    null: bool


@dataclass(frozen=True)
class GaussContext:
    src: torch.Tensor  # [B, T, D]
    mask: torch.Tensor  # [B, T]


@dataclass
class Call:
    """One recorded velocity call."""

    t: float
    task: str
    null: bool
    context: GaussContext
    x_t: torch.Tensor


@dataclass
class GaussianBackend:
    """Closed-form denoiser; ``events`` logs ``Call``s and ``"reset"`` markers in order."""

    variant: str = "turbo"
    sigma: float = 0.5
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    record_inputs: bool = False
    events: list[Call | str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.identity = BackendIdentity(
            name="gaussian-test", variant=self.variant, latent_space="gaussian-test-v1", weights_digest="closed-form"
        )
        basis = torch.linalg.qr(torch.randn(2 * HOP_LENGTH, LATENT_DIM, generator=torch.Generator().manual_seed(7)))[0]
        self._basis = basis.T.contiguous().to(self.device)  # [D, 2 * hop], orthonormal rows

    # --- conditioning -------------------------------------------------------------------------
    def encode_condition(self, spec: ConditionSpec, batch_size: int) -> GaussCond:
        key = f"{spec.caption}|{spec.bpm}|{spec.keyscale}|{spec.timesignature}".encode()
        pattern = torch.randn(LATENT_DIM, generator=torch.Generator().manual_seed(zlib.crc32(key)))
        mean = pattern.to(self.device).view(1, 1, LATENT_DIM).expand(batch_size, 1, LATENT_DIM)
        return GaussCond(mean, spec, null=False)

    def null_condition(self, cond: GaussCond) -> GaussCond:
        return GaussCond(torch.zeros_like(cond.mean), cond.spec, null=True)

    def silence_latent(self, frames: int) -> torch.Tensor:
        channel = torch.arange(LATENT_DIM, dtype=torch.float32, device=self.device)
        return (-0.25 + 0.005 * channel).expand(frames, LATENT_DIM).clone()

    def make_context(self, src_latents: torch.Tensor, chunk_mask: torch.Tensor) -> GaussContext:
        return GaussContext(src_latents, chunk_mask)

    # --- denoiser -----------------------------------------------------------------------------
    def prior_mean(self, cond: GaussCond, context: GaussContext) -> torch.Tensor:
        m = context.mask.unsqueeze(-1)
        return m * (cond.mean + 0.5 * context.src) + (1.0 - m) * context.src

    def posterior_x0(self, x_t: torch.Tensor, t: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
        tt = t.view(-1, 1, 1)
        s2 = self.sigma**2
        gain = (1.0 - tt) * s2 / ((1.0 - tt) ** 2 * s2 + tt**2)
        return mu + gain * (x_t - (1.0 - tt) * mu)

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, cond: GaussCond, context: GaussContext) -> torch.Tensor:
        self.events.append(
            Call(float(t[0]), cond.spec.task, cond.null, context, x_t.clone() if self.record_inputs else x_t)
        )
        x0 = self.posterior_x0(x_t, t, self.prior_mean(cond, context))
        return (x_t - x0) / t.view(-1, 1, 1)

    def noise(self, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        return torch.randn(shape, generator=generator, device=self.device, dtype=torch.float32)

    def reset_cache(self) -> None:
        self.events.append("reset")

    # --- codec and VQ ---------------------------------------------------------------------------
    def vae_decode(self, latents: torch.Tensor) -> torch.Tensor:
        b, frames, _ = latents.shape
        return (latents @ self._basis).view(b, frames, 2, HOP_LENGTH).permute(0, 2, 1, 3).reshape(b, 2, -1)

    def vae_encode(self, audio: torch.Tensor) -> torch.Tensor:
        b, _, samples = audio.shape
        frames = samples // HOP_LENGTH
        blocks = audio[..., : frames * HOP_LENGTH].reshape(b, 2, frames, HOP_LENGTH).permute(0, 2, 1, 3)
        return blocks.reshape(b, frames, 2 * HOP_LENGTH) @ self._basis.T

    def tokenize(self, latents: torch.Tensor) -> torch.Tensor:
        b, frames, d = latents.shape
        pad = (-frames) % VQ_POOL
        padded = torch.cat([latents, latents[:, -1:].expand(b, pad, d)], dim=1) if pad else latents
        pooled = padded.view(b, -1, VQ_POOL, d).mean(dim=2)
        return torch.round(pooled * _CODE_LEVELS).to(torch.int64)

    def detokenize(self, codes: torch.Tensor, frames: int) -> torch.Tensor:
        return (codes.to(torch.float32) / _CODE_LEVELS).repeat_interleave(VQ_POOL, dim=1)[:, :frames]

    # --- what the tests read --------------------------------------------------------------------
    @property
    def calls(self) -> list[Call]:
        return [e for e in self.events if isinstance(e, Call)]
