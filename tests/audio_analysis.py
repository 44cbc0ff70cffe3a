"""Measurements on decoded audio, for the embedded model's semantic tests: which pitch classes
sound, which key they imply, how strong each register is, what tempo the onsets pulse at, and how
alike two pieces' chroma timelines are. numpy FFTs only, so the tests check the audio itself and
not the latents the model made it from."""

from __future__ import annotations

import numpy as np
import torch

SAMPLE_RATE = 48_000

SCALES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10)}
REGISTER_MIDI = {"bass": (36, 48), "low": (48, 60), "mid": (60, 72), "high": (72, 84)}
"""Fundamental ranges (MIDI, half-open) of the registers: octaves 2, 3, 4, 5."""


def mono(audio: torch.Tensor | np.ndarray) -> np.ndarray:
    """A ``[2, S]`` (or ``[1, 2, S]``) stereo waveform as one float64 mono signal."""
    x = audio.detach().cpu().numpy() if isinstance(audio, torch.Tensor) else np.asarray(audio)
    x = x.astype(np.float64)
    while x.ndim > 2:
        if x.shape[0] != 1:
            raise ValueError(f"expected one waveform, got shape {x.shape}")
        x = x[0]
    return x.mean(axis=0) if x.ndim == 2 else x


def _frames(x: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    if len(x) < n_fft:
        x = np.pad(x, (0, n_fft - len(x)))
    count = 1 + (len(x) - n_fft) // hop
    index = np.arange(n_fft)[None, :] + hop * np.arange(count)[:, None]
    return x[index] * np.hanning(n_fft)[None, :]


def power_spectrum(audio, n_fft: int = 32768) -> tuple[np.ndarray, np.ndarray]:
    """Welch average power spectrum: (frequencies, power)."""
    spec = np.abs(np.fft.rfft(_frames(mono(audio), n_fft, n_fft // 2), axis=1)) ** 2
    return np.fft.rfftfreq(n_fft, 1.0 / SAMPLE_RATE), spec.mean(axis=0)


def tonal_spectrum(audio, n_fft: int = 32768, floor_bins: int = 41) -> tuple[np.ndarray, np.ndarray]:
    """The power that stands above a running-median floor: spectral peaks of tones, not the
    broadband energy of drums."""
    freqs, power = power_spectrum(audio, n_fft)
    half = floor_bins // 2
    padded = np.pad(power, half, mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, floor_bins)
    return freqs, np.clip(power - np.median(windows, axis=1), 0.0, None)


def _pitch_map(freqs: np.ndarray, tolerance_cents: float) -> tuple[np.ndarray, np.ndarray]:
    with np.errstate(divide="ignore"):
        midi = 69.0 + 12.0 * np.log2(np.where(freqs > 0, freqs, 1e-9) / 440.0)
    nearest = np.round(midi)
    return nearest.astype(int), np.abs(midi - nearest) * 100.0 <= tolerance_cents


def pitch_class_energy(audio, fmin: float = 60.0, fmax: float = 4000.0, tolerance_cents: float = 35.0) -> np.ndarray:
    """Tonal energy per pitch class ``[12]`` (bins within ``tolerance_cents`` of a semitone)."""
    freqs, tonal = tonal_spectrum(audio)
    note, close = _pitch_map(freqs, tolerance_cents)
    keep = close & (freqs >= fmin) & (freqs <= fmax)
    return np.bincount(note[keep] % 12, weights=tonal[keep], minlength=12)


def in_scale_ratio(pc_energy: np.ndarray, tonic: int, mode: str) -> float:
    scale = [(tonic + step) % 12 for step in SCALES[mode]]
    return float(pc_energy[scale].sum() / pc_energy.sum())


def bass_pitch_class(audio, start_s: float, end_s: float) -> int:
    """Pitch class the bass register (fundamentals C2-B2) sounds most between two times: where a
    piece opens and where it cadences, this is its tonic. (Profile matching over the whole chroma
    confuses a key with its dominant or relative key in pieces a few bars long.)"""
    x = mono(audio)[int(start_s * SAMPLE_RATE) : int(end_s * SAMPLE_RATE)]
    low, high = REGISTER_MIDI["bass"]
    fmin, fmax = 440.0 * 2 ** ((low - 0.5 - 69) / 12), 440.0 * 2 ** ((high - 0.5 - 69) / 12)
    return int(np.argmax(pitch_class_energy(x, fmin=fmin, fmax=fmax)))


KRUMHANSL_KESSLER = {
    "major": np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88]),
    "minor": np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17]),
}
"""Krumhansl and Kessler's probe-tone key profiles (1982), tonic first."""


def find_key(pc_energy: np.ndarray) -> tuple[int, str]:
    """The Krumhansl-Schmuckler key finder: the (tonic, mode) whose rotated key profile correlates
    best with the pitch-class distribution."""
    scores = {
        (tonic, mode): float(np.corrcoef(pc_energy, np.roll(profile, tonic))[0, 1])
        for mode, profile in KRUMHANSL_KESSLER.items()
        for tonic in range(12)
    }
    return max(scores, key=scores.__getitem__)


