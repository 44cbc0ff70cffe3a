"""What a decoded stage sounds and looks like, small enough to live inside a Prefect artifact.

Prefect's UI renders a markdown artifact's ``<audio controls src="data:...">`` as a player and a
data-URI image as a picture, so a run's page can play and show every decoded stage without anyone
reaching the worker's disk. Both are built here from the decoded file, as plain bytes and text
(no Prefect calls), so they can be checked on their output:

- the **player** plays an Ogg Opus preview: the first ``PREVIEW_SECONDS`` of the clip, stereo at
  48 kHz and about 38 kbit/s (libsndfile's Opus encoder through soundfile). Opus keeps
  the whole audible band at that rate, where Vorbis at the same size must drop to a 24 kHz sample
  rate and loses everything above 12 kHz (hats, air, the top of the piano);
- the **picture** is a spectrogram of the whole clip on a musical (logarithmic) frequency axis with
  a waveform strip under it, drawn and encoded (WebP) by Pillow; the STFT is ``torch.stft``.

Pillow rather than matplotlib: it is one wheel with no dependencies of its own (matplotlib brings
six packages and a font cache it builds on first import), it ships its own font, and a picture this
plain needs no plotting library: a colour ramp (``ImageOps.colorize``), lines and a few labels.
"""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from PIL import Image, ImageDraw, ImageFont, ImageOps

from prefect_acestep.stages.audio.io import load_audio
from prefect_acestep.stages.geometry import SAMPLE_RATE

PREVIEW_SECONDS = 20.0
"""Longest preview a player gets; the full-length file is named next to it."""
PREVIEW_OPUS_LEVEL = 0.95
"""libsndfile's Opus compression level (0 = best quality, 1 = smallest); 0.95 encodes stereo music at
48 kHz at about 38 kbit/s (measured: 39 KB for 8 s, 96 KB for the 20 s cap)."""
PREVIEW_KBPS = 48
"""The bitrate no preview reaches, the Ogg container's overhead on a one-second clip included
(checked by the tests): at most 6 KB a second, 120 KB at the length cap."""

PICTURE_WIDTH = 640
"""Pixels of the time axis: the width of an artifact's text column in Prefect's UI."""
SPECTRUM_HEIGHT = 150
WAVE_HEIGHT = 34
MARGIN_LEFT, MARGIN_BOTTOM, GAP = 40, 16, 3
LOWEST_HZ, HIGHEST_HZ = 40.0, 16_000.0
"""The frequency axis: from the lowest bass notes to the top of what the VAE reproduces."""
DYNAMIC_RANGE_DB = 80.0
N_FFT = 4096
"""85 ms windows: 11.7 Hz bins, fine enough to tell bass notes apart at 40 Hz-200 Hz."""
PICTURE_QUALITY = 82
BACKGROUND, INK, FAINT = (17, 17, 20), (205, 205, 214), (110, 110, 122)
RAMP = {"black": "#000004", "mid": "#b73779", "white": "#fcfdbf"}
"""A magma-like ramp: quiet is dark, loud is bright, on both of the UI's themes."""


@dataclass(frozen=True)
class Preview:
    """A decoded sample's player and picture, encoded for a data URI."""

    audio: bytes
    """Ogg Opus of the first ``previewed_s`` seconds."""
    picture: bytes
    """WebP spectrogram and waveform of the whole clip."""
    previewed_s: float
    duration_s: float

    @property
    def audio_uri(self) -> str:
        return "data:audio/ogg;base64," + base64.b64encode(self.audio).decode("ascii")

    @property
    def picture_uri(self) -> str:
        return "data:image/webp;base64," + base64.b64encode(self.picture).decode("ascii")

    @property
    def size_bytes(self) -> int:
        """Bytes both take in an artifact (base64: 4 characters per 3 bytes)."""
        return len(self.audio_uri) + len(self.picture_uri)


def preview_of(path: str | Path) -> Preview:
    """The player and the picture of a decoded audio file (any format ``load_audio`` reads)."""
    audio = load_audio(path).numpy()  # [2, S] float32 at 48 kHz
    duration = audio.shape[1] / SAMPLE_RATE
    previewed = min(duration, PREVIEW_SECONDS)
    return Preview(
        audio=opus_preview(audio[:, : round(previewed * SAMPLE_RATE)]),
        picture=spectrogram_picture(audio, previewed_s=previewed),
        previewed_s=previewed,
        duration_s=duration,
    )


def opus_preview(audio: np.ndarray) -> bytes:
    """``[channels, S]`` at 48 kHz as Ogg Opus bytes (see ``PREVIEW_OPUS_LEVEL``)."""
    out = io.BytesIO()
    sf.write(out, audio.T, SAMPLE_RATE, format="OGG", subtype="OPUS", compression_level=PREVIEW_OPUS_LEVEL)
    return out.getvalue()


