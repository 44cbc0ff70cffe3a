"""Classifier-free guidance as ACE-Step's base/sft checkpoints expect it (APG, or ADG).

Plain CFG over-saturates these models; upstream uses adaptive projected guidance: the guidance
direction is smoothed by a (negative) momentum, its norm is clipped along the time axis, and only
its part orthogonal to the conditional prediction is added. The momentum is state that spans
steps, so it is passed in and returned explicitly: the loop stores it in checkpoints and restores
it on resume, which an object hidden inside the loop could not offer.

Tensors are ``[B, T, D]``; the time axis is dim 1.
"""

from __future__ import annotations

import torch

APG_MOMENTUM = -0.75
APG_NORM_THRESHOLD = 2.5
APG_ETA = 0.0
ADG_ANGLE_CLIP = 3.14 / 6
"""Upstream's literal (not math.pi / 6); kept so that ADG matches it numerically."""

_TIME_AXIS = 1


def apg(
    cond: torch.Tensor,
    uncond: torch.Tensor,
    scale: float,
    running: torch.Tensor | None,
    *,
    momentum: float = APG_MOMENTUM,
    norm_threshold: float = APG_NORM_THRESHOLD,
    eta: float = APG_ETA,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Guided velocity and the new momentum buffer (``running=None`` on the first guided step).

    ``avg = diff + momentum * avg``; clip ``||avg||_2`` over time to ``norm_threshold``; split it
    (in float64) into parts parallel and orthogonal to ``cond``; ``cond + (scale - 1) * (orth + eta * par)``.
    """
    diff = cond - uncond
    running = diff if running is None else torch.add(diff, running, alpha=momentum)
    update = running
    if norm_threshold > 0:
        # sqrt of a sum of squares: the same norm as Tensor.norm, several times faster along dim 1.
        norm = (update * update).sum(dim=_TIME_AXIS, keepdim=True).sqrt()
        update = update * torch.clamp(norm_threshold / norm, max=1.0)
    parallel, orthogonal = _project(update, cond, need_parallel=eta != 0.0)
    step = orthogonal if parallel is None else orthogonal + eta * parallel
    return cond + (scale - 1.0) * step, running


def _project(
    v: torch.Tensor, onto: torch.Tensor, *, need_parallel: bool
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Parts of ``v`` parallel and orthogonal to ``onto`` along time, computed in float64.

    ``(v . c) / max(|c|, 1e-12)^2 * c`` is ``normalize``-then-project in one pass over the data.
    """
    dtype = v.dtype
    v64, c64 = v.double(), onto.double()
    dot = (v64 * c64).sum(dim=_TIME_AXIS, keepdim=True)
    norm2 = (c64 * c64).sum(dim=_TIME_AXIS, keepdim=True).clamp_min(1e-24)
    parallel = (dot / norm2) * c64
    orthogonal = (v64 - parallel).to(dtype)
    return (parallel.to(dtype) if need_parallel else None), orthogonal


def adg(
    x_t: torch.Tensor,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    t: float,
    scale: float,
    *,
    angle_clip: float = ADG_ANGLE_CLIP,
) -> torch.Tensor:
    """Angle-based dynamic guidance: rotate the conditional x0 estimate away from the unconditional
    one by ``(scale - 1)`` times their angle (per frame, clipped to ``angle_clip``), then turn the
    result back into a velocity. Stateless. ``t`` must be > 0 (it divides)."""
    n, frames, dim = cond.shape
    weight = max(scale - 1.0, 0.0) + 1e-3
    x0_cond = x_t - t * cond
    x0_uncond = x_t - t * uncond
    x0_diff = x0_cond - x0_uncond

    a = x0_cond.reshape(-1, dim).double()
    b = x0_uncond.reshape(-1, dim).double()
    cos = (a / a.norm(dim=1, keepdim=True) * (b / b.norm(dim=1, keepdim=True))).sum(dim=1, keepdim=True)
    theta = torch.acos(cos.clamp(-1.0 + 1e-6, 1.0 - 1e-6)).view(n, frames, 1)
    theta_new = torch.clamp(weight * theta, -angle_clip, angle_clip)

    diff_flat = x0_diff.reshape(-1, dim).float()
    unc_flat = x0_uncond.reshape(-1, dim).float()
    coeff = (diff_flat * unc_flat).sum(dim=1, keepdim=True) / ((unc_flat * unc_flat).sum(dim=1, keepdim=True) + 1e-8)
    perp = (diff_flat - coeff * unc_flat).view(n, frames, dim)

    sin_theta = torch.sin(theta)
    small = sin_theta <= 1e-3
    # Upstream multiplies by a 0/1 mask instead, which turns 0 * (x / 0) into NaN for parallel x0s.
    ratio = torch.sin(theta_new) / torch.where(small, 1.0, sin_theta)
    perp_scale = torch.where(small, torch.full_like(theta, weight), ratio)
    x0_new = torch.cos(theta_new) * x0_cond + perp * perp_scale
    return ((x_t - x0_new) / t).to(x_t.dtype)
