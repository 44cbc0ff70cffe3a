"""Read any audio file into the model's form, and write waveforms out safely.

Reading accepts whatever libsndfile decodes (WAV, FLAC, OGG/Vorbis/Opus, MP3, AIFF, ...) and
returns float32 ``[2, S]`` at 48 kHz clamped to [-1, 1]. Writing picks the container from the file
suffix, applies the peak guard, embeds the stage params, verifies they read back, and only then
renames the finished file into place.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import soxr
import torch

from prefect_acestep.stages.atomic import staged_output
from prefect_acestep.stages.audio.convert import RESAMPLE_QUALITY, clamp, peak_guard, to_stereo
from prefect_acestep.stages.audio.metadata import SOFTWARE, encode_comment, read_audio_metadata
from prefect_acestep.stages.errors import AudioError
from prefect_acestep.stages.geometry import MAX_DURATION_S, SAMPLE_RATE

MIN_RATE, MAX_RATE = 1_000, 768_000
"""Sample rates accepted from a file's header (libsndfile reads whatever a header claims)."""
MAX_DECODE_S = 2 * MAX_DURATION_S
"""No file decodes past this, whatever the caller allows: the longest input a stage reads is
``MAX_DURATION_S``; twice that leaves room for trimming on import."""
_DECODE_BLOCK = 1 << 16

WRITE_FORMATS: dict[str, tuple[str, str]] = {
    ".wav": ("WAV", "PCM_24"),
    ".flac": ("FLAC", "PCM_24"),
    ".ogg": ("OGG", "VORBIS"),
    ".oga": ("OGG", "VORBIS"),
    ".opus": ("OGG", "OPUS"),
    ".mp3": ("MP3", "MPEG_LAYER_III"),
    ".aif": ("AIFF", "PCM_24"),
    ".aiff": ("AIFF", "PCM_24"),
}
"""Suffix -> (libsndfile format, default subtype). PCM is 24-bit, not libsndfile's default 16:
outputs are often fed back as sources of later stages, and 16-bit would add audible dither-free
quantisation to quiet passages. Other suffixes naming a libsndfile format (``.caf``, ``.w64``) use
that format's default subtype."""


def load_audio(path: str | Path, *, max_seconds: float | None = None, source: str | None = None) -> torch.Tensor:
    """Decode ``path`` to float32 ``[2, S]`` at 48 kHz, clamped to [-1, 1].

    Zero samples, NaN/Inf samples, more than two channels, a sample rate outside
    ``MIN_RATE``..``MAX_RATE`` or (with ``max_seconds``; at most ``MAX_DECODE_S`` in any case) a
    longer duration are ``AudioError``s naming ``source`` (default: the path). All of these are
    read from the file's header before decoding, so a small file that claims hours of 8-channel
    audio at 192 kHz (a decompression bomb) is refused without decoding it. Decoding then goes
    block by block through a streaming resampler, stopping as soon as the file turns out longer
    than its header said: memory holds the 48 kHz result and one block, whatever the source rate.
    Silence is accepted: it is valid (if dull) conditioning.
    """
    path = Path(path)
    label = str(path) if source is None else source
    if not path.is_file():
        raise AudioError(f"{label}: no such audio file")
    limit = MAX_DECODE_S if max_seconds is None else min(max_seconds, MAX_DECODE_S)
    try:
        with sf.SoundFile(str(path)) as f:
            _check_header(f.frames, f.channels, f.samplerate, limit, label)
            data = _decode(f, math.floor(limit * f.samplerate), label)
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise AudioError(f"{label}: not a readable audio file ({exc})") from exc
    if data.shape[1] == 0:
        raise AudioError(f"{label}: contains no audio samples")
    return to_stereo(data.clamp_(-1.0, 1.0), source=label)


def _check_header(frames: int, channels: int, rate: int, max_seconds: float, label: str) -> None:
    if channels not in (1, 2):
        raise AudioError(
            f"{label}: has {channels} channels; only mono and stereo are supported "
            "(downmix it to stereo first, e.g. `ffmpeg -i in -ac 2 out.wav`)"
        )
    if not MIN_RATE <= rate <= MAX_RATE:
        raise AudioError(f"{label}: sample rate {rate} Hz; {MIN_RATE}..{MAX_RATE} Hz are accepted")
    if frames <= 0:
        raise AudioError(f"{label}: contains no audio samples")
    if frames / rate > max_seconds:
        raise AudioError(f"{label}: is {frames / rate:.1f} s long; at most {max_seconds:g} s is accepted")


