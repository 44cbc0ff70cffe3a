"""APG and ADG against independent, loop-per-vector numpy versions of the upstream formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prefect_acestep.stages.engine.guidance import ADG_ANGLE_CLIP, APG_MOMENTUM, adg, apg


def _tensors(seed: int, shape=(2, 40, 8), scale_uncond=1.0):
    g = torch.Generator().manual_seed(seed)
    cond = torch.randn(shape, generator=g)
    uncond = scale_uncond * torch.randn(shape, generator=g)
    return cond, uncond


def _apg_reference(cond, uncond, scale, running, momentum=-0.75, threshold=2.5, eta=0.0):
    """Per (item, channel): a vector over time, handled one at a time in float64."""
    cond, uncond = cond.double().numpy(), uncond.double().numpy()
    diff = cond - uncond
    running = diff if running is None else diff + momentum * running
    out = np.empty_like(cond)
    for b in range(cond.shape[0]):
        for d in range(cond.shape[2]):
            u = running[b, :, d]
            norm = np.linalg.norm(u)
            u = u * min(1.0, threshold / norm)
            c = cond[b, :, d]
            unit = c / np.linalg.norm(c)
            par = np.dot(u, unit) * unit
            out[b, :, d] = c + (scale - 1.0) * (u - par + eta * par)
    return out, running


def test_apg_matches_reference_over_several_steps_with_momentum():
    running_ref = None
    running = None
    for step in range(4):
        cond, uncond = _tensors(step, scale_uncond=3.0)  # big diffs: the norm clip is active
        guided, running = apg(cond, uncond, 4.0, running)
        expected, running_ref = _apg_reference(cond, uncond, 4.0, running_ref)
        assert guided.dtype == torch.float32
        np.testing.assert_allclose(guided.numpy(), expected, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(running.numpy(), running_ref, rtol=1e-5, atol=1e-5)


def test_apg_eta_adds_the_parallel_part():
    cond, uncond = _tensors(9, scale_uncond=3.0)
    guided, _ = apg(cond, uncond, 2.5, None, eta=0.5)
    expected, _ = _apg_reference(cond, uncond, 2.5, None, eta=0.5)
    np.testing.assert_allclose(guided.numpy(), expected, rtol=1e-5, atol=1e-5)


def test_apg_momentum_is_carried_between_steps():
    c1, u1 = _tensors(1)
    c2, u2 = _tensors(2)
    _, running = apg(c1, u1, 3.0, None)
    assert torch.equal(running, c1 - u1)
    _, running2 = apg(c2, u2, 3.0, running)
    torch.testing.assert_close(running2, (c2 - u2) + APG_MOMENTUM * (c1 - u1))
    fresh, _ = apg(c2, u2, 3.0, None)
    carried, _ = apg(c2, u2, 3.0, running)
    assert not torch.allclose(fresh, carried)


def test_apg_update_is_orthogonal_to_cond_and_clipped():
    cond, uncond = _tensors(5, scale_uncond=10.0)
    guided, _ = apg(cond, uncond, 3.0, None)
    update = (guided - cond).double() / 2.0
    dots = (update * cond.double()).sum(dim=1)
    assert dots.abs().max() < 1e-4
    assert update.norm(dim=1).max() <= 2.5 + 1e-5


def test_apg_scale_one_is_the_conditional_prediction():
    cond, uncond = _tensors(3)
    guided, _ = apg(cond, uncond, 1.0, None)
    assert torch.equal(guided, cond)


def _adg_reference(x, cond, uncond, t, scale, clip=ADG_ANGLE_CLIP):
    x, cond, uncond = (a.double().numpy() for a in (x, cond, uncond))
    w = max(scale - 1.0, 0.0) + 1e-3
    out = np.empty_like(x)
    for b in range(x.shape[0]):
        for f in range(x.shape[1]):
            xc = x[b, f] - t * cond[b, f]
            xu = x[b, f] - t * uncond[b, f]
            cos = np.clip(np.dot(xc, xu) / np.linalg.norm(xc) / np.linalg.norm(xu), -1 + 1e-6, 1 - 1e-6)
            theta = np.arccos(cos)
            theta_new = np.clip(w * theta, -clip, clip)
            diff = xc - xu
            perp = diff - np.dot(diff, xu) / (np.dot(xu, xu) + 1e-8) * xu
            factor = np.sin(theta_new) / np.sin(theta) if np.sin(theta) > 1e-3 else w
            x0_new = np.cos(theta_new) * xc + factor * perp
            out[b, f] = (x[b, f] - x0_new) / t
    return out


@pytest.mark.parametrize(("t", "scale"), [(0.9, 3.0), (0.4, 7.0), (0.75, 1.5)])
def test_adg_matches_reference(t, scale):
    x, _ = _tensors(11)
    cond, uncond = _tensors(12)
    out = adg(x, cond, uncond, t, scale)
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), _adg_reference(x, cond, uncond, t, scale), rtol=1e-4, atol=1e-4)


def test_adg_clips_the_rotation_angle():
    x, _ = _tensors(21)
    cond, uncond = _tensors(22)
    t = 0.8
    out = adg(x, cond, uncond, t, 50.0)  # weight * theta far beyond the clip everywhere
    x0_new = (x - t * out).double()
    x0_cond = (x - t * cond).double()
    cos = torch.nn.functional.cosine_similarity(x0_new, x0_cond, dim=-1)
    # The new estimate is cos(clip) * x0_cond plus a part orthogonal to x0_uncond, so its angle to
    # x0_cond is bounded; with an unclipped weight of 49 it would swing far past pi/2.
    assert cos.min() > 0.0


def test_adg_without_disagreement_returns_cond():
    x, _ = _tensors(31)
    cond, _ = _tensors(32)
    # Upstream clamps cos to 1 - 1e-6, which leaves a residual angle of ~1.4e-3 rad: hence 1e-4.
    torch.testing.assert_close(adg(x, cond, cond.clone(), 0.6, 4.0), cond, rtol=1e-4, atol=2e-4)
