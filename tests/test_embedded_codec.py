"""The embedded model's codec: exact inverse on its own outputs, musical channels, smooth audio."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from prefect_acestep.stages.backends.embedded import EmbeddedBackend
from prefect_acestep.stages.backends.embedded.channels import frequency, percussion_channel, pitched_channel
from prefect_acestep.stages.backends.embedded.sounds import ONSET, PITCHED_GAIN, partial_phase, register_partials
from prefect_acestep.stages.backends.protocol import ConditionSpec
from prefect_acestep.stages.engine.loop import LoopRequest, run_loop
from prefect_acestep.stages.errors import InvalidStageRequest
from prefect_acestep.stages.geometry import HOP_LENGTH, SAMPLE_RATE

import audio_analysis as aa


@pytest.fixture(scope="module")
def backend() -> EmbeddedBackend:
    return EmbeddedBackend("turbo")


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_roundtrip_recovers_the_models_outputs(backend: EmbeddedBackend) -> None:
    spec = ConditionSpec(
        task="text2music", caption="pop song with piano, bass, flute and drums", keyscale="G major", bpm=100
    )
    x0 = run_loop(backend, LoopRequest(cond=spec, seeds=[1, 2], frames=150)).x0
    audio = backend.vae_decode(x0)
    assert audio.shape == (2, 2, 150 * HOP_LENGTH)
    assert _relative_error(backend.vae_encode(audio), x0) < 0.05
    assert _relative_error(backend.vae_encode(audio), x0) < 1e-3  # in fact exact up to the ridge


def test_roundtrip_holds_for_any_latent_not_only_templates(backend: EmbeddedBackend) -> None:
    for frames in (1, 2, 3, 37):
        z = torch.randn(2, frames, 64, generator=torch.Generator().manual_seed(frames))
        assert _relative_error(backend.vae_encode(backend.vae_decode(z)), z) < 1e-3, frames


def test_encode_drops_a_partial_trailing_frame(backend: EmbeddedBackend) -> None:
    z = torch.randn(1, 10, 64, generator=torch.Generator().manual_seed(0))
    audio = torch.nn.functional.pad(backend.vae_decode(z), (0, HOP_LENGTH - 1))
    assert backend.vae_encode(audio).shape == (1, 10, 64)


def test_decode_is_linear_and_silence_is_zero(backend: EmbeddedBackend) -> None:
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(1, 20, 64, generator=g), torch.randn(1, 20, 64, generator=g)
    mixed = backend.vae_decode(2.0 * a - 0.5 * b)
    assert torch.allclose(mixed, 2.0 * backend.vae_decode(a) - 0.5 * backend.vae_decode(b), atol=1e-5)
    silence = backend.silence_latent(20)
    assert silence.shape == (20, 64)
    assert backend.vae_decode(silence[None]).abs().max() == 0


def test_a_held_note_is_one_steady_harmonic_tone_at_its_pitch(backend: EmbeddedBackend) -> None:
    """Constant amplitude on A4's channel decodes to its partials with a global phase: no seams
    between frames, exactly the analytic tone away from the two ends."""
    register, pitch_class = 2, 9
    channel = pitched_channel(register, pitch_class)
    z = torch.zeros(1, 30, 64)
    z[0, :, channel] = 1.0
    wave = backend.vae_decode(z)[0].double().mean(dim=0).numpy()
    n = np.arange(len(wave))
    f0 = frequency(register, pitch_class)
    assert f0 == pytest.approx(440.0)
    expected = sum(
        PITCHED_GAIN * amp * np.cos(2 * np.pi * (j + 1) * f0 * n / SAMPLE_RATE + partial_phase(channel, j))
        for j, amp in enumerate(register_partials(register))
    )
    inner = slice(HOP_LENGTH, len(wave) - HOP_LENGTH)
    stereo_gain = wave[inner].std() / expected[inner].std()
    assert np.abs(wave[inner] - stereo_gain * expected[inner]).max() < 1e-4
    assert aa.pitch_class_energy(backend.vae_decode(z)[0]).argmax() == pitch_class


def test_chord_changes_are_smooth_not_clicks(backend: EmbeddedBackend) -> None:
    z = torch.zeros(1, 20, 64)
    z[0, :10, [pitched_channel(1, pc) for pc in (0, 4, 7)]] = 1.0
    z[0, 10:, [pitched_channel(1, pc) for pc in (5, 9, 0)]] = 1.0
    wave = backend.vae_decode(z)[0, 0]
    steps = wave.diff().abs()
    # The largest sample step anywhere is that of the tones themselves (no discontinuity at the change).
    held = backend.vae_decode(z[:, :10])[0, 0].diff().abs().max()
    assert steps.max() <= 1.5 * held


def test_a_percussion_channel_hits_at_its_frame(backend: EmbeddedBackend) -> None:
    z = torch.zeros(1, 12, 64)
    z[0, 6, percussion_channel("kick")] = 1.0
    wave = backend.vae_decode(z)[0].abs().sum(dim=0)
    first = int(torch.nonzero(wave > 1e-4)[0])
    assert abs(first - 6 * HOP_LENGTH) <= 2 and ONSET > 0
    assert wave[: 6 * HOP_LENGTH - 2].max() == 0


def test_decoded_music_stays_below_full_scale(backend: EmbeddedBackend) -> None:
    spec = ConditionSpec(task="text2music", caption="energetic rock with bass, guitar, piano, vocals and drums")
    x0 = run_loop(backend, LoopRequest(cond=spec, seeds=[4, 5, 6], frames=100)).x0
    assert backend.vae_decode(x0).abs().max() < 1.0


@pytest.mark.parametrize(
    ("call", "shape"),
    [("vae_decode", (1, 10, 63)), ("vae_decode", (10, 64)), ("vae_encode", (1, 1, 4000)), ("vae_encode", (1, 2, 100))],
)
def test_bad_shapes_are_typed_errors(backend: EmbeddedBackend, call: str, shape: tuple[int, ...]) -> None:
    with pytest.raises(InvalidStageRequest, match="expects"):
        getattr(backend, call)(torch.zeros(shape))


def test_real_tones_off_the_grid_encode_to_bounded_latents(backend: EmbeddedBackend) -> None:
    """Audio the codec did not make (a detuned sine, noise) still encodes to finite, bounded latents."""
    n = torch.arange(2 * SAMPLE_RATE) / SAMPLE_RATE
    tone = 0.3 * torch.sin(2 * math.pi * 452.0 * n)
    noise = 0.3 * torch.randn(2 * SAMPLE_RATE, generator=torch.Generator().manual_seed(0))
    for wave in (tone, noise):
        z = backend.vae_encode(torch.stack([wave, wave])[None])
        assert torch.isfinite(z).all() and z.abs().max() < 100
