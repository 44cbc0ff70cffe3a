"""Repaint and lego seams as upstream makes them by default: the source held for the first part of
the steps, blended back over a few frames at each window edge, its waveform spliced back with a
short crossfade; ``strict`` kept as an option. Loop-level on the Gaussian test model, then on
decoded audio through the stage runner and the decoder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from gaussian_backend import GaussianBackend

from prefect_acestep.stages.audio import load_audio, read_audio_metadata
from prefect_acestep.stages.backends.embedded import EmbeddedBackend
from prefect_acestep.stages.backends.protocol import ConditionSpec
from prefect_acestep.stages.decode import decode_latent, existing_audio
from prefect_acestep.stages.engine.loop import LoopRequest, run_loop
from prefect_acestep.stages.engine.repaint import RepaintSeams, splice_waveform, window_weights
from prefect_acestep.stages.geometry import HOP_LENGTH, SAMPLE_RATE
from prefect_acestep.stages.latent_audio import latent_audio
from prefect_acestep.stages.params import StageParams
from prefect_acestep.stages.runner import run_stage
from prefect_acestep.stages.store import LatentStore

REPAINT = ConditionSpec(task="repaint", caption="bright synth pop", bpm=120, keyscale="A minor")


@pytest.mark.parametrize(
    ("mode", "strength", "expected"),
    [
        ("balanced", 0.5, (4, 12, 0.025, True)),  # upstream's default: round(12.5) is 12
        ("balanced", 0.2, (6, 20, 0.04, True)),
        ("balanced", 1.0, (0, 0, 0.0, True)),  # pure diffusion, still a (hard) splice
        ("conservative", 0.9, (8, 25, 0.05, True)),
        ("aggressive", 0.1, (0, 0, 0.0, False)),
        ("strict", 0.5, (8, 0, 0.0, False)),
    ],
)
def test_modes_resolve_as_upstream(mode: str, strength: float, expected: tuple) -> None:
    seams = RepaintSeams(mode, strength)
    got = (seams.injection_steps(8), seams.blend_frames, seams.crossfade_seconds, seams.splices_waveform)
    assert got[:2] == expected[:2] and got[2] == pytest.approx(expected[2]) and got[3] == expected[3]


def test_invalid_seams_are_refused() -> None:
    with pytest.raises(ValueError, match="repaint_mode"):
        RepaintSeams("gentle")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="repaint_strength"):
        RepaintSeams("balanced", 1.5)


def test_weights_ramp_outside_the_window_without_end_points() -> None:
    window = torch.zeros(12, dtype=torch.bool)
    window[4:7] = True
    torch.testing.assert_close(
        window_weights(window, 3),
        torch.tensor([0, 0.25, 0.5, 0.75, 1, 1, 1, 0.75, 0.5, 0.25, 0, 0]),
    )
    edge = torch.zeros(6, dtype=torch.bool)
    edge[1:3] = True  # the left ramp is clipped at the start, as upstream clips it
    torch.testing.assert_close(window_weights(edge, 3), torch.tensor([0.5, 1, 1, 0.75, 0.5, 0.25]))
    assert torch.equal(window_weights(edge, 0), edge.float())


def _source(frames: int = 100) -> torch.Tensor:
    return torch.randn(1, frames, 64, generator=torch.Generator().manual_seed(3))


def _implied_noise(state, src: torch.Tensor, outside: torch.Tensor) -> torch.Tensor:
    return (state.x_t[:, outside] - (1 - state.t) * src[:, outside]) / state.t


def test_balanced_holds_the_source_for_half_the_steps_then_blends_it_back() -> None:
    src = _source()
    request = LoopRequest(cond=REPAINT, seeds=[21], frames=100, source=src, repaint_window=(1.0, 2.0),
                          checkpoint_steps=(1, 3, 4, 6))  # fmt: skip
    result = run_loop(GaussianBackend(), request)
    window = torch.zeros(100, dtype=torch.bool)
    window[25:50] = True
    far = torch.ones(100, dtype=torch.bool)
    far[25 - 12 : 50 + 12] = False
    assert torch.equal(result.x0[:, far], src[:, far])  # beyond the 12-frame blend: the source
    ramp = ~far & ~window
    assert not torch.allclose(result.x0[:, ramp], src[:, ramp])
    # Steps 0..3 re-inject the source renoised with one fixed noise; step 4 on evolves freely.
    outside = ~window
    held = [_implied_noise(state, src, outside) for state in result.checkpoints[:3]]
    torch.testing.assert_close(held[0], held[1], rtol=0, atol=1e-5)
    torch.testing.assert_close(held[0], held[2], rtol=0, atol=1e-5)
    assert not torch.allclose(_implied_noise(result.checkpoints[3], src, outside), held[0], atol=1e-3)


@pytest.mark.parametrize("step", [2, 6])
def test_balanced_resume_is_exact_before_and_after_the_cutoff(step: int) -> None:
    src = _source()
    fields = dict(cond=REPAINT, seeds=[21], frames=100, source=src, repaint_window=(1.0, 2.0), infer_method="sde")
    full = run_loop(GaussianBackend(), LoopRequest(**fields, checkpoint_steps=(step,)))
    resumed = run_loop(GaussianBackend(), LoopRequest(**fields, resume=full.checkpoints[0]))
    assert torch.equal(resumed.x0, full.x0)


def test_aggressive_leaves_the_outside_to_the_model() -> None:
    src = _source()
    backend = GaussianBackend()
    request = LoopRequest(cond=REPAINT, seeds=[21], frames=100, source=src, repaint_window=(1.0, 2.0),
                          repaint=RepaintSeams("aggressive"))  # fmt: skip
    out = run_loop(backend, request).x0
    assert not torch.allclose(out[:, :25], src[:, :25], atol=1e-3)
    assert torch.equal(backend.calls[0].context.src[:, :25], src[:, :25])  # still the context


def test_splice_crossfades_outside_the_window() -> None:
    decoded, source = torch.ones(2, 100), torch.zeros(2, 100)
    spliced = splice_waveform(decoded, source, (40, 60), 4)
    assert torch.equal(spliced[:, :36], source[:, :36]) and torch.equal(spliced[:, 64:], source[:, 64:])
    assert torch.equal(spliced[:, 40:60], decoded[:, 40:60])
    torch.testing.assert_close(spliced[0, 36:40], torch.tensor([0.2, 0.4, 0.6, 0.8]))


def _jumps(audio: torch.Tensor) -> torch.Tensor:
    """Largest sample-to-sample step of either channel at each sample boundary."""
    return (audio[:, 1:] - audio[:, :-1]).abs().amax(dim=0)


def test_decoded_repaint_is_the_source_outside_with_no_step_at_the_seams(tmp_path: Path) -> None:
    store, model = LatentStore(tmp_path / "latents"), EmbeddedBackend("turbo")
    shared = dict(backend="embedded", variant="turbo", bpm=120, keyscale="A minor", timesignature="4")
    source_id = run_stage(StageParams(caption="warm piano", duration=8.0, seed=11, **shared), store, backend=model)[0].latent_id
    repaint = StageParams(stage_type="repaint", src_latent_id=source_id, caption="bright synth lead", seed=8,
                          repainting_start=3.0, repainting_end=5.0, **shared)  # fmt: skip
    [result] = run_stage(repaint, store, backend=model)
    record = store.record(result.latent_id)
    assert (record.params["repaint_mode"], record.params["repaint_strength"]) == ("balanced", 0.5)
    before = latent_audio(store, model, store.record(source_id), store.get(source_id), [0])[0]
    after = latent_audio(store, model, record, store.get(result.latent_id), [0])[0]
    fade = int(RepaintSeams().crossfade_seconds * SAMPLE_RATE)
    start, end = 3 * SAMPLE_RATE, 5 * SAMPLE_RATE
    assert torch.equal(after[:, : start - fade], before[:, : start - fade])
    assert torch.equal(after[:, end + fade :], before[:, end + fade :])
    inside = slice(start + HOP_LENGTH, end - HOP_LENGTH)
    assert (after[:, inside] - before[:, inside]).norm() > 0.3 * before[:, inside].norm()
    # No step at the seams: around each edge the largest sample-to-sample jump stays within the
    # larger of the two signals' own jumps there (the source's, and the generated decode's).
    raw = model.vae_decode(store.get(result.latent_id))[0]
    for edge in (start, end):
        seam = slice(edge - fade - HOP_LENGTH, edge + fade + HOP_LENGTH)
        own = max(float(_jumps(before[:, seam]).max()), float(_jumps(raw[:, seam]).max()))
        assert float(_jumps(after[:, seam]).max()) <= 1.05 * own
        # A hard cut (the splice without its fade) makes the step this check is there to catch.
        hard = splice_waveform(raw, before, (start, end), 0)
        assert float(_jumps(hard[:, seam]).max()) > 1.25 * own


def test_decode_writes_the_spliced_audio_normalised_to_minus_one_dbfs(tmp_path: Path) -> None:
    store, model = LatentStore(tmp_path / "latents"), EmbeddedBackend("turbo")
    source_id = run_stage(StageParams(caption="warm piano", duration=4.0, seed=2), store, backend=model)[0].latent_id
    repaint = StageParams(stage_type="repaint", src_latent_id=source_id, caption="drums", seed=3,
                          repainting_start=1.0, repainting_end=2.0)  # fmt: skip
    latent_id = run_stage(repaint, store, backend=model)[0].latent_id
    [path] = decode_latent(store, latent_id, tmp_path / "audio", backend=model)
    audio = load_audio(path)
    assert float(audio.abs().max()) == pytest.approx(10 ** (-1 / 20), abs=1e-4)  # PCM-24 rounding
    assert read_audio_metadata(path)["normalize_dbfs"] == -1.0
    spliced = latent_audio(store, model, store.record(latent_id), store.get(latent_id), [0])[0]
    torch.testing.assert_close(audio, spliced * (10 ** (-1 / 20) / spliced.abs().max()), rtol=0, atol=1e-6)
    assert existing_audio(store, latent_id, tmp_path / "audio") == [path]
    assert existing_audio(store, latent_id, tmp_path / "audio", normalize_dbfs=None) is None
    [raw_path] = decode_latent(store, latent_id, tmp_path / "raw", backend=model, normalize_dbfs=None)
    torch.testing.assert_close(load_audio(raw_path), spliced, rtol=0, atol=1e-6)


def test_strict_latents_decode_without_a_splice(tmp_path: Path) -> None:
    store, model = LatentStore(tmp_path / "latents"), EmbeddedBackend("turbo")
    source_id = run_stage(StageParams(caption="warm piano", duration=4.0, seed=2), store, backend=model)[0].latent_id
    strict = StageParams(stage_type="repaint", src_latent_id=source_id, caption="drums", seed=3,
                         repainting_start=1.0, repainting_end=2.0, repaint_mode="strict")  # fmt: skip
    latent_id = run_stage(strict, store, backend=model)[0].latent_id
    record, latents = store.record(latent_id), store.get(latent_id)
    assert torch.equal(latent_audio(store, model, record, latents, [0]), model.vae_decode(latents))
    keep = torch.ones(100, dtype=torch.bool)
    keep[25:50] = False
    through_audio = model.vae_encode(model.vae_decode(store.get(source_id)))  # audio tasks read audio
    assert torch.equal(latents[:, keep], through_audio[:, keep])


def test_real_model_repaint_keeps_the_source_outside_in_latents_and_audio(
    tmp_path: Path, tiny_acestep: dict[str, Path]
) -> None:
    from prefect_acestep.stages.backends.acestep import AceStepBackend

    model = AceStepBackend(str(tiny_acestep["turbo"]))
    store = LatentStore(tmp_path / "latents")
    shared = dict(backend="acestep", variant="turbo")
    source_id = run_stage(StageParams(caption="piano", duration=6.0, seed=1, **shared), store, backend=model)[0].latent_id
    repaint = StageParams(stage_type="repaint", src_latent_id=source_id, caption="drums", seed=2,
                          repainting_start=2.0, repainting_end=4.0, **shared)  # fmt: skip
    latent_id = run_stage(repaint, store, backend=model)[0].latent_id
    seams = RepaintSeams()
    source = store.get(source_id)
    through_audio = model.vae_encode(model.vae_decode(source))  # what the audio task conditions on
    far = torch.ones(150, dtype=torch.bool)
    far[50 - seams.blend_frames : 100 + seams.blend_frames] = False
    assert torch.equal(store.get(latent_id)[:, far], through_audio[:, far])
    before = latent_audio(store, model, store.record(source_id), source, [0])[0]
    after = latent_audio(store, model, store.record(latent_id), store.get(latent_id), [0])[0]
    fade = int(seams.crossfade_seconds * SAMPLE_RATE)
    start, end = 2 * SAMPLE_RATE, 4 * SAMPLE_RATE
    assert torch.equal(after[:, : start - fade], before[:, : start - fade])
    assert torch.equal(after[:, end + fade :], before[:, end + fade :])
    assert not torch.allclose(after[:, start:end], before[:, start:end])