def _decode(f: sf.SoundFile, max_frames: int, label: str) -> torch.Tensor:
    """``[C, S]`` float32 at 48 kHz, read and resampled block by block (soxr's stream resampler
    gives exactly its one-shot result) into one buffer sized from the header: the peak memory is
    the result plus one block (and one copy more for a file whose header misstates its length)."""
    stream = None
    if f.samplerate != SAMPLE_RATE:
        stream = soxr.ResampleStream(f.samplerate, SAMPLE_RATE, f.channels, dtype="float32", quality=RESAMPLE_QUALITY)
    out = torch.empty(f.channels, max(1, round(f.frames * SAMPLE_RATE / f.samplerate)))  # soxr's exact length
    filled = read = 0

    def place(chunk: np.ndarray) -> None:
        nonlocal out, filled
        if filled + chunk.shape[0] > out.shape[1]:  # longer than the header said (within max_frames)
            out = torch.cat([out, torch.empty(f.channels, max(chunk.shape[0], out.shape[1] // 2))], dim=1)
        out[:, filled : filled + chunk.shape[0]] = torch.from_numpy(chunk.T)
        filled += chunk.shape[0]

    for block in f.blocks(blocksize=_DECODE_BLOCK, dtype="float32", always_2d=True):
        read += block.shape[0]
        if read > max_frames:
            raise AudioError(
                f"{label}: decodes to more than {max_frames / f.samplerate:g} s (its header said "
                f"{f.frames / f.samplerate:.1f} s); refused"
            )
        if not np.isfinite(block).all():
            raise AudioError(f"{label}: contains NaN or Inf samples")
        place(block if stream is None else stream.resample_chunk(block))
    if stream is not None:
        place(stream.resample_chunk(np.zeros((0, f.channels), dtype=np.float32), last=True))
    return out if filled == out.shape[1] else out[:, :filled].contiguous()


def write_audio(
    path: str | Path,
    audio: torch.Tensor,
    sample_rate: int = SAMPLE_RATE,
    metadata: Mapping[str, Any] | None = None,
    *,
    subtype: str | None = None,
) -> Path:
    """Write ``audio`` (``[C, S]`` or ``[1, C, S]``, C = 1 or 2) atomically; return the path.

    The format comes from the suffix (see ``WRITE_FORMATS``). ``metadata`` (the stage params) is
    embedded as JSON and read back from the finished temporary file before it is published; a
    format that cannot carry it (W64 has no text tags; WAV, CAF, AIFF and Opus cap their size) is an
    ``AudioError`` rather than a file silently missing its params. ``None`` writes no tags at all.
    """
    path = Path(path)
    fmt, default_subtype = _format_for(path)
    waveform = _as_frames_first(audio, path)
    comment = None if metadata is None else encode_comment(metadata)
    try:
        with staged_output(path.parent, target=path) as staged:
            with sf.SoundFile(
                str(staged.tmp), "w", samplerate=sample_rate, channels=waveform.shape[1],
                format=fmt, subtype=default_subtype if subtype is None else subtype,
            ) as f:
                if comment is not None:  # before any samples: FLAC/OGG write tags in the header
                    f.software = SOFTWARE
                    f.comment = comment
                f.write(waveform)
            if metadata is not None:
                _verify_metadata(staged.tmp, metadata, path, len(comment or ""))
    except (sf.LibsndfileError, RuntimeError, ValueError, OSError) as exc:
        raise AudioError(f"{path}: cannot write {fmt} audio ({exc})") from exc
    return path


def _format_for(path: Path) -> tuple[str, str]:
    suffix = path.suffix.lower()
    if suffix in WRITE_FORMATS:
        return WRITE_FORMATS[suffix]
    fmt = suffix.lstrip(".").upper()
    if fmt and fmt in sf.available_formats():
        return fmt, sf.default_subtype(fmt)
    raise AudioError(
        f"{path}: cannot tell the audio format from suffix {path.suffix!r}; "
        f"use one of {', '.join(sorted(WRITE_FORMATS))} or another libsndfile format name"
    )


def _as_frames_first(audio: torch.Tensor, path: Path) -> np.ndarray:
    """``[C, S]`` (or a batch of one) -> peak-guarded float32 ``[S, C]`` as libsndfile wants it."""
    if audio.dim() == 3 and audio.shape[0] == 1:
        audio = audio[0]
    if audio.dim() != 2 or audio.shape[0] not in (1, 2):
        raise AudioError(f"{path}: expected audio shaped [channels<=2, samples] or [1, channels, samples], got {tuple(audio.shape)}")
    if audio.shape[1] == 0:
        raise AudioError(f"{path}: refusing to write audio with no samples")
    guarded = peak_guard(audio.detach().to(device="cpu", dtype=torch.float32))
    return np.ascontiguousarray(clamp(guarded).numpy().T)


def _verify_metadata(tmp: Path, metadata: Mapping[str, Any], path: Path, size: int) -> None:
    """A format that cannot hold the tags drops them, truncates them or breaks the file: all three
    show up as not reading back what was written."""
    expected = json.loads(json.dumps(dict(metadata)))
    try:
        found = read_audio_metadata(tmp)
    except AudioError:
        found = None
    if found != expected:
        raise AudioError(f"{path}: the {path.suffix} format cannot carry {size} bytes of metadata; write .flac")
