"""The diffusion loop on the closed-form Gaussian backend: updates, seeding, partial denoising,
guidance, progress and the output guard."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from gaussian_backend import GaussianBackend

from prefect_acestep.stages.backends.protocol import ConditionSpec
from prefect_acestep.stages.engine.guidance import apg
from prefect_acestep.stages.engine.loop import LoopRequest, StepInfo, run_loop
from prefect_acestep.stages.engine.schedules import shifted_linear, turbo_table
from prefect_acestep.stages.errors import DiffusionError, InvalidStageRequest

T2M = ConditionSpec(task="text2music", caption="warm jazz trio", bpm=96, keyscale="F major")


def request(**kw) -> LoopRequest:
    kw.setdefault("cond", T2M)
    kw.setdefault("seeds", [11])
    kw.setdefault("frames", 40)
    return LoopRequest(**kw)


def first_draws(seed: int, count: int, frames: int = 40) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn((frames, 64), generator=g) for _ in range(count)]


def test_turbo_run_records_its_schedule_and_calls():
    backend = GaussianBackend()
    result = run_loop(backend, request())
    assert result.schedule == turbo_table(3.0)
    assert (result.start_index, result.t_start, result.model_calls) == (0, 1.0, 8)
    assert (result.scheduler, result.shift, result.steps) == ("discrete", 3.0, 8)
    assert [c.t for c in backend.calls] == pytest.approx(turbo_table(3.0)[:-1])
    assert result.x0.shape == (1, 40, 64) and result.x0.dtype == torch.float32


def test_same_seed_is_identical_and_other_seeds_differ():
    a = run_loop(GaussianBackend(), request(seeds=[5, 6])).x0
    b = run_loop(GaussianBackend(), request(seeds=[5, 6])).x0
    c = run_loop(GaussianBackend(), request(seeds=[5, 7])).x0
    assert torch.equal(a, b)
    assert torch.equal(a[0], c[0]) and not torch.allclose(a[1], c[1])


@pytest.mark.parametrize("method", ["ode", "sde"])
def test_batch_item_equals_its_single_run(method):
    batch = run_loop(GaussianBackend(), request(seeds=[3, 4, 5], infer_method=method)).x0
    single = run_loop(GaussianBackend(), request(seeds=[4], infer_method=method)).x0
    assert torch.equal(batch[1], single[0])


def test_ode_steps_follow_euler_and_the_last_step_jumps_to_x0():
    backend = GaussianBackend()
    result = run_loop(backend, request(checkpoint_steps=(0, 1, 7)))
    s = result.schedule
    x0_state, x1_state, x7_state = (c.x_t for c in result.checkpoints)
    assert torch.equal(x0_state[0], first_draws(11, 1)[0])
    cond = backend.encode_condition(T2M, 1)
    ctx = backend.make_context(backend.silence_latent(40)[None], torch.ones(1, 40))
    v0 = backend.velocity(x0_state, torch.tensor([s[0]]), cond, ctx)
    torch.testing.assert_close(x1_state, x0_state - v0 * (s[0] - s[1]), rtol=0, atol=1e-6)
    v7 = backend.velocity(x7_state, torch.tensor([s[7]]), cond, ctx)
    torch.testing.assert_close(result.x0, x7_state - s[7] * v7, rtol=0, atol=1e-6)


def test_sde_renoises_to_the_next_level_with_the_seeded_generator():
    backend = GaussianBackend()
    result = run_loop(backend, request(infer_method="sde", checkpoint_steps=(0, 1, 2)))
    s = result.schedule
    draws = first_draws(11, 3)
    states = [c.x_t for c in result.checkpoints]
    cond = backend.encode_condition(T2M, 1)
    ctx = backend.make_context(backend.silence_latent(40)[None], torch.ones(1, 40))
    for k in (0, 1):
        v = backend.velocity(states[k], torch.tensor([s[k]]), cond, ctx)
        x0_hat = states[k] - s[k] * v
        expected = s[k + 1] * draws[k + 1] + (1 - s[k + 1]) * x0_hat
        torch.testing.assert_close(states[k + 1], expected, rtol=0, atol=1e-6)
    again = run_loop(GaussianBackend(), request(infer_method="sde")).x0
    assert torch.equal(result.x0, again)
    ode = run_loop(GaussianBackend(), request()).x0
    assert not torch.allclose(result.x0, ode)


def test_samples_follow_the_conditional_prior():
    """Real diffusion: many seeds reproduce the prior's mean, and the caption moves it."""
    backend = GaussianBackend()
    seeds = list(range(48))
    out = run_loop(backend, request(seeds=seeds, variant="turbo-shift1", steps=60)).x0
    mu = backend.prior_mean(
        backend.encode_condition(T2M, 1), backend.make_context(backend.silence_latent(40)[None], torch.ones(1, 40))
    )
    err = (out - mu).double()
    assert err.mean().abs() < 0.02
    assert abs(err.std().item() - backend.sigma) < 0.03
    other = dataclasses.replace(T2M, caption="distorted surf rock")
    moved = run_loop(backend, request(seeds=seeds, cond=other, variant="turbo-shift1", steps=60)).x0
    assert (moved.mean(0) - out.mean(0)).abs().mean() > 0.5


