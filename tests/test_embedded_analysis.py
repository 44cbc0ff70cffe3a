"""The audio measurements the embedded semantic tests rely on, checked on signals whose answer is
known by construction (sines, click tracks), so a passing semantic test means what it says."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import audio_analysis as aa

RATE = aa.SAMPLE_RATE


def _tone(freqs: list[float], seconds: float = 3.0, amplitude: float = 0.2) -> torch.Tensor:
    n = torch.arange(int(seconds * RATE)) / RATE
    wave = sum(amplitude * torch.sin(2 * math.pi * f * n) for f in freqs)
    return torch.stack([wave, wave])


def _midi(note: int) -> float:
    return 440.0 * 2 ** ((note - 69) / 12)


def test_pitch_classes_and_scale_of_a_chord() -> None:
    c_major = _tone([_midi(60), _midi(64), _midi(67)])
    energy = aa.pitch_class_energy(c_major)
    assert sorted(np.argsort(energy)[-3:].tolist()) == [0, 4, 7]
    assert aa.in_scale_ratio(energy, 0, "major") > 0.99
    off_key = aa.pitch_class_energy(_tone([_midi(61), _midi(66)]))  # C#, F#
    assert off_key.sum() > 0 and aa.in_scale_ratio(off_key, 0, "major") < 0.01


def test_bass_pitch_class_and_registers() -> None:
    bass_g = _tone([_midi(43)])  # G2
    assert aa.bass_pitch_class(bass_g, 0.5, 2.5) == 7
    shares = aa.register_energy(_tone([_midi(43), _midi(76)]))  # G2 + E5
    total = sum(shares.values())
    assert shares["bass"] > 0.3 * total and shares["high"] > 0.3 * total
    assert shares["low"] + shares["mid"] < 1e-4 * total


@pytest.mark.parametrize("bpm", [75.0, 96.0, 123.0, 150.0])
def test_tempo_of_a_click_track(bpm: float) -> None:
    wave = torch.zeros(int(8 * RATE))
    noise = torch.randn(400, generator=torch.Generator().manual_seed(0)) * torch.exp(-torch.arange(400) / 80.0)
    for onset in np.arange(0.0, 7.9, 60.0 / bpm):
        start = int(onset * RATE)
        wave[start : start + 400] += noise
    assert aa.estimate_tempo(torch.stack([wave, wave])) == pytest.approx(bpm, rel=0.02)


def test_chroma_similarity_tells_same_from_different_harmony() -> None:
    c_major = _tone([_midi(60), _midi(64), _midi(67)])
    f_sharp = _tone([_midi(66), _midi(70), _midi(73)])
    assert aa.chroma_similarity(c_major, c_major) == pytest.approx(1.0)
    assert aa.chroma_similarity(c_major, f_sharp) < 0.1
    assert aa.band_energy(c_major, 5000, 20000) < 1e-6 * aa.band_energy(c_major, 20, 20000)
