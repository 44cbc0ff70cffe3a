"""What the embedded model's music means, measured on decoded audio (not on latents): it is in
the requested key and tempo, and every task does to the audio what it does in ACE-Step.

Each case renders a few seconds through the shared diffusion loop (few steps), so the suite stays
fast; thresholds are the issue's (>= 80% of pitched energy in the scale, tempo within 5%)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prefect_acestep.stages.backends.embedded import EmbeddedBackend
from prefect_acestep.stages.backends.embedded.harmony import parse_keyscale
from prefect_acestep.stages.backends.protocol import ConditionSpec
from prefect_acestep.stages.engine.loop import LoopRequest, run_loop
from prefect_acestep.stages.engine.repaint import RepaintSeams
from prefect_acestep.stages.geometry import SAMPLE_RATE
from prefect_acestep.stages.vocabulary import KEYS, key_parts

import audio_analysis as aa

STRICT = RepaintSeams("strict")
"""The source exactly outside the window: what these tests measure the window against."""

SECONDS = 8.0
FRAMES = int(SECONDS * 25)


@pytest.fixture(scope="module")
def turbo() -> EmbeddedBackend:
    return EmbeddedBackend("turbo")


@pytest.fixture(scope="module")
def base() -> EmbeddedBackend:
    return EmbeddedBackend("base")


def _spec(**fields) -> ConditionSpec:
    values = dict(task="text2music", caption="pop song", keyscale="C major", bpm=120, timesignature="4")
    values.update(fields)
    return ConditionSpec(**values)


def _run(
    backend: EmbeddedBackend, spec: ConditionSpec, seeds: list[int], frames: int = FRAMES, **fields
) -> torch.Tensor:
    variant = backend.identity.variant
    if variant == "base":
        fields.setdefault("steps", 8)
    return run_loop(backend, LoopRequest(cond=spec, seeds=seeds, frames=frames, variant=variant, **fields)).x0


def _sample(seconds: float) -> int:
    return int(round(seconds * SAMPLE_RATE))


@pytest.mark.parametrize("keyscale", ["C major", "F# minor", "Bb major", "E minor", "A major"])
def test_music_is_in_the_requested_key(turbo: EmbeddedBackend, keyscale: str) -> None:
    key = parse_keyscale(keyscale)
    parallel = "minor" if key.mode == "major" else "major"
    audio = turbo.vae_decode(_run(turbo, _spec(keyscale=keyscale), seeds=[1, 2]))
    for wave in audio:
        energy = aa.pitch_class_energy(wave)
        assert aa.in_scale_ratio(energy, key.tonic, key.mode) >= 0.8
        assert aa.in_scale_ratio(energy, key.tonic, key.mode) > aa.in_scale_ratio(energy, key.tonic, parallel) + 0.05
        assert aa.bass_pitch_class(wave, 0.1, 1.0) == key.tonic  # it opens ...
        assert aa.bass_pitch_class(wave, SECONDS - 1.0, SECONDS - 0.1) == key.tonic  # ... and cadences on the tonic


KEY_FINDER_PIECES = [("pop song", 120), ("warm electric piano ballad with soft drums and a round bass", 96)]
"""The full band at the semantic tests' tempo, and the demo deployment's caption and tempo."""


@pytest.mark.parametrize("keyscale", KEYS)
def test_a_standard_key_finder_names_every_requested_key(turbo: EmbeddedBackend, keyscale: str) -> None:
    """Krumhansl-Schmuckler on the chroma of the decoded audio names the requested key, not its
    dominant or relative key, for all 24 keys; the scale holds >= 80% of the tonal energy and the
    onsets pulse at the requested tempo (within 5%)."""
    tonic, mode = key_parts(keyscale)
    for caption, bpm in KEY_FINDER_PIECES:
        audio = turbo.vae_decode(_run(turbo, _spec(caption=caption, keyscale=keyscale, bpm=bpm), seeds=[1, 2]))
        for seed, wave in zip((1, 2), audio):
            energy = aa.pitch_class_energy(wave)
            assert aa.find_key(energy) == (tonic, mode), (caption, seed)
            assert aa.in_scale_ratio(energy, tonic, mode) >= 0.8, (caption, seed)
            assert abs(aa.estimate_tempo(wave) - bpm) / bpm < 0.05, (caption, seed)


@pytest.mark.parametrize(
    ("caption", "bpm"), [("pop song", 90), ("pop song", 120), ("pop song", 140), ("house track", 124)]
)
def test_music_pulses_at_the_requested_tempo(turbo: EmbeddedBackend, caption: str, bpm: int) -> None:
    audio = turbo.vae_decode(_run(turbo, _spec(caption=caption, bpm=bpm), seeds=[1, 2]))
    for wave in audio:
        assert abs(aa.estimate_tempo(wave) - bpm) / bpm < 0.05


def test_same_seed_same_music_other_seed_other_music(turbo: EmbeddedBackend) -> None:
    a, b = turbo.vae_decode(_run(turbo, _spec(), seeds=[5, 5]))
    c = turbo.vae_decode(_run(turbo, _spec(), seeds=[6]))[0]
    assert torch.equal(a, b)
    assert (a - c).norm() > 0.5 * a.norm()
    assert aa.chroma_similarity(a, c) < 0.95  # another arrangement, not the same one re-voiced


def test_refine_strays_further_from_its_input_the_more_it_denoises(turbo: EmbeddedBackend) -> None:
    init = _run(turbo, _spec(), seeds=[11])
    init_audio = turbo.vae_decode(init)[0]
    closeness = []
    for t_start in (0.3, 0.5, 0.9):
        inits = init.expand(3, -1, -1).contiguous()
        spec = _spec(caption="calm ballad", keyscale="E minor")
        out = _run(turbo, spec, seeds=[1, 2, 3], init=inits, t_start=t_start)
        closeness.append(np.mean([aa.chroma_similarity(w, init_audio) for w in turbo.vae_decode(out)]))
    assert closeness[0] > closeness[1] > closeness[2]


def test_repaint_regenerates_only_the_window(turbo: EmbeddedBackend) -> None:
    source = _run(turbo, _spec(), seeds=[11])
    out = _run(turbo, _spec(task="repaint"), seeds=[5], source=source, repaint_window=(2.0, 4.0), repaint=STRICT)
    before, after = turbo.vae_decode(source)[0], turbo.vae_decode(out)[0]
    edge = 0.04  # one latent frame: a frame's sound fades into its neighbours'
    assert (after[:, : _sample(2.0 - edge)] - before[:, : _sample(2.0 - edge)]).abs().max() < 1e-6
    assert (after[:, _sample(4.0 + edge) :] - before[:, _sample(4.0 + edge) :]).abs().max() < 1e-6
    inside = slice(_sample(2.0 + edge), _sample(4.0 - edge))
    assert (after[:, inside] - before[:, inside]).norm() > 0.3 * before[:, inside].norm()
    key = parse_keyscale("C major")
    assert aa.in_scale_ratio(aa.pitch_class_energy(after[:, inside]), key.tonic, key.mode) >= 0.8


def test_cover_keeps_more_of_the_source_structure_the_stronger_it_is(turbo: EmbeddedBackend) -> None:
    source = _run(turbo, _spec(), seeds=[11])
    source_audio = turbo.vae_decode(source)[0]
    cover_spec = _spec(task="cover", caption="calm piano ballad", keyscale="E minor")
    similarity = []
    for strength in (0.0, 0.75, 1.0):
        out = turbo.vae_decode(_run(turbo, cover_spec, seeds=[1, 2, 3], source=source, cover_strength=strength))
        similarity.append(np.mean([aa.chroma_similarity(w, source_audio) for w in out]))
    assert similarity[0] < similarity[1] < similarity[2]
    assert similarity[2] > 0.8
    # ... while taking the new caption's style: a calm piano ballad has no drums.
    drums = lambda wave: aa.band_energy(wave, 5000, 20000) / aa.band_energy(wave, 20, 20000)  # noqa: E731
    assert drums(out[0]) < 0.1 * drums(source_audio)


@pytest.fixture(scope="module")
def band(turbo: EmbeddedBackend) -> torch.Tensor:
    return _run(turbo, _spec(caption="pop song with bass, piano, flute and drums"), seeds=[11])


def _register_share(wave: torch.Tensor) -> dict[str, float]:
    energy = aa.register_energy(wave)
    total = sum(energy.values())
    return {name: value / total for name, value in energy.items()}


def test_extract_keeps_one_track(base: EmbeddedBackend, band: torch.Tensor) -> None:
    mix = base.vae_decode(band)[0]
    hats = aa.band_energy(mix, 5000, 20000)
    bass = base.vae_decode(_run(base, _spec(task="extract", track_names=("bass",)), seeds=[1], source=band))[0]
    assert _register_share(bass)["bass"] > 0.5 and _register_share(bass)["high"] < 0.01
    assert aa.band_energy(bass, 5000, 20000) < 1e-3 * hats
    lead = base.vae_decode(_run(base, _spec(task="extract", track_names=("vocals",)), seeds=[1], source=band))[0]
    assert _register_share(lead)["high"] > 0.9
    drums = base.vae_decode(_run(base, _spec(task="extract", track_names=("drums",)), seeds=[1], source=band))[0]
    assert aa.band_energy(drums, 5000, 20000) > 0.9 * hats
    def upper(wave: torch.Tensor) -> float:  # the registers a kick drum does not reach
        energy = aa.register_energy(wave)
        return energy["mid"] + energy["high"]

    assert upper(drums) < 0.01 * upper(mix)
    assert abs(aa.estimate_tempo(drums) - 120) < 6


def test_lego_adds_a_bass_line_that_follows_the_source(base: EmbeddedBackend, turbo: EmbeddedBackend) -> None:
    source = _run(turbo, _spec(caption="piano and drums"), seeds=[12])
    out = _run(base, _spec(task="lego", track_names=("bass",)), seeds=[4], source=source, repaint_window=(2.0, 6.0),
               repaint=STRICT)
    before, after = base.vae_decode(source)[0], base.vae_decode(out)[0]
    added = after - before
    edge = _sample(0.04)
    assert added[:, : _sample(2.0) - edge].abs().max() < 1e-6 and added[:, _sample(6.0) + edge :].abs().max() < 1e-6
    share = _register_share(added)
    assert share["bass"] + share["low"] > 0.9 and share["high"] < 0.01
    for bar_start in (2.0, 4.0):  # 120 bpm in 4: a bar is two seconds
        note = aa.bass_pitch_class(added, bar_start + 0.1, bar_start + 0.9)
        chord = np.argsort(aa.pitch_class_energy(before[:, _sample(bar_start) : _sample(bar_start + 1.0)]))[-3:]
        assert note in chord, (bar_start, note, chord)


def test_complete_adds_the_named_tracks_and_keeps_the_source(base: EmbeddedBackend, turbo: EmbeddedBackend) -> None:
    source = _run(turbo, _spec(caption="bass solo"), seeds=[13])
    out = _run(base, _spec(task="complete", track_names=("keyboard", "drums")), seeds=[4], source=source)
    before, after = base.vae_decode(source)[0], base.vae_decode(out)[0]
    added = after - before
    assert aa.band_energy(before, 5000, 20000) < 0.01 * aa.band_energy(added, 5000, 20000)
    share = _register_share(added)
    assert share["mid"] > 0.6
    for start in np.arange(0.0, SECONDS, 2.0):
        window = (start + 0.1, start + 0.9)
        assert aa.bass_pitch_class(after, *window) == aa.bass_pitch_class(before, *window)


def test_guidance_raises_key_adherence(base: EmbeddedBackend) -> None:
    """Base is not guidance-distilled: its conditional prior keeps some of the unconditional one,
    so with g = 1 some seeds wander off the key, and CFG (APG, g > 1) pulls them back."""
    key = parse_keyscale("D major")
    spec = _spec(keyscale="D major")
    adherence = {}
    for scale in (1.0, 4.0):
        audio = base.vae_decode(_run(base, spec, seeds=list(range(8)), frames=100, guidance_scale=scale))
        adherence[scale] = np.mean([aa.in_scale_ratio(aa.pitch_class_energy(w), key.tonic, key.mode) for w in audio])
    assert adherence[4.0] > adherence[1.0] + 0.01
    assert adherence[4.0] > 0.95


def test_music_stops_at_the_requested_duration(turbo: EmbeddedBackend) -> None:
    audio = turbo.vae_decode(_run(turbo, _spec(duration_s=5.0), seeds=[3]))[0]
    played, after = audio[:, : _sample(5.0)], audio[:, _sample(5.1) :]
    assert after.pow(2).mean() < 1e-2 * played.pow(2).mean()  # what is left is the prior's spread, 20 dB down


def test_cover_switch_tells_the_model_to_drop_its_cache(turbo: EmbeddedBackend) -> None:
    source = _run(turbo, _spec(), seeds=[11])
    before = turbo.cache_resets
    _run(turbo, _spec(task="cover"), seeds=[1], source=source, cover_strength=0.5)
    assert turbo.cache_resets - before == 2  # at the start of the run and at the switch