def test_partial_denoise_noises_init_to_exactly_the_schedule_level():
    backend = GaussianBackend()
    init = torch.randn(1, 40, 64, generator=torch.Generator().manual_seed(99))
    result = run_loop(backend, request(init=init, t_start=0.55, checkpoint_steps=(6,)))
    assert (result.start_index, result.t_start, result.model_calls) == (6, 0.5, 2)
    expected = 0.5 * first_draws(11, 1)[0] + 0.5 * init[0]
    torch.testing.assert_close(result.checkpoints[0].x_t[0], expected, rtol=0, atol=1e-7)
    assert backend.calls[0].t == 0.5


def test_partial_denoise_moves_less_than_a_full_run():
    init = run_loop(GaussianBackend(), request(seeds=[1])).x0
    dist = []
    for t in (0.3, 0.6, 0.9):
        out = run_loop(GaussianBackend(), request(seeds=[2], init=init, t_start=t)).x0
        dist.append((out - init).norm().item())
    assert dist[0] < dist[1] < dist[2]


def test_partial_denoise_errors():
    init = torch.zeros(1, 40, 64)
    with pytest.raises(InvalidStageRequest, match="no step left"):
        run_loop(GaussianBackend(), request(init=init, t_start=0.2))
    with pytest.raises(InvalidStageRequest, match="t_start"):
        run_loop(GaussianBackend(), request(t_start=0.5))
    with pytest.raises(InvalidStageRequest, match="init"):
        run_loop(GaussianBackend(), request(init=torch.zeros(1, 30, 64), t_start=0.5))
    with pytest.raises(InvalidStageRequest, match="float32"):
        run_loop(GaussianBackend(), request(init=init.double(), t_start=0.5))


def test_cfg_calls_both_branches_only_for_guided_variants():
    backend = GaussianBackend(variant="base")
    result = run_loop(backend, request(variant="base", steps=10, guidance_scale=3.0))
    assert result.model_calls == 20
    assert [c.null for c in backend.calls] == [False, True] * 10
    plain = GaussianBackend(variant="base")
    assert run_loop(plain, request(variant="base", steps=10)).model_calls == 10
    with pytest.raises(InvalidStageRequest, match="guidance_scale"):
        run_loop(GaussianBackend(), request(guidance_scale=3.0))
    with pytest.raises(InvalidStageRequest, match="use_adg"):
        run_loop(GaussianBackend(), request(use_adg=True))
    with pytest.raises(InvalidStageRequest, match="guidance_scale"):
        run_loop(GaussianBackend(), request(variant="base", guidance_scale=0.5))


def test_cfg_only_inside_the_interval():
    backend = GaussianBackend(variant="base")
    result = run_loop(backend, request(variant="base", steps=10, guidance_scale=3.0, cfg_interval=(0.35, 0.75)))
    levels = shifted_linear(10, 3.0)[:-1]  # base: shift 3 by default
    guided = [t for t in levels if 0.35 <= t <= 0.75]
    assert [c.t for c in backend.calls if c.null] == pytest.approx(guided)
    assert result.model_calls == 10 + len(guided)
    with pytest.raises(InvalidStageRequest, match="cfg_interval"):
        run_loop(GaussianBackend(), request(variant="base", guidance_scale=3.0, cfg_interval=(0.8, 0.2)))


