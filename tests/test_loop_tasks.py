"""Task contexts through the loop: cover's VQ conditioning and switch, repaint/lego windows with the
source kept outside, outpainting, and the tasks that take the whole source."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from gaussian_backend import Call, GaussianBackend

from prefect_acestep.stages.backends.protocol import ConditionSpec
from prefect_acestep.stages.engine.context import output_frames, window_geometry
from prefect_acestep.stages.engine.loop import LoopRequest, run_loop
from prefect_acestep.stages.engine.repaint import RepaintSeams
from prefect_acestep.stages.errors import InvalidStageRequest

CAPTION = dict(caption="bright synth pop", bpm=120, keyscale="A minor")
COVER = ConditionSpec(task="cover", **CAPTION)
REPAINT = ConditionSpec(task="repaint", **CAPTION)
STRICT = RepaintSeams("strict")
"""Exact source outside the window (tests/test_repaint_seams.py covers upstream's default seams)."""
LEGO = ConditionSpec(task="lego", track_names=("bass",), **CAPTION)


def source(frames: int = 100, seed: int = 3) -> torch.Tensor:
    return torch.randn(1, frames, 64, generator=torch.Generator().manual_seed(seed))


def request(cond: ConditionSpec, **kw) -> LoopRequest:
    kw.setdefault("seeds", [21])
    kw.setdefault("frames", 100)
    return LoopRequest(cond=cond, **kw)


def regimes(backend: GaussianBackend) -> list[object]:
    """The event log with each call reduced to its task, and resets kept."""
    return [e.task if isinstance(e, Call) else e for e in backend.events]


def test_cover_uses_vq_context_then_switches_to_text2music_with_a_reset():
    backend = GaussianBackend()
    src = source()
    run_loop(backend, request(COVER, source=src, cover_strength=0.5))
    assert regimes(backend) == ["reset"] + ["cover"] * 4 + ["reset"] + ["text2music"] * 4
    vq = backend.detokenize(backend.tokenize(src), 100)
    calls = backend.calls
    assert all(torch.equal(c.context.src, vq) for c in calls[:4])
    assert not torch.equal(vq, src)
    silence = backend.silence_latent(100)[None]
    assert all(torch.equal(c.context.src, silence) for c in calls[4:])
    assert all(torch.equal(c.context.mask, torch.ones(1, 100)) for c in calls)


@pytest.mark.parametrize(("strength", "cover_calls"), [(1.0, 8), (0.0, 0), (0.99, 7), (0.3, 2)])
def test_cover_switch_step_is_int_of_n_times_strength(strength, cover_calls):
    backend = GaussianBackend()
    run_loop(backend, request(COVER, source=source(), cover_strength=strength))
    tasks = [c.task for c in backend.calls]
    assert tasks == ["cover"] * cover_calls + ["text2music"] * (8 - cover_calls)
    assert backend.events.count("reset") == (2 if 0 < cover_calls < 8 else 1)


def test_cover_switch_is_an_absolute_step_in_partial_runs():
    backend = GaussianBackend()
    init = source(seed=9)
    result = run_loop(backend, request(COVER, source=source(), cover_strength=0.5, init=init, t_start=0.92))
    assert result.start_index == 2
    assert regimes(backend) == ["reset", "cover", "cover", "reset"] + ["text2music"] * 4


def test_cover_follows_the_source_structure_more_with_strength():
    src = source(seed=5) * 2.0
    closeness = []
    for strength in (0.0, 0.5, 1.0):
        out = run_loop(GaussianBackend(), request(COVER, source=src, cover_strength=strength, seeds=list(range(8)))).x0
        closeness.append(torch.nn.functional.cosine_similarity(out.flatten(1), src.flatten(1)).mean().item())
    assert closeness[0] < closeness[1] < closeness[2]


def test_cover_with_cfg_uses_the_null_of_each_regime():
    backend = GaussianBackend(variant="base")
    run_loop(backend, request(COVER, variant="base", steps=4, guidance_scale=3.0, source=source(), cover_strength=0.5))
    assert [(c.task, c.null) for c in backend.calls] == [("cover", False), ("cover", True)] * 2 + [
        ("text2music", False),
        ("text2music", True),
    ] * 2


def test_repaint_keeps_the_source_outside_the_window_exactly():
    backend = GaussianBackend()
    src = source()
    result = run_loop(backend, request(REPAINT, source=src, repaint_window=(1.0, 2.0), checkpoint_steps=(2, 5), repaint=STRICT))
    inside = slice(25, 50)
    outside = torch.ones(100, dtype=torch.bool)
    outside[inside] = False
    assert torch.equal(result.x0[:, outside], src[:, outside])
    assert not torch.allclose(result.x0[:, inside], src[:, inside])
    ctx = backend.calls[0].context
    assert torch.equal(ctx.mask[0], (~outside).float())
    assert torch.equal(ctx.src[:, inside], backend.silence_latent(100)[None, inside])
    assert torch.equal(ctx.src[:, outside], src[:, outside])
    # Every step's x_t outside the window is the source renoised with one fixed noise.
    implied = [(c.x_t[:, outside] - (1 - c.t) * src[:, outside]) / c.t for c in result.checkpoints]
    torch.testing.assert_close(implied[0], implied[1], rtol=0, atol=1e-5)


def test_repaint_is_reproducible_and_seed_dependent_inside():
    src = source()
    a = run_loop(GaussianBackend(), request(REPAINT, source=src, repaint_window=(0.5, 1.5), seeds=[1, 2])).x0
    b = run_loop(GaussianBackend(), request(REPAINT, source=src, repaint_window=(0.5, 1.5), seeds=[1, 2])).x0
    assert torch.equal(a, b)
    assert not torch.allclose(a[0, 12:38], a[1, 12:38])


def test_lego_keeps_the_full_source_as_context():
    backend = GaussianBackend(variant="base")
    src = source()
    result = run_loop(backend, request(LEGO, variant="base", steps=6, source=src, repaint_window=(0.0, 2.0), repaint=STRICT))
    ctx = backend.calls[0].context
    assert torch.equal(ctx.src, src)
    assert torch.equal(ctx.mask[0, :50], torch.ones(50)) and torch.equal(ctx.mask[0, 50:], torch.zeros(50))
    assert torch.equal(result.x0[:, 50:], src[:, 50:])
    whole = GaussianBackend(variant="base")
    run_loop(whole, request(LEGO, variant="base", steps=6, source=src))
    assert torch.equal(whole.calls[0].context.mask, torch.ones(1, 100))


def test_outpainting_left_and_right():
    src = source(50)
    geo = window_geometry(50, (-1.0, 1.0))
    assert (geo.pad_left, geo.pad_right, geo.start, geo.end, geo.frames) == (25, 0, 0, 50, 75)
    left = run_loop(GaussianBackend(), request(REPAINT, source=src, frames=75, repaint_window=(-1.0, 1.0), repaint=STRICT)).x0
    assert torch.equal(left[:, 50:], src[:, 25:])
    assert output_frames("repaint", 50, (1.5, 3.0)) == 75
    backend = GaussianBackend()
    right = run_loop(backend, request(REPAINT, source=src, frames=75, repaint_window=(1.5, 3.0), repaint=STRICT)).x0
    assert torch.equal(right[:, :37], src[:, :37])
    ctx = backend.calls[0].context
    assert torch.equal(ctx.mask[0, 37:], torch.ones(38)) and ctx.src.shape == (1, 75, 64)
    with pytest.raises(InvalidStageRequest, match="frames"):
        run_loop(GaussianBackend(), request(REPAINT, source=src, frames=50, repaint_window=(1.5, 3.0)))


def test_window_covers_every_touched_frame():
    assert (window_geometry(100, (0.5, 1.01)).start, window_geometry(100, (0.5, 1.01)).end) == (12, 26)
    assert (window_geometry(100, (0.1, 0.2)).start, window_geometry(100, (0.1, 0.2)).end) == (2, 5)
    with pytest.raises(InvalidStageRequest, match="repaint_window"):
        window_geometry(100, (2.0, 2.0))


@pytest.mark.parametrize("task", ["extract", "complete"])
def test_extract_and_complete_take_the_whole_source(task):
    backend = GaussianBackend(variant="base")
    src = source()
    spec = ConditionSpec(task=task, track_names=("drums",), **CAPTION)
    run_loop(backend, request(spec, variant="base", steps=5, source=src))
    ctx = backend.calls[0].context
    assert torch.equal(ctx.src, src) and torch.equal(ctx.mask, torch.ones(1, 100))
    with pytest.raises(InvalidStageRequest, match="task"):
        run_loop(GaussianBackend(), request(spec, source=src))  # turbo has no extract/complete


def test_source_batch_one_is_shared_by_the_batch():
    src = source()
    out = run_loop(GaussianBackend(), request(REPAINT, seeds=[1, 2, 3], source=src, repaint_window=(0.0, 1.0), repaint=STRICT)).x0
    assert all(torch.equal(out[i, 25:], src[0, 25:]) for i in range(3))


def test_cover_source_batch_one_is_shared_by_the_batch():
    backend = GaussianBackend()
    src = source()
    out = run_loop(backend, request(COVER, seeds=[1, 2], source=src)).x0
    vq = backend.detokenize(backend.tokenize(src), 100)
    assert torch.equal(backend.calls[0].context.src, vq.expand(2, -1, -1))
    assert out.shape == (2, 100, 64) and not torch.allclose(out[0], out[1])


def test_task_field_errors():
    src = source()
    cases = [
        (request(COVER), "source"),
        (request(ConditionSpec(task="text2music"), source=src), "source"),
        (request(REPAINT, source=src), "repaint_window"),
        (request(COVER, source=src, repaint_window=(0.0, 1.0)), "repaint_window"),
        (request(COVER, source=src, cover_strength=1.5), "cover_strength"),
        (request(REPAINT, source=src, repaint_window=(0.0, 1.0), cover_strength=0.5), "cover_strength"),
        (request(COVER, source=src, frames=90), "frames"),
        (request(COVER, source=src[:, :, :32]), "source"),
        (request(COVER, source=torch.randn(2, 100, 64), seeds=[1, 2, 3]), "source"),
    ]
    for req, field in cases:
        with pytest.raises(InvalidStageRequest, match=field):
            run_loop(GaussianBackend(), req)


def test_text2music_with_other_captions_is_plain_generation():
    backend = GaussianBackend()
    run_loop(backend, request(dataclasses.replace(COVER, task="text2music")))
    assert regimes(backend) == ["reset"] + ["text2music"] * 8
