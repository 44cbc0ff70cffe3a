"""The embedded model's denoiser is the exact posterior mean of its prior.

Checked two independent ways: against brute-force enumeration of every component of the product
mixture (small pieces, where that is feasible), and against Tweedie's formula, i.e. the gradient
of the exact log marginal density (any size)."""

from __future__ import annotations

import math

import pytest
import torch

from prefect_acestep.stages.backends.embedded import EmbeddedBackend
from prefect_acestep.stages.backends.embedded.condition import build_condition, build_prior
from prefect_acestep.stages.backends.embedded.observation import observe
from prefect_acestep.stages.backends.embedded.prior import Observation, ScenePrior
from prefect_acestep.stages.backends.embedded.vq import cover_reading
from prefect_acestep.stages.backends.protocol import ConditionSpec
from prefect_acestep.stages.engine.loop import LoopRequest, run_loop
from prefect_acestep.stages.errors import InvalidStageRequest

CAPTION = "bass, flute and drums"


def _prior_and_observation(spec: ConditionSpec, src: torch.Tensor, mask: torch.Tensor, blend: float = 0.0):
    cond = build_condition(spec, src.shape[0], blend)
    observation, style = observe(cond, src, mask)
    reading = cover_reading(EmbeddedBackend().tokenize(src)) if spec.task == "cover" else None
    return build_prior(cond, style, src.shape[1], reading), observation


