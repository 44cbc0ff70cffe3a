"""Scores that rank variations, measured on the decoded audio (what a person hears), with numpy only.

- ``key_adherence``: the share of the tonal energy that falls on the requested key's scale. Tonal
  energy is the power of spectral peaks (above a running-median floor, so drums and noise do not
  count) within 35 cents of an equal-tempered pitch between 60 Hz and 4 kHz, summed per pitch class
  over up to 64 half-overlapping 0.68 s frames spread evenly over the piece.
  1.0 means every sounding pitch is in the scale; a flat chromatic spread scores 7/12 ≈ 0.58. Cheap
  (a few FFTs per file) and meaningful for any backend whose audio has pitched content.
- ``loudness``: RMS level in dBFS (0 = full-scale square wave). Useful to pick the fullest take.

Both are higher-is-better; the variations flow ranks by the one the caller picks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from prefect_acestep.stages.audio import load_audio
from prefect_acestep.stages.errors import InvalidStageRequest
from prefect_acestep.stages.vocabulary import SCALES, key_parts

RankMetric = Literal["key_adherence", "loudness"]
METRIC_DOCS: dict[str, str] = {
    "key_adherence": "share of tonal energy on the requested key's scale (1.0 = all in key, 0.58 = chromatic)",
    "loudness": "RMS level in dBFS (higher = louder)",
}

SAMPLE_RATE = 48_000
_N_FFT = 32_768
_MAX_FRAMES = 64
"""Frames averaged at most (about 22 s of audio, spread evenly): keeps a 10-minute piece cheap."""
_FLOOR_BINS = 41
_TOLERANCE_CENTS = 35.0
_F_MIN, _F_MAX = 60.0, 4000.0


class SampleScore(BaseModel):
    """One decoded sample and its score."""

    latent_id: str = Field(description="Latent of the stage run (the whole batch).")
    sample_index: int = Field(ge=0, description="Sample of that batch.")
    seed: int = Field(ge=0, description="Seed drawn for the sample.")
    audio_path: str = Field(description="Decoded WAV file that was scored.")
    metric: RankMetric = Field(description="What the score measures.")
    score: float = Field(description="Higher is better (see METRIC_DOCS).")


def scale_pitch_classes(keyscale: str) -> tuple[int, ...]:
    """The seven pitch classes, in scale order, of a key such as ``'F# minor'`` or ``'B♭ major'``."""
    try:
        tonic, mode = key_parts(keyscale)
    except ValueError as error:
        raise InvalidStageRequest(f"keyscale {error}; key adherence needs a key") from error
    return tuple((tonic + step) % 12 for step in SCALES[mode])


def _mono(audio: np.ndarray) -> np.ndarray:
    return audio.astype(np.float64).mean(axis=0) if audio.ndim == 2 else audio.astype(np.float64)


def pitch_class_energy(audio: np.ndarray) -> np.ndarray:
    """Tonal energy per pitch class ``[12]`` of a ``[channels, samples]`` (or mono) 48 kHz signal."""
    x = _mono(audio)
    if len(x) < _N_FFT:
        x = np.pad(x, (0, _N_FFT - len(x)))
    hop = _N_FFT // 2
    starts = np.arange(0, len(x) - _N_FFT + 1, hop)
    if len(starts) > _MAX_FRAMES:  # long audio: frames spread evenly over the whole piece
        starts = starts[np.linspace(0, len(starts) - 1, _MAX_FRAMES).round().astype(int)]
    frames = np.stack([x[start : start + _N_FFT] for start in starts]) * np.hanning(_N_FFT)
    power = (np.abs(np.fft.rfft(frames, axis=1)) ** 2).mean(axis=0)
    half = _FLOOR_BINS // 2
    windows = np.lib.stride_tricks.sliding_window_view(np.pad(power, half, mode="edge"), _FLOOR_BINS)
    tonal = np.clip(power - np.median(windows, axis=1), 0.0, None)
    freqs = np.fft.rfftfreq(_N_FFT, 1.0 / SAMPLE_RATE)
    band = (freqs >= _F_MIN) & (freqs <= _F_MAX)
    midi = 69.0 + 12.0 * np.log2(freqs[band] / 440.0)
    nearest = np.round(midi)
    close = np.abs(midi - nearest) * 100.0 <= _TOLERANCE_CENTS
    return np.bincount(nearest[close].astype(int) % 12, weights=tonal[band][close], minlength=12)


def key_adherence(audio: np.ndarray, keyscale: str) -> float:
    """Share of tonal energy on ``keyscale``'s scale; 0.0 for audio with no pitched content."""
    energy = pitch_class_energy(audio)
    total = float(energy.sum())
    if total == 0.0:
        return 0.0
    return float(energy[list(scale_pitch_classes(keyscale))].sum() / total)


def loudness_dbfs(audio: np.ndarray) -> float:
    """RMS level in dB relative to full scale; -inf-free (digital silence is -200 dBFS)."""
    rms = float(np.sqrt(np.mean(_mono(audio) ** 2)))
    return 20.0 * float(np.log10(max(rms, 1e-10)))


def score_file(path: str | Path, metric: RankMetric, keyscale: str) -> float:
    """Score a decoded audio file (48 kHz, as the store's decoder writes it)."""
    audio = load_audio(path).numpy()
    if metric == "key_adherence":
        return key_adherence(audio, keyscale)
    return loudness_dbfs(audio)