def test_apg_momentum_spans_steps():
    """Replays the guided run by hand: the APG buffer carries from each guided step to the next."""
    backend = GaussianBackend(variant="base")
    result = run_loop(backend, request(variant="base", steps=6, guidance_scale=4.0, checkpoint_steps=(0,)))
    s = result.schedule
    cond = backend.encode_condition(T2M, 1)
    null = backend.null_condition(cond)
    ctx = backend.make_context(backend.silence_latent(40)[None], torch.ones(1, 40))
    x, running = result.checkpoints[0].x_t, None
    for k in range(6):
        t = torch.tensor([s[k]])
        v, running = apg(backend.velocity(x, t, cond, ctx), backend.velocity(x, t, null, ctx), 4.0, running)
        x = torch.add(x, v, alpha=-(s[k] - s[k + 1])) if k < 5 else torch.add(x, v, alpha=-s[k])
    assert torch.equal(result.x0, x)


def test_guidance_changes_the_result_and_adg_differs_from_apg():
    outs = [
        run_loop(GaussianBackend(variant="sft"), request(variant="sft", steps=12, **kw)).x0
        for kw in ({}, {"guidance_scale": 5.0}, {"guidance_scale": 5.0, "use_adg": True})
    ]
    assert not torch.allclose(outs[0], outs[1])
    assert not torch.allclose(outs[1], outs[2])
    assert all(torch.isfinite(o).all() for o in outs)


def test_progress_callback_every_step():
    seen: list[StepInfo] = []
    init = torch.randn(1, 40, 64)
    run_loop(GaussianBackend(), request(init=init, t_start=0.8, on_step=seen.append))
    s = turbo_table(3.0)
    assert [i.step for i in seen] == [4, 5, 6, 7]
    assert [i.t for i in seen] == s[4:8]
    assert [i.model_calls for i in seen] == [1, 2, 3, 4]
    assert {i.total_steps for i in seen} == {8}


class _TrainableBackend(GaussianBackend):
    """A backend whose velocity touches a parameter that requires grad (like an nn.Module's)."""

    def velocity(self, x_t, t, cond, context):
        weight = torch.ones((), requires_grad=True)
        return super().velocity(x_t, t, cond, context) * weight


def test_loop_builds_no_autograd_graph():
    result = run_loop(_TrainableBackend(), request(checkpoint_steps=(3,)))
    assert not result.x0.requires_grad and not result.checkpoints[0].x_t.requires_grad


class _BrokenBackend(GaussianBackend):
    """A model gone wrong: NaN velocities, or a dead noise source with zero velocity."""

    mode: str = "nan"

    def velocity(self, x_t, t, cond, context):
        super().velocity(x_t, t, cond, context)
        return torch.full_like(x_t, float("nan")) if self.mode == "nan" else torch.zeros_like(x_t)

    def noise(self, shape, generator):
        return torch.zeros(shape) if self.mode == "zero" else super().noise(shape, generator)


@pytest.mark.parametrize(("mode", "match"), [("nan", "NaN/Inf"), ("zero", "all-zero")])
def test_broken_output_is_a_diffusion_error(mode, match):
    backend = _BrokenBackend()
    backend.mode = mode
    with pytest.raises(DiffusionError, match=match):
        run_loop(backend, request(seeds=[1, 2]))


def test_request_validation():
    with pytest.raises(InvalidStageRequest, match="seeds"):
        run_loop(GaussianBackend(), request(seeds=[]))
    with pytest.raises(InvalidStageRequest, match="seeds"):
        run_loop(GaussianBackend(), request(seeds=[-1]))
    with pytest.raises(InvalidStageRequest, match="frames"):
        run_loop(GaussianBackend(), request(frames=0))
    with pytest.raises(InvalidStageRequest, match="infer_method"):
        run_loop(GaussianBackend(), request(infer_method="heun"))
    with pytest.raises(InvalidStageRequest, match="variant"):
        run_loop(GaussianBackend(), request(variant="v2"))
    with pytest.raises(InvalidStageRequest, match="checkpoint_steps"):
        run_loop(GaussianBackend(), request(checkpoint_steps=(8,)))
    with pytest.raises(InvalidStageRequest, match="checkpoint_steps"):
        run_loop(GaussianBackend(), request(init=torch.zeros(1, 40, 64), t_start=0.5, checkpoint_steps=(2,)))