def _brute_force(prior: ScenePrior, x_t: torch.Tensor, t: float, obs: Observation, item: int):
    """Log density and posterior mean of one batch item from every component of the mixture,
    built explicitly: each component's mean is the sum of one option per (factor, segment)."""
    frames = x_t.shape[1]
    a, sigma = 1.0 - t, prior.sigma
    var = a * a * sigma**2 + t * t
    free = obs.free[item].double()
    base, fixed = obs.base[item].double(), obs.fixed[item].double()
    evidence = torch.zeros_like(free) if obs.evidence is None else obs.evidence[item].double()
    x = x_t[item].double()
    all_weights, all_means = [], []
    for scene in prior.scenes:
        for tonic, scene_weight in zip(scene.tonics, scene.log_weights):
            means = torch.zeros(1, frames, 64, dtype=torch.float64)
            weights = torch.full((1,), scene_weight, dtype=torch.float64)
            for factor in scene.factors:
                channels = factor.channels
                if factor.transposes:
                    channels = 12 * (channels // 12) + (channels % 12 + tonic) % 12
                patterns = factor.patterns[min(item, factor.patterns.shape[0] - 1)].double()
                for s in range(factor.segments):
                    rows = (factor.segment == s).nonzero().flatten()
                    allowed = torch.isfinite(factor.log_weights[s]).nonzero().flatten()
                    options = torch.zeros(len(allowed), frames, 64, dtype=torch.float64)
                    options[:, rows[:, None], channels[None, :]] = patterns[allowed][:, rows]
                    means = (means[:, None] + options[None]).reshape(-1, frames, 64)
                    weights = (weights[:, None] + factor.log_weights[s, allowed][None]).reshape(-1)
            all_means.append(means)
            all_weights.append(weights)
    mu = torch.cat(all_means)  # [components, T, 64]
    log_w = torch.cat(all_weights) - 0.5 * (((fixed - mu) ** 2) * evidence).sum(dim=(1, 2)) / sigma**2
    log_w = log_w - torch.logsumexp(log_w, 0)  # the prior conditioned on the evidence
    y = x - a * base
    log_lik = (-0.5 * ((y - a * mu) ** 2 / var + math.log(2 * math.pi * var)) * free).sum(dim=(1, 2))
    kept = (-0.5 * ((x - a * fixed) ** 2 / t**2 + math.log(2 * math.pi * t**2)) * (1 - free)).sum()
    log_density = torch.logsumexp(log_w + log_lik, 0) + kept
    resp = torch.softmax(log_w + log_lik, 0)
    shrink = a * sigma**2 / var
    generated = base + (resp[:, None, None] * (mu + shrink * (y - a * mu))).sum(0)
    return log_density, torch.where(free.bool(), generated, fixed)


@pytest.fixture(scope="module")
def source() -> torch.Tensor:
    spec = ConditionSpec(task="text2music", caption=CAPTION, keyscale="A minor", bpm=75, timesignature="4")
    return run_loop(EmbeddedBackend(), LoopRequest(cond=spec, seeds=[3, 4], frames=20)).x0


def _check_against_brute_force(prior: ScenePrior, obs: Observation, frames: int, start: torch.Tensor) -> None:
    g = torch.Generator().manual_seed(0)
    for t in (0.8, 0.3):
        noise = torch.randn(start.shape, generator=g, dtype=torch.float64)
        x_t = t * noise + (1 - t) * start.double()
        t_vec = torch.full((x_t.shape[0],), t, dtype=torch.float64)
        mean = prior.posterior_mean(x_t, t_vec, obs)
        density = prior.log_density(x_t, t_vec, obs)
        for item in range(x_t.shape[0]):
            ref_density, ref_mean = _brute_force(prior, x_t, t, obs, item)
            assert density[item].item() == pytest.approx(ref_density.item(), rel=1e-9, abs=1e-6)
            assert torch.allclose(mean[item], ref_mean, atol=1e-9), (t, item)


def test_text2music_posterior_mean_is_exact_over_every_key(source: torch.Tensor) -> None:
    """No keyscale: 24 keys (scenes and tonic rotations); a short piece keeps enumeration small."""
    spec = ConditionSpec(task="text2music", caption="bass and drums", bpm=140, timesignature="4")
    frames = 8
    src, mask = torch.zeros(2, frames, 64), torch.ones(2, frames)
    prior, obs = _prior_and_observation(spec, src, mask)
    assert sum(len(s.tonics) for s in prior.scenes) == 24
    _check_against_brute_force(prior, obs, frames, source[:, :frames])


def test_repaint_posterior_mean_is_exact_with_the_source_as_evidence(source: torch.Tensor) -> None:
    spec = ConditionSpec(task="repaint", caption=CAPTION, keyscale="A minor", bpm=75, timesignature="4")
    mask = torch.zeros(2, 20)
    mask[:, 12:] = 1
    src = source.clone()
    src[:, 12:] = 0
    prior, obs = _prior_and_observation(spec, src, mask)
    assert obs.evidence is not None and obs.evidence.any() and not obs.free[:, :12].any()
    _check_against_brute_force(prior, obs, 20, source)


def test_lego_posterior_mean_is_exact_on_top_of_the_source(source: torch.Tensor) -> None:
    spec = ConditionSpec(
        task="lego", caption=CAPTION, keyscale="A minor", bpm=75, timesignature="4", track_names=("guitar",)
    )
    mask = torch.zeros(2, 20)
    mask[:, 5:15] = 1
    prior, obs = _prior_and_observation(spec, source, mask)
    assert obs.free.any(dim=(0, 1)).nonzero().flatten().tolist() == list(range(12, 24))
    _check_against_brute_force(prior, obs, 20, source)


@pytest.mark.parametrize("task", ["text2music", "cover", "complete"])
def test_posterior_mean_is_the_tweedie_score_of_the_exact_density(source: torch.Tensor, task: str) -> None:
    """E[x0 | x_t] = (x_t + t^2 grad log p_t(x_t)) / (1 - t), for the guided variants' blended
    prior over every scene (too many components to enumerate)."""
    spec = ConditionSpec(task=task, caption=CAPTION, keyscale="E major", duration_s=0.6,
                         track_names=("keyboard",) if task == "complete" else ())
    frames = source.shape[1]
    mask = torch.ones(2, frames)
    src = torch.zeros_like(source) if task == "text2music" else source
    prior, obs = _prior_and_observation(spec, src, mask, blend=0.35)
    g = torch.Generator().manual_seed(1)
    for t in (0.95, 0.6, 0.1):
        x_t = (t * torch.randn(source.shape, generator=g, dtype=torch.float64) + (1 - t) * source.double())
        x_t.requires_grad_(True)
        t_vec = torch.full((2,), t, dtype=torch.float64)
        (score,) = torch.autograd.grad(prior.log_density(x_t, t_vec, obs).sum(), x_t)
        tweedie = (x_t.detach() + t * t * score) / (1 - t)
        assert torch.allclose(prior.posterior_mean(x_t.detach(), t_vec, obs), tweedie, atol=1e-8), t


def test_velocity_is_the_flow_of_the_posterior_mean_and_is_batch_consistent() -> None:
    backend = EmbeddedBackend("base")
    spec = ConditionSpec(task="text2music", caption="pop song", keyscale="F minor", bpm=96)
    frames = 40
    x = torch.randn(3, frames, 64, generator=torch.Generator().manual_seed(2))
    ctx3 = backend.make_context(torch.zeros(3, frames, 64), torch.ones(3, frames))
    ctx1 = backend.make_context(torch.zeros(1, frames, 64), torch.ones(1, frames))
    cond3, cond1 = backend.encode_condition(spec, 3), backend.encode_condition(spec, 1)
    for t in (1.0, 0.7, 0.03):
        v = backend.velocity(x, torch.full((3,), t), cond3, ctx3)
        assert v.shape == x.shape and v.dtype == torch.float32 and torch.isfinite(v).all()
        assert torch.allclose(backend.velocity(x[1:2], torch.tensor([t]), cond1, ctx1), v[1:2], atol=1e-5)
        assert torch.equal(backend.velocity(x, torch.full((3,), t), cond3, ctx3), v)
        null = backend.velocity(x, torch.full((3,), t), backend.null_condition(cond3), ctx3)
        if t > 0.5:  # near the data both branches see the same arrangement; while it is noise they differ
            assert (null - v).abs().max() > 0.1


def test_extract_is_the_source_restricted_to_the_track(source: torch.Tensor) -> None:
    backend = EmbeddedBackend("base")
    cond = backend.encode_condition(ConditionSpec(task="extract", track_names=("bass",)), 2)
    ctx = backend.make_context(source, torch.ones(2, 20))
    x_t = torch.randn(2, 20, 64, generator=torch.Generator().manual_seed(5))
    t = 0.4
    x0 = x_t - t * backend.velocity(x_t, torch.full((2,), t), cond, ctx)
    assert torch.allclose(x0[..., :12], source[..., :12], atol=1e-5)
    assert x0[..., 12:].abs().max() < 1e-5


@pytest.mark.parametrize(
    ("variant", "spec", "match"),
    [
        ("turbo", ConditionSpec(task="extract", track_names=("bass",)), "not supported by variant 'turbo'"),
        ("sft", ConditionSpec(task="lego", track_names=("bass",)), "not supported by variant 'sft'"),
        ("base", ConditionSpec(task="extract"), "needs track_names"),
        ("base", ConditionSpec(task="lego", track_names=("kazoo",)), "unknown track names"),
        ("turbo", ConditionSpec(task="text2music", keyscale="H major"), "keyscale 'H major'"),
        ("turbo", ConditionSpec(task="text2music", timesignature="5/4"), "timesignature '5/4'"),
        ("turbo", ConditionSpec(task="text2music", bpm=400), "bpm 400"),
        ("turbo", ConditionSpec(task="text2music", duration_s=0.0), "duration_s"),
    ],
)
def test_bad_conditions_are_typed_errors_naming_the_field(variant: str, spec: ConditionSpec, match: str) -> None:
    backend = EmbeddedBackend(variant)
    with pytest.raises(InvalidStageRequest, match=match):
        cond = backend.encode_condition(spec, 1)
        backend.velocity(torch.zeros(1, 10, 64), torch.tensor([0.5]), cond,
                         backend.make_context(torch.zeros(1, 10, 64), torch.ones(1, 10)))


def test_bad_calls_are_typed_errors() -> None:
    with pytest.raises(InvalidStageRequest, match="unknown embedded variant 'large'"):
        EmbeddedBackend("large")
    backend = EmbeddedBackend()
    cond = backend.encode_condition(ConditionSpec(task="text2music"), 1)
    ctx = backend.make_context(torch.zeros(1, 10, 64), torch.ones(1, 10))
    with pytest.raises(InvalidStageRequest, match="0 < t <= 1"):
        backend.velocity(torch.zeros(1, 10, 64), torch.tensor([0.0]), cond, ctx)
    with pytest.raises(InvalidStageRequest, match="x_t must be"):
        backend.velocity(torch.zeros(2, 10, 64), torch.tensor([0.5, 0.5]), cond, ctx)
    with pytest.raises(InvalidStageRequest, match="encode_condition"):
        backend.velocity(torch.zeros(1, 10, 64), torch.tensor([0.5]), "a caption", ctx)
    with pytest.raises(InvalidStageRequest, match="chunk mask"):
        backend.make_context(torch.zeros(1, 10, 64), torch.ones(1, 9))
    with pytest.raises(InvalidStageRequest, match="batch_size"):
        backend.encode_condition(ConditionSpec(task="text2music"), 0)
