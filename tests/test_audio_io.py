"""Audio read/write on real files: formats, channel handling, resampling, clamping, peak guard,
metadata embedded in the file and read back, and atomic writes that leave nothing behind."""

from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile as sf
import torch

from prefect_acestep.stages.audio import load_audio, peak_guard, read_audio_metadata, write_audio
from prefect_acestep.stages.errors import AudioError

SR = 48_000


def sine(freq: float, seconds: float, rate: int, amp: float = 0.5, channels: int = 2) -> np.ndarray:
    """Frames-first float32 sine, as soundfile writes it."""
    t = np.arange(int(round(seconds * rate))) / rate
    wave = (amp * np.sin(2 * math.pi * freq * t)).astype(np.float32)
    return np.repeat(wave[:, None], channels, axis=1)


def dominant_frequency(signal: torch.Tensor, rate: int) -> float:
    """Peak of the magnitude spectrum, refined by parabolic interpolation between bins."""
    x = signal.double().numpy()
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    k = int(np.argmax(spectrum))
    a, b, c = spectrum[k - 1], spectrum[k], spectrum[k + 1]
    offset = 0.5 * (a - c) / (a - 2 * b + c)
    return (k + offset) * rate / len(x)


def files_in(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# --- reading -----------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".wav", ".flac"])
def test_lossless_roundtrip_is_exact_to_24_bits(tmp_path, suffix):
    gen = torch.Generator().manual_seed(0)
    audio = (torch.rand(2, SR, generator=gen) - 0.5) * 1.8
    path = write_audio(tmp_path / f"x{suffix}", audio)
    loaded = load_audio(path)
    assert loaded.dtype == torch.float32 and loaded.shape == (2, SR)
    assert torch.max(torch.abs(loaded - audio)).item() < 2.0 / 2**23
    assert sf.info(str(path)).subtype == "PCM_24"


def test_mono_is_duplicated_to_stereo(tmp_path):
    mono = sine(440, 0.5, SR, channels=1)
    sf.write(tmp_path / "mono.wav", mono, SR, subtype="FLOAT")
    loaded = load_audio(tmp_path / "mono.wav")
    assert loaded.shape == (2, mono.shape[0])
    assert torch.equal(loaded[0], loaded[1])
    assert torch.allclose(loaded[0], torch.from_numpy(mono[:, 0]))


@pytest.mark.parametrize("rate", [44_100, 22_050, 96_000])
@pytest.mark.parametrize("suffix", [".wav", ".flac"])
def test_resampling_keeps_duration_and_pitch(tmp_path, rate, suffix):
    seconds, freq = 1.5, 1000.0
    sf.write(tmp_path / f"s{suffix}", sine(freq, seconds, rate), rate, subtype="PCM_24")
    loaded = load_audio(tmp_path / f"s{suffix}")
    assert abs(loaded.shape[1] - seconds * SR) <= 2
    assert dominant_frequency(loaded[0], SR) == pytest.approx(freq, abs=0.5)
    # band-limited resampling: the sine keeps its level (no aliasing loss, no gain)
    middle = loaded[0, SR // 4 : -SR // 4]
    assert middle.abs().max().item() == pytest.approx(0.5, abs=0.01)


def test_out_of_range_samples_are_clamped(tmp_path):
    data = np.array([[1.7, -2.5], [0.25, -0.75], [-1.0, 1.0], [3.0, 0.0]], dtype=np.float32)
    sf.write(tmp_path / "hot.wav", data, SR, subtype="FLOAT")
    loaded = load_audio(tmp_path / "hot.wav")
    expected = torch.tensor([[1.0, 0.25, -1.0, 1.0], [-1.0, -0.75, 1.0, 0.0]])
    assert torch.equal(loaded, expected)


def test_lossy_formats_load_with_pitch_preserved(tmp_path):
    for suffix in (".ogg", ".mp3"):
        path = write_audio(tmp_path / f"s{suffix}", torch.from_numpy(sine(660, 1.0, SR).T.copy()))
        loaded = load_audio(path)
        assert loaded.shape[0] == 2 and abs(loaded.shape[1] - SR) < 0.1 * SR, suffix
        assert dominant_frequency(loaded[0], SR) == pytest.approx(660, abs=2), suffix


def test_silence_is_accepted(tmp_path):
    sf.write(tmp_path / "quiet.flac", np.zeros((SR // 10, 2), dtype=np.float32), SR)
    loaded = load_audio(tmp_path / "quiet.flac")
    assert loaded.shape == (2, SR // 10) and not loaded.any()


def test_zero_samples_is_an_error(tmp_path):
    sf.write(tmp_path / "empty.wav", np.zeros((0, 2), dtype=np.float32), SR)
    with pytest.raises(AudioError, match=r"empty\.wav: contains no audio samples"):
        load_audio(tmp_path / "empty.wav")


def test_more_than_two_channels_is_an_error(tmp_path):
    sf.write(tmp_path / "surround.wav", np.zeros((100, 6), dtype=np.float32), SR)
    with pytest.raises(AudioError, match="has 6 channels"):
        load_audio(tmp_path / "surround.wav")


def test_nan_samples_are_an_error(tmp_path):
    data = np.zeros((100, 2), dtype=np.float32)
    data[50, 1] = np.nan
    sf.write(tmp_path / "nan.wav", data, SR, subtype="FLOAT")
    with pytest.raises(AudioError, match="NaN or Inf"):
        load_audio(tmp_path / "nan.wav")


def test_too_long_is_refused_from_the_header(tmp_path):
    sf.write(tmp_path / "long.wav", sine(100, 2.0, 8000), 8000)
    with pytest.raises(AudioError, match=r"is 2\.0 s long; at most 1\.5 s"):
        load_audio(tmp_path / "long.wav", max_seconds=1.5)
    assert load_audio(tmp_path / "long.wav", max_seconds=2.0).shape[1] == 2 * SR


def test_non_audio_and_missing_files_are_errors(tmp_path):
    (tmp_path / "notes.wav").write_text("these are not samples\n" * 50)
    with pytest.raises(AudioError, match=r"notes\.wav: not a readable audio file"):
        load_audio(tmp_path / "notes.wav")
    with pytest.raises(AudioError, match="no such audio file"):
        load_audio(tmp_path / "absent.flac")
    with pytest.raises(AudioError, match="no such audio file"):
        load_audio(tmp_path)


# --- writing -----------------------------------------------------------------------------------


def test_peak_guard_scales_instead_of_clipping(tmp_path):
    audio = torch.from_numpy(sine(220, 0.5, SR, amp=2.0).T.copy())
    path = write_audio(tmp_path / "loud.wav", audio)
    back, _ = sf.read(path, dtype="float32", always_2d=True)
    assert np.abs(back).max() == pytest.approx(1.0, abs=1e-4)
    assert np.allclose(back.T, audio.numpy() / 2.0, atol=1e-4)


def test_peak_guard_never_raises_quiet_audio(tmp_path):
    audio = torch.from_numpy(sine(220, 0.5, SR, amp=0.3).T.copy())
    back, _ = sf.read(write_audio(tmp_path / "quiet.flac", audio), dtype="float32", always_2d=True)
    assert np.allclose(back.T, audio.numpy(), atol=1e-5)


def test_peak_guard_is_per_batch_item():
    batch = torch.zeros(2, 2, 10)
    batch[0, 1, 3] = -3.0
    batch[0, 0, 4] = 1.5
    batch[1, 0, 2] = 0.5
    guarded = peak_guard(batch)
    assert torch.allclose(guarded[0], batch[0] / 3.0)
    assert torch.equal(guarded[1], batch[1])


def test_nan_audio_is_not_written(tmp_path):
    audio = torch.zeros(2, 100)
    audio[0, 5] = float("inf")
    with pytest.raises(AudioError, match="NaN or Inf"):
        write_audio(tmp_path / "bad.wav", audio)
    assert files_in(tmp_path) == []


@pytest.mark.parametrize("shape", [(3, 100), (2, 2, 100), (100,), (2, 0)])
def test_bad_shapes_are_refused(tmp_path, shape):
    with pytest.raises(AudioError):
        write_audio(tmp_path / "bad.wav", torch.zeros(shape))
    assert files_in(tmp_path) == []


def test_batch_of_one_and_mono_are_written(tmp_path):
    write_audio(tmp_path / "b.wav", torch.full((1, 2, 50), 0.25))
    write_audio(tmp_path / "m.wav", torch.full((1, 50), 0.25))
    assert sf.info(str(tmp_path / "b.wav")).channels == 2
    assert sf.info(str(tmp_path / "m.wav")).channels == 1


def test_format_follows_the_suffix(tmp_path):
    audio = torch.zeros(2, 1000)
    assert sf.info(str(write_audio(tmp_path / "a.flac", audio))).format == "FLAC"
    assert sf.info(str(write_audio(tmp_path / "a.ogg", audio))).format == "OGG"
    assert sf.info(str(write_audio(tmp_path / "a.AIFF", audio))).format == "AIFF"
    assert sf.info(str(write_audio(tmp_path / "a.w64", audio))).format == "W64"
    with pytest.raises(AudioError, match="cannot tell the audio format"):
        write_audio(tmp_path / "a.xyz", audio)
    with pytest.raises(AudioError, match="cannot write WAV audio"):
        write_audio(tmp_path / "a.wav", audio, subtype="VORBIS")
    assert files_in(tmp_path) == ["a.AIFF", "a.flac", "a.ogg", "a.w64"]


def test_sample_rate_and_subtype_are_honoured(tmp_path):
    info = sf.info(str(write_audio(tmp_path / "a.wav", torch.zeros(2, 441), 44_100, subtype="FLOAT")))
    assert (info.samplerate, info.subtype, info.frames) == (44_100, "FLOAT", 441)


def test_write_replaces_atomically_and_leaves_no_temporaries(tmp_path):
    target = tmp_path / "out.wav"
    write_audio(target, torch.full((2, 100), 0.5))
    write_audio(target, torch.full((2, 200), -0.25))
    assert files_in(tmp_path) == ["out.wav"]
    assert sf.info(str(target)).frames == 200


# --- metadata ----------------------------------------------------------------------------------

PARAMS = {
    "stage_type": "generate",
    "caption": "dreamy lo-fi, café piano, 80 bpm ♪",
    "lyrics": "[verse]\n" + "la la lumière\n" * 800,  # ~12 KB: past libsndfile's 2 KB WAV INFO read limit
    "seed": 4_294_967_295,
    "guidance_scale": 7.5,
    "checkpoint_steps": [4, 6],
    "duration": None,
    "keyscale": "",
}


@pytest.mark.parametrize(
    ("suffix", "repeat"),
    [(".wav", 1), (".wav", 3), (".flac", 1), (".flac", 8), (".ogg", 8), (".mp3", 8)],
)
def test_metadata_roundtrip(tmp_path, suffix, repeat):
    params = {**PARAMS, "lyrics": PARAMS["lyrics"] * repeat}  # JSON of ~15 KB per repeat
    path = write_audio(tmp_path / f"m{suffix}", torch.zeros(2, SR // 10), metadata=params)
    assert read_audio_metadata(path) == params
    assert files_in(tmp_path) == [f"m{suffix}"]


def test_small_metadata_fits_formats_with_small_tag_limits(tmp_path):
    small = {"seed": 7, "caption": "x"}
    for suffix in (".aiff", ".caf", ".opus"):
        assert read_audio_metadata(write_audio(tmp_path / f"s{suffix}", torch.zeros(2, 960), metadata=small)) == small


@pytest.mark.parametrize("suffix", [".wav", ".aiff", ".caf", ".opus", ".w64"])
def test_metadata_a_format_cannot_hold_is_an_error_and_the_old_file_survives(tmp_path, suffix):
    huge = {**PARAMS, "lyrics": PARAMS["lyrics"] * 6}  # ~90 KB: past the WAV, AIFF, CAF and Opus caps
    target = tmp_path / f"x{suffix}"
    write_audio(target, torch.full((2, 960), 0.5))
    before = target.read_bytes()
    with pytest.raises(AudioError, match=f"x\\{suffix}"):
        write_audio(target, torch.zeros(2, 960), metadata=huge)
    assert files_in(tmp_path) == [target.name]
    assert target.read_bytes() == before


def test_unserialisable_metadata_is_an_error(tmp_path):
    with pytest.raises(AudioError, match="not JSON-serialisable"):
        write_audio(tmp_path / "x.wav", torch.zeros(2, 10), metadata={"when": object()})
    with pytest.raises(AudioError, match="not JSON-serialisable"):
        write_audio(tmp_path / "x.wav", torch.zeros(2, 10), metadata={"g": float("nan")})
    assert files_in(tmp_path) == []


def test_files_without_our_metadata_read_as_empty(tmp_path):
    plain = write_audio(tmp_path / "plain.wav", torch.zeros(2, 10))
    assert read_audio_metadata(plain) == {}
    with sf.SoundFile(tmp_path / "foreign.flac", "w", SR, 2) as f:
        f.comment = "ripped by someone"
        f.write(np.zeros((10, 2), dtype=np.float32))
    assert read_audio_metadata(tmp_path / "foreign.flac") == {}
    assert read_audio_metadata(write_audio(tmp_path / "e.wav", torch.zeros(2, 10), metadata={})) == {}


def test_damaged_metadata_is_an_error(tmp_path):
    with sf.SoundFile(tmp_path / "cut.wav", "w", SR, 2) as f:
        f.comment = '{"prefect-acestep":{"seed":1'
        f.write(np.zeros((10, 2), dtype=np.float32))
    with pytest.raises(AudioError, match=r"cut\.wav: its prefect-acestep metadata is damaged"):
        read_audio_metadata(tmp_path / "cut.wav")


def test_reading_metadata_of_a_missing_or_non_audio_file_is_an_error(tmp_path):
    with pytest.raises(AudioError, match="cannot read audio metadata"):
        read_audio_metadata(tmp_path / "absent.wav")
    (tmp_path / "text.flac").write_text("hello")
    with pytest.raises(AudioError, match="cannot read audio metadata"):
        read_audio_metadata(tmp_path / "text.flac")