def _log_spectrum(mono: np.ndarray, columns: int) -> np.ndarray:
    """``[SPECTRUM_HEIGHT, columns]`` levels in dB below the loudest point, top row highest."""
    samples = torch.from_numpy(np.ascontiguousarray(mono))
    hop = max(256, math.ceil(len(mono) / columns))
    window = torch.hann_window(N_FFT)
    power = torch.stft(samples, N_FFT, hop_length=hop, window=window, return_complex=True).abs().square()
    levels = 10.0 * torch.log10(power + 1e-12).numpy()  # [bins, frames]
    bin_hz = SAMPLE_RATE / N_FFT
    rows = np.geomspace(HIGHEST_HZ, LOWEST_HZ, SPECTRUM_HEIGHT) / bin_hz  # fractional bin of each row
    below = np.floor(rows).astype(int)
    share = (rows - below)[:, None]
    on_rows = (1 - share) * levels[below] + share * levels[below + 1]
    return on_rows - on_rows.max()


def _columns(values: np.ndarray, width: int) -> np.ndarray:
    """``values`` ``[rows, n]`` resampled to ``width`` columns (Pillow's box filter on floats)."""
    image = Image.fromarray(values.astype(np.float32), mode="F")
    return np.asarray(image.resize((width, values.shape[0]), Image.Resampling.BOX))


def _tick_step(duration: float) -> float:
    """Seconds between time labels: a round step giving at most eight labels."""
    return next(step for step in (0.5, 1, 2, 5, 10, 15, 30, 60, 120) if duration / step <= 8)


def spectrogram_picture(audio: np.ndarray, previewed_s: float | None = None) -> bytes:
    """A spectrogram (log frequency, 80 dB range) over a waveform strip of ``[channels, S]`` audio,
    labelled in Hz and seconds, as WebP. When only the first ``previewed_s`` seconds play in the
    preview, a thin line marks where the preview ends."""
    mono = audio.mean(axis=0).astype(np.float32)
    duration = len(mono) / SAMPLE_RATE
    width = PICTURE_WIDTH - MARGIN_LEFT
    spectrum = _columns(_log_spectrum(mono, width), width)
    shade = np.clip(255.0 * (1.0 + spectrum / DYNAMIC_RANGE_DB), 0, 255).astype(np.uint8)
    coloured = ImageOps.colorize(Image.fromarray(shade, mode="L"), **RAMP)

    height = SPECTRUM_HEIGHT + GAP + WAVE_HEIGHT + MARGIN_BOTTOM
    picture = Image.new("RGB", (PICTURE_WIDTH, height), BACKGROUND)
    picture.paste(coloured, (MARGIN_LEFT, 0))
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default(size=10)

    # The waveform: the highest and lowest sample under each pixel column.
    chunks = np.array_split(mono, width)
    wave_top = SPECTRUM_HEIGHT + GAP
    middle, reach = wave_top + WAVE_HEIGHT / 2, WAVE_HEIGHT / 2 - 1
    peak = max(float(np.abs(mono).max()), 1e-9)
    for x, chunk in enumerate(chunks):
        if len(chunk):
            high, low = float(chunk.max()) / peak, float(chunk.min()) / peak
            draw.line([(MARGIN_LEFT + x, middle - high * reach), (MARGIN_LEFT + x, middle - low * reach)], fill=INK)

    ratio = math.log(HIGHEST_HZ / LOWEST_HZ)
    for hz, label in ((100, "100"), (1000, "1k"), (10_000, "10k")):
        y = (SPECTRUM_HEIGHT - 1) * math.log(HIGHEST_HZ / hz) / ratio
        draw.line([(MARGIN_LEFT - 4, y), (MARGIN_LEFT - 1, y)], fill=FAINT)
        draw.text((MARGIN_LEFT - 6, y), label, fill=INK, font=font, anchor="rm")
    draw.text((MARGIN_LEFT - 6, SPECTRUM_HEIGHT - 2), "Hz", fill=FAINT, font=font, anchor="rb")
    axis = height - MARGIN_BOTTOM
    step = _tick_step(duration)
    for tick in np.arange(0.0, duration + 1e-9, step):
        x = MARGIN_LEFT + (width - 1) * tick / duration
        draw.line([(x, axis), (x, axis + 3)], fill=FAINT)
        anchor = "lt" if tick == 0 else "rt" if x > PICTURE_WIDTH - 8 else "mt"
        draw.text((x, axis + 4), f"{tick:g}", fill=INK, font=font, anchor=anchor)
    draw.text((MARGIN_LEFT - 6, axis + 4), "s", fill=FAINT, font=font, anchor="rt")
    if previewed_s is not None and previewed_s < duration:
        x = MARGIN_LEFT + (width - 1) * previewed_s / duration
        draw.line([(x, 0), (x, axis)], fill=INK)
        draw.text((x + 3, 2), "preview ends", fill=INK, font=font, anchor="lt")
    out = io.BytesIO()
    picture.save(out, format="WEBP", quality=PICTURE_QUALITY)
    return out.getvalue()