def register_energy(audio, tolerance_cents: float = 35.0) -> dict[str, float]:
    """Tonal energy whose pitch falls in each register's fundamental range."""
    freqs, tonal = tonal_spectrum(audio)
    note, close = _pitch_map(freqs, tolerance_cents)
    return {name: float(tonal[close & (note >= lo) & (note < hi)].sum()) for name, (lo, hi) in REGISTER_MIDI.items()}


def band_energy(audio, low: float, high: float) -> float:
    """All energy (tonal or not) between ``low`` and ``high`` Hz."""
    freqs, power = power_spectrum(audio, 4096)
    return float(power[(freqs >= low) & (freqs < high)].sum())


def onset_envelope(audio, hop: int = 480, n_fft: int = 2048) -> np.ndarray:
    """Spectral flux at 100 Hz: how much the magnitude spectrum rises from one frame to the next
    (linear magnitudes: loud hits count more than faint ticks, without power's bias towards
    the kick alone)."""
    magnitude = np.abs(np.fft.rfft(_frames(mono(audio), n_fft, hop), axis=1))
    return np.clip(np.diff(magnitude, axis=0), 0.0, None).sum(axis=1)


def _peak(acf: np.ndarray, around: float, reach: float) -> float | None:
    """Sub-sample position of the highest point of ``acf`` within ``around +- reach``."""
    lo, hi = max(1, int(np.floor(around - reach))), min(len(acf) - 2, int(np.ceil(around + reach)))
    if hi < lo:
        return None
    i = lo + int(np.argmax(acf[lo : hi + 1]))
    left, mid, right = acf[i - 1], acf[i], acf[i + 1]
    denom = left - 2 * mid + right
    return i + (0.5 * (left - right) / denom if denom < 0 else 0.0)


def estimate_tempo(audio, low_bpm: float = 60.0, high_bpm: float = 200.0, strong: float = 0.6) -> float:
    """Tempo (bpm) of the fastest strong periodicity of the onsets: the shortest autocorrelation
    lag in range whose peak reaches ``strong`` of the best one, then refined on the peaks at its
    multiples (long lags average out onsets quantised to the latent frame grid)."""
    env = onset_envelope(audio)
    env = env - env.mean()
    spectrum = np.fft.rfft(env, 2 * len(env))
    acf = np.fft.irfft(spectrum * np.conj(spectrum))[: len(env)]
    rate = SAMPLE_RATE / 480.0
    lo, hi = int(rate * 60.0 / high_bpm), int(np.ceil(rate * 60.0 / low_bpm))
    window = acf[lo : hi + 1]
    is_peak = (window >= np.roll(window, 1)) & (window >= np.roll(window, -1))
    is_peak[0] = is_peak[-1] = False
    peaks = np.flatnonzero(is_peak)
    if len(peaks) == 0:
        raise ValueError("no periodicity in the onsets")
    top = window[peaks].max()
    period = float(lo + peaks[np.flatnonzero(window[peaks] >= strong * top)[0]])
    for k in range(2, int((len(env) // 2) / period) + 1):
        found = _peak(acf, k * period, 0.08 * period)
        if found is not None:
            period = found / k
    return 60.0 * rate / period


def chroma_timeline(
    audio, hop_s: float = 0.2, n_fft: int = 8192, fmin: float = 120.0, fmax: float = 4000.0
) -> np.ndarray:
    """Unit-norm chroma ``[frames, 12]`` every ``hop_s`` seconds (silent frames are zero)."""
    spec = np.abs(np.fft.rfft(_frames(mono(audio), n_fft, int(hop_s * SAMPLE_RATE)), axis=1)) ** 2
    freqs = np.fft.rfftfreq(n_fft, 1.0 / SAMPLE_RATE)
    note, close = _pitch_map(freqs, 50.0)
    keep = close & (freqs >= fmin) & (freqs <= fmax)
    chroma = np.zeros((spec.shape[0], 12))
    for pc in range(12):
        chroma[:, pc] = spec[:, keep & (note % 12 == pc)].sum(axis=1)
    norm = np.linalg.norm(chroma, axis=1, keepdims=True)
    loud = norm[:, 0] > 1e-6 * max(norm.max(), 1e-30)
    return np.where(loud[:, None], chroma / np.where(norm > 0, norm, 1.0), 0.0)


def chroma_similarity(a, b) -> float:
    """Mean cosine similarity of two pieces' chroma timelines over the frames where both sound."""
    ca, cb = chroma_timeline(a), chroma_timeline(b)
    n = min(len(ca), len(cb))
    ca, cb = ca[:n], cb[:n]
    both = (np.linalg.norm(ca, axis=1) > 0) & (np.linalg.norm(cb, axis=1) > 0)
    if not both.any():
        return 0.0
    return float((ca[both] * cb[both]).sum(axis=1).mean())
