"""The waveforms the codec's channels are made of: harmonic tones and one-shot percussion.

Kept apart from the codec so the sound design can change without touching the (exactly invertible)
synthesis/analysis machinery; every constant here enters the model's weights digest.
"""

from __future__ import annotations

import numpy as np

from prefect_acestep.stages.backends.embedded.channels import PERCUSSION, REGISTERS
from prefect_acestep.stages.geometry import HOP_LENGTH, SAMPLE_RATE

KERNEL_LENGTH = 2 * HOP_LENGTH
"""Length of every kernel's support (tones use the first ``TONE_LENGTH`` samples of it)."""
CROSSFADE = HOP_LENGTH // 2
"""Samples over which a tone's amplitude moves from one frame's value to the next."""
TONE_LENGTH = HOP_LENGTH + CROSSFADE
ONSET = CROSSFADE // 2
"""Sample of a kernel that falls on the start of its frame's hop (where a one-shot hits)."""

PITCHED_GAIN = 0.06
"""Peak of a unit-amplitude fundamental: a full arrangement stays well under full scale."""

PARTIALS: dict[str, tuple[float, ...]] = {
    "bass": (1.0, 0.6, 0.3, 0.15),
    "low": (1.0, 0.5, 0.25, 0.12),
    "mid": (1.0, 0.4, 0.2),
    "high": (1.0, 0.3, 0.12),
}
"""Amplitudes of the harmonics per register: warm bass, brighter comping, flute-like lead (fewer
partials up high keeps the decode cheap; they would add little there)."""

PERCUSSION_GAIN = 0.5
NOISE_SEED = 1_505


def partial_phase(channel: int, harmonic: int) -> float:
    """A fixed, spread-out starting phase per partial, so that chords do not stack their peaks."""
    return float(2.0 * np.pi * ((channel * 0.6180339887 + harmonic * 0.4142135623) % 1.0))


def _band_noise(rng: np.random.Generator, low: float, high: float) -> np.ndarray:
    spectrum = np.fft.rfft(rng.standard_normal(KERNEL_LENGTH))
    freqs = np.fft.rfftfreq(KERNEL_LENGTH, 1.0 / SAMPLE_RATE)
    spectrum[(freqs < low) | (freqs > high)] = 0.0
    noise = np.fft.irfft(spectrum, KERNEL_LENGTH)
    return noise / np.max(np.abs(noise))


def _sweep(start_hz: float, end_hz: float, time_constant: float, tau: np.ndarray) -> np.ndarray:
    freq = end_hz + (start_hz - end_hz) * np.exp(-tau / time_constant)
    return np.sin(2.0 * np.pi * np.cumsum(freq) / SAMPLE_RATE)


def _partials(base_hz: float, ratios: tuple[float, ...], tau: np.ndarray) -> np.ndarray:
    return sum(np.sin(2.0 * np.pi * base_hz * r * tau) / (i + 1) for i, r in enumerate(ratios))


def percussion_kernels() -> np.ndarray:
    """One-shot waveforms ``[16, 2 * HOP_LENGTH]``: silent before ``ONSET``, faded out at the end."""
    rng = np.random.default_rng(NOISE_SEED)
    m = np.arange(KERNEL_LENGTH)
    tau = np.clip(m - ONSET, 0, None) / SAMPLE_RATE
    decay = lambda seconds: np.exp(-tau / seconds)  # noqa: E731
    shapes = {
        "kick": _sweep(150.0, 48.0, 0.02, tau) * decay(0.05),
        "snare": 0.35 * np.sin(2 * np.pi * 190 * tau) * decay(0.03) + _band_noise(rng, 1000, 8000) * decay(0.05),
        "closed_hat": _band_noise(rng, 6000, 16000) * decay(0.012),
        "open_hat": _band_noise(rng, 5000, 16000) * decay(0.05),
        "clap": _band_noise(rng, 900, 3500) * (decay(0.01) + 0.6 * decay(0.03) * (tau > 0.012)),
        "low_tom": _sweep(160.0, 100.0, 0.03, tau) * decay(0.06),
        "high_tom": _sweep(260.0, 180.0, 0.03, tau) * decay(0.05),
        "ride": 0.6 * _partials(520.0, (1.0, 1.48, 2.13, 2.87), tau) * decay(0.06)
        + 0.4 * _band_noise(rng, 4000, 12000) * decay(0.04),
        "shaker": _band_noise(rng, 4000, 11000) * (1 - decay(0.008)) * decay(0.03),
        "conga": _sweep(330.0, 250.0, 0.02, tau) * decay(0.04),
        "clave": np.sin(2 * np.pi * 2500 * tau) * decay(0.015),
        "cowbell": (np.sign(np.sin(2 * np.pi * 540 * tau)) + np.sign(np.sin(2 * np.pi * 800 * tau))) * decay(0.04),
        "fx_bell": _partials(880.0, (1.0, 2.76, 5.40), tau) * decay(0.09),
        "fx_zap": _sweep(3000.0, 200.0, 0.015, tau) * decay(0.05),
        "fx_burst": _band_noise(rng, 300, 3000) * decay(0.07),
        "fx_blip": np.sin(2 * np.pi * 1600 * tau) * decay(0.02),
    }
    fade = np.ones(KERNEL_LENGTH)
    tail = KERNEL_LENGTH // 8
    fade[-tail:] = 0.5 * (1 + np.cos(np.pi * np.arange(tail) / tail))
    kernels = np.stack([shapes[name] * (m >= ONSET) * fade for name in PERCUSSION])
    return PERCUSSION_GAIN * kernels / np.max(np.abs(kernels), axis=1, keepdims=True)


def register_partials(register: int) -> tuple[float, ...]:
    return PARTIALS[REGISTERS[register]]


def tone_window() -> np.ndarray:
    """Flat-top window ``[KERNEL_LENGTH]``: rises over ``CROSSFADE``, holds, falls over ``CROSSFADE``,
    zero after ``TONE_LENGTH``. Copies at hop ``HOP_LENGTH`` sum to one (sin^2 + cos^2 crossfades),
    so a constant amplitude is a steady tone; the short overlap keeps the decode cheap."""
    m = np.arange(KERNEL_LENGTH, dtype=np.float64)
    window = np.zeros(KERNEL_LENGTH)
    rise = m < CROSSFADE
    window[rise] = np.sin(0.5 * np.pi * m[rise] / CROSSFADE) ** 2
    window[(m >= CROSSFADE) & (m < HOP_LENGTH)] = 1.0
    fall = (m >= HOP_LENGTH) & (m < TONE_LENGTH)
    window[fall] = np.cos(0.5 * np.pi * (m[fall] - HOP_LENGTH) / CROSSFADE) ** 2
    return window
