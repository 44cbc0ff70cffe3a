"""Checkpoints and exact resume: bit-identical continuation at N - K model calls per branch, and
the rules for resuming with different parameters."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from gaussian_backend import GaussianBackend

from prefect_acestep.stages.backends.protocol import ConditionSpec
from prefect_acestep.stages.engine.loop import LoopRequest, LoopState, run_loop
from prefect_acestep.stages.engine.schedules import turbo_table
from prefect_acestep.stages.errors import InvalidStageRequest

CAPTION = dict(caption="lofi piano", bpm=80, keyscale="D minor")
T2M = ConditionSpec(task="text2music", **CAPTION)
COVER = ConditionSpec(task="cover", **CAPTION)
SOURCE = torch.randn(2, 60, 64, generator=torch.Generator().manual_seed(4))


def request(**kw) -> LoopRequest:
    kw.setdefault("cond", T2M)
    kw.setdefault("seeds", [7, 8])
    kw.setdefault("frames", 60)
    return LoopRequest(**kw)


GUIDED = dict(variant="base", steps=10, guidance_scale=3.5)
UNGUIDED = dict(variant="turbo")


@pytest.mark.parametrize("method", ["ode", "sde"])
@pytest.mark.parametrize("guidance", ["unguided", "guided"])
@pytest.mark.parametrize("cover", [None, "switch_before_k", "switch_after_k"])
def test_resume_with_identical_params_is_bit_identical(method, guidance, cover):
    params = dict(GUIDED if guidance == "guided" else UNGUIDED, infer_method=method)
    n = params.get("steps", 8)
    k = 5 if n == 10 else 4
    if cover is not None:
        switch = k - 2 if cover == "switch_before_k" else k + 2
        params.update(cond=COVER, source=SOURCE, cover_strength=switch / n)
    full_backend = GaussianBackend()
    full = run_loop(full_backend, request(checkpoint_steps=(k,), **params))
    state = full.checkpoints[0]
    assert (state.step, state.t, state.steps, state.schedule) == (k, full.schedule[k], n, full.schedule)
    assert (state.momentum is not None) == (guidance == "guided")

    backend = GaussianBackend(record_inputs=True)
    resumed = run_loop(backend, request(resume=state, **params))
    assert torch.equal(resumed.x0, full.x0)
    assert (resumed.start_index, resumed.t_start, resumed.schedule) == (k, state.t, full.schedule)
    cond_calls = [c for c in backend.calls if not c.null]
    assert len(cond_calls) == n - k
    assert len([c for c in backend.calls if c.null]) == (n - k if guidance == "guided" else 0)
    assert resumed.model_calls == len(backend.calls)
    assert torch.equal(backend.calls[0].x_t, state.x_t)  # no renoise
    if cover is not None:
        expected = ["cover"] * max(0, switch - k) + ["text2music"] * (n - max(switch, k))
        assert [c.task for c in cond_calls] == expected


def test_several_checkpoints_in_order_and_chained_resume():
    full = run_loop(GaussianBackend(), request(infer_method="sde", checkpoint_steps=(6, 2, 4)))
    assert [c.step for c in full.checkpoints] == [2, 4, 6]
    first = run_loop(GaussianBackend(), request(infer_method="sde", resume=full.checkpoints[0], checkpoint_steps=(4,)))
    assert torch.equal(first.checkpoints[0].x_t, full.checkpoints[1].x_t)
    second = run_loop(GaussianBackend(), request(infer_method="sde", resume=first.checkpoints[0]))
    assert torch.equal(second.x0, full.x0)


def test_checkpoint_at_the_start_is_the_initial_noise_and_resumes_exactly():
    full = run_loop(GaussianBackend(), request(infer_method="sde", checkpoint_steps=(0,)))
    state = full.checkpoints[0]
    assert state.t == 1.0
    resumed = run_loop(GaussianBackend(), request(infer_method="sde", resume=state))
    assert torch.equal(resumed.x0, full.x0) and resumed.model_calls == 8


def test_checkpoint_of_a_partial_run_resumes_exactly():
    init = torch.randn(2, 60, 64)
    full = run_loop(GaussianBackend(), request(init=init, t_start=0.8, checkpoint_steps=(6,), infer_method="sde"))
    resumed = run_loop(GaussianBackend(), request(resume=full.checkpoints[0], infer_method="sde"))
    assert torch.equal(resumed.x0, full.x0) and resumed.model_calls == 2


def test_resume_keeps_the_guidance_momentum():
    full = run_loop(GaussianBackend(), request(checkpoint_steps=(5,), **GUIDED))
    state = full.checkpoints[0]
    forgotten = dataclasses.replace(state, momentum=None)
    without = run_loop(GaussianBackend(), request(resume=forgotten, **GUIDED)).x0
    assert not torch.equal(without, full.x0)


def test_resume_with_other_seed_sampler_or_guidance():
    full = run_loop(GaussianBackend(), request(infer_method="sde", checkpoint_steps=(3,)))
    state = full.checkpoints[0]
    same = run_loop(GaussianBackend(), request(infer_method="sde", resume=state)).x0
    reseeded = run_loop(GaussianBackend(), request(infer_method="sde", resume=state, seeds=[7, 99])).x0
    assert torch.equal(reseeded[0], same[0]) and not torch.allclose(reseeded[1], same[1])
    again = run_loop(GaussianBackend(), request(infer_method="sde", resume=state, seeds=[7, 99])).x0
    assert torch.equal(again, reseeded)
    ode = run_loop(GaussianBackend(), request(infer_method="ode", resume=state))
    assert ode.model_calls == 5 and not torch.allclose(ode.x0, same)

    guided = run_loop(GaussianBackend(), request(checkpoint_steps=(4,), **GUIDED)).checkpoints[0]
    stronger = run_loop(GaussianBackend(), request(resume=guided, **dict(GUIDED, guidance_scale=6.0)))
    adg = run_loop(GaussianBackend(), request(resume=guided, use_adg=True, **GUIDED))
    assert stronger.model_calls == adg.model_calls == 12
    assert not torch.allclose(stronger.x0, adg.x0)


def test_resume_without_schedule_fields_inherits_the_checkpoint_schedule():
    full = run_loop(GaussianBackend(), request(steps=12, shift=2.5, checkpoint_steps=(7,)))
    state = full.checkpoints[0]
    assert (state.scheduler, state.shift, state.steps) == ("linear", 2.5, 12)
    resumed = run_loop(GaussianBackend(), request(resume=state))
    assert torch.equal(resumed.x0, full.x0) and resumed.model_calls == 5
    assert (resumed.schedule, resumed.scheduler, resumed.shift) == (full.schedule, "linear", 2.5)
    given = [1.0, 0.7, 0.4, 0.0]
    custom = run_loop(GaussianBackend(), request(variant="sft", custom_timesteps=given, checkpoint_steps=(1,)))
    again = run_loop(GaussianBackend(), request(variant="sft", resume=custom.checkpoints[0]))
    assert torch.equal(again.x0, custom.x0) and again.scheduler == "custom" and again.shift is None
    # On another variant the request's own defaults apply (turbo's 8 discrete steps here).
    other = run_loop(GaussianBackend(), request(variant="turbo-shift3", resume=state))
    assert other.steps == 9 and other.schedule[other.start_index] == state.t


def test_resume_with_another_shift_continues_from_the_checkpoint_level():
    full = run_loop(GaussianBackend(), request(checkpoint_steps=(3,)))
    state = full.checkpoints[0]
    backend = GaussianBackend(record_inputs=True)
    other = run_loop(backend, request(resume=state, shift=2.0))
    shift2 = turbo_table(2.0)
    assert other.schedule == shift2[:3] + [state.t] + shift2[3:]
    assert (other.start_index, other.t_start, other.model_calls) == (3, state.t, 6)
    assert [c.t for c in backend.calls] == pytest.approx([state.t] + shift2[3:-1])
    assert torch.equal(backend.calls[0].x_t, state.x_t)
    # A checkpoint taken on that schedule resumes exactly on it again.
    chained = run_loop(GaussianBackend(), request(resume=state, shift=2.0, checkpoint_steps=(5,)))
    again = run_loop(GaussianBackend(), request(resume=chained.checkpoints[0], shift=2.0))
    assert torch.equal(again.x0, chained.x0)


def test_resume_on_a_schedule_holding_the_level_needs_no_insertion():
    full = run_loop(GaussianBackend(), request(checkpoint_steps=(4,)))  # t = 0.75, also on shift 1
    other = run_loop(GaussianBackend(), request(resume=full.checkpoints[0], shift=1.0))
    assert other.schedule == turbo_table(1.0)
    assert (other.start_index, other.model_calls) == (2, 6)


def test_resume_t_start_must_agree_with_the_checkpoint():
    state = run_loop(GaussianBackend(), request(checkpoint_steps=(3,))).checkpoints[0]
    agreed = run_loop(GaussianBackend(), request(resume=state, t_start=state.t))
    assert agreed.start_index == 3
    with pytest.raises(InvalidStageRequest, match="t_start"):
        run_loop(GaussianBackend(), request(resume=state, t_start=0.5))
    with pytest.raises(InvalidStageRequest, match="t_start"):
        run_loop(GaussianBackend(), request(resume=state, t_start=1.0))


def test_resume_errors():
    state = run_loop(GaussianBackend(), request(checkpoint_steps=(3,))).checkpoints[0]
    with pytest.raises(InvalidStageRequest, match="init"):
        run_loop(GaussianBackend(), request(resume=state, init=state.x_t))
    with pytest.raises(InvalidStageRequest, match="resume"):
        run_loop(GaussianBackend(), request(resume=state, seeds=[7]))
    with pytest.raises(InvalidStageRequest, match="resume"):
        run_loop(GaussianBackend(), request(resume=state, frames=50))
    broken: LoopState = dataclasses.replace(state, t=0.5)
    with pytest.raises(InvalidStageRequest, match="resume"):
        run_loop(GaussianBackend(), request(resume=broken))
    with pytest.raises(InvalidStageRequest, match="checkpoint_steps"):
        run_loop(GaussianBackend(), request(resume=state, checkpoint_steps=(2,)))
    foreign = dataclasses.replace(state, generator_states=[torch.zeros(16, dtype=torch.uint8)] * 2)
    with pytest.raises(InvalidStageRequest, match="generator state"):
        run_loop(GaussianBackend(), request(resume=foreign))
