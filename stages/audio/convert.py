"""Bring any waveform to the model's form: float32 stereo at 48 kHz within [-1, 1].

Upstream ACE-Step loads source audio by duplicating mono to stereo, resampling to 48 kHz and clamping,
and guards decoded audio with ``wav /= max(1, peak)``; these are those steps, one function each, on
``[channels, samples]`` tensors (the peak guard also takes a leading batch dimension).
"""

from __future__ import annotations

import torch

from prefect_acestep.stages.errors import AudioError

RESAMPLE_QUALITY = "VHQ"
"""soxr's very-high-quality band-limited resampler (``io.load_audio`` streams through it): source
audio is resampled once, on import, and conditions every later stage, so spending a few
milliseconds more per minute of audio is cheap."""


def to_stereo(audio: torch.Tensor, *, source: str = "audio") -> torch.Tensor:
    """Duplicate mono to two channels; stereo passes through.

    More than two channels is an error rather than a guessed downmix: channel layouts (5.1, 7.1,
    ambisonics, multitrack stems) differ, and a wrong guess would silently drop the vocals.
    """
    channels = audio.shape[0]
    if channels == 1:
        return audio.expand(2, -1).contiguous()
    if channels == 2:
        return audio
    raise AudioError(
        f"{source}: has {channels} channels; only mono and stereo are supported "
        "(downmix it to stereo first, e.g. `ffmpeg -i in -ac 2 out.wav`)"
    )


def clamp(audio: torch.Tensor) -> torch.Tensor:
    """Clip to [-1, 1], the range every consumer (VAE encoder, PCM writers) assumes."""
    return audio.clamp(-1.0, 1.0)


def peak_guard(audio: torch.Tensor) -> torch.Tensor:
    """Scale each item down to a peak of 1 if it exceeds it (``wav /= max(1, peak)``).

    Scaling instead of clipping keeps a decoder's slightly-hot output undistorted. Per item: the
    peak is taken over the last two dims (channels, samples), so one loud item of a batch does not
    quieten the others. NaN/Inf cannot be guarded and is an error.
    """
    if not bool(torch.isfinite(audio).all()):
        raise AudioError("audio contains NaN or Inf samples; refusing to scale or write it")
    if audio.numel() == 0:
        return audio
    peak = audio.abs().amax(dim=(-2, -1), keepdim=True)
    return audio / peak.clamp(min=1.0)


def peak_normalize(audio: torch.Tensor, target_dbfs: float) -> torch.Tensor:
    """Scale ``[C, S]`` audio so that its peak is ``target_dbfs`` (upstream's optional output
    normalisation, -1 dBFS by default there); near-silence (peak < 1e-6) is left as it is."""
    if target_dbfs > 0:
        raise ValueError(f"normalize_dbfs: a peak level must be <= 0 dBFS, got {target_dbfs}")
    peak = float(audio.abs().max())
    if peak < 1e-6:
        return audio
    return audio * (10.0 ** (target_dbfs / 20.0) / peak)
