"""The variations flow: planning the candidates, the scores on real audio, and a real run on
Prefect's default task runner with the ranking artifact read back from the API."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from prefect import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from prefect_acestep.flows.variations import plan_variations, variations_flow
from prefect_acestep.stages.audio import write_audio
from prefect_acestep.stages.errors import InvalidStageRequest
from prefect_acestep.stages.requests import GenerateRequest
from prefect_acestep.stages.store import LatentStore
from prefect_acestep.tasks.scoring import key_adherence, loudness_dbfs, scale_pitch_classes, score_file

SR = 48_000
REQUEST = GenerateRequest(caption="dreamy synth pads over a slow pulse", keyscale="A minor", bpm=80,
                          duration=2.0, instrumental=True, inference_steps=4, seed=10)  # fmt: skip


def tones(midi_notes: list[int], seconds: float = 2.0, amplitude: float = 0.1) -> torch.Tensor:
    """A stereo chord of sine tones at the given MIDI pitches."""
    t = np.arange(int(seconds * SR)) / SR
    wave = sum(amplitude * np.sin(2 * np.pi * 440.0 * 2 ** ((m - 69) / 12) * t) for m in midi_notes)
    return torch.from_numpy(np.stack([wave, wave]).astype(np.float32))


# --- planning ------------------------------------------------------------------------------------


def test_seeds_give_one_variation_each():
    variations = plan_variations(REQUEST, seeds=[3, 9], n=None, param_sets=None)
    assert [v.params.seed for v in variations] == [3, 9]
    assert [v.changes for v in variations] == [{"seed": 3}, {"seed": 9}]
    assert all(v.params.keyscale == "A minor" and v.params.duration == 2.0 for v in variations)


def test_n_counts_up_from_the_seed_spaced_by_the_batch():
    batched = REQUEST.model_copy(update={"batch_size": 3})
    assert [v.params.seed for v in plan_variations(batched, None, 3, None)] == [10, 13, 16]
    assert [v.params.seed for v in plan_variations(REQUEST, None, None, None)] == [10, 11, 12, 13]
    drawn = plan_variations(REQUEST.model_copy(update={"seed": -1}), None, 2, None)
    assert drawn[1].params.seed == drawn[0].params.seed + 1 and drawn[0].params.seed >= 0


def test_param_sets_override_request_fields():
    variations = plan_variations(REQUEST, None, None, [{"variant": "sft", "guidance_scale": 5.0}, {"bpm": 120}])
    assert variations[0].changes == {"variant": "sft", "guidance_scale": 5.0}
    assert variations[0].params.variant == "sft" and variations[0].params.guidance_scale == 5.0
    assert variations[1].changes == {"bpm": 120} and variations[1].params.seed == 10
    assert variations[1].label == "bpm=120"


@pytest.mark.parametrize(
    ("seeds", "n", "param_sets", "message"),
    [
        ([1], None, [{}], "not both"),
        ([1, 2], 3, None, "n=3 disagrees"),
        (None, 0, None, "between 1 and"),
        (None, None, [{"bpm": 10}], "param_sets[0]"),
        (None, None, [{}, {"stage_type": "refine", "init_latent_id": "x"}], "one stage type"),
        (None, None, [{"no_such_field": 1}], "param_sets[0]"),
        ([7, -5], None, None, "seeds[1]"),
    ],
)
def test_bad_variation_requests_fail_before_any_work(seeds, n, param_sets, message):
    with pytest.raises(InvalidStageRequest, match=message.replace("[", r"\[").replace("]", r"\]")):
        plan_variations(REQUEST, seeds, n, param_sets)


# --- scores --------------------------------------------------------------------------------------


def test_key_adherence_of_real_audio(tmp_path: Path):
    """A C major scale played as a chord is all in C major, mostly out of F# major."""
    c_major = [60, 62, 64, 65, 67, 69, 71]
    path = write_audio(tmp_path / "c.wav", tones(c_major))
    assert score_file(path, "key_adherence", "C major") > 0.99
    assert score_file(path, "key_adherence", "A minor") > 0.99  # the relative minor: the same notes
    assert score_file(path, "key_adherence", "F# major") < 0.35
    chromatic = tones(list(range(60, 72)))
    assert key_adherence(chromatic.numpy(), "C major") == pytest.approx(7 / 12, abs=0.03)


def test_key_names_and_loudness():
    assert scale_pitch_classes("B♭ major") == scale_pitch_classes("Bb major") == (10, 0, 2, 3, 5, 7, 9)
    assert scale_pitch_classes("F♯ minor") == (6, 8, 9, 11, 1, 2, 4)
    with pytest.raises(InvalidStageRequest, match="'H major'"):
        scale_pitch_classes("H major")
    sine = tones([69], amplitude=0.5).numpy()
    assert loudness_dbfs(sine) == pytest.approx(20 * np.log10(0.5 / np.sqrt(2)), abs=0.01)
    assert loudness_dbfs(np.zeros((2, SR))) == -200.0


def test_key_adherence_needs_a_key():
    with pytest.raises(InvalidStageRequest, match="needs a keyscale"):
        variations_flow.fn(REQUEST.model_copy(update={"keyscale": ""}), seeds=[1], rank_by="key_adherence")


# --- a real run ----------------------------------------------------------------------------------


@pytest.mark.usefixtures("prefect_server")
def test_variations_on_the_default_runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("ACE_LATENT_DIR", str(tmp_path / "latents"))
    monkeypatch.delenv("ACE_GPU_CONCURRENCY_LIMIT", raising=False)
    ranked = variations_flow(REQUEST, seeds=[21, 22, 23], rank_by="key_adherence", out_dir=str(tmp_path / "audio"))

    assert [entry.rank for entry in ranked] == [1, 2, 3]
    assert sorted(entry.score.seed for entry in ranked) == [21, 22, 23]
    scores = [entry.score.score for entry in ranked]
    assert scores == sorted(scores, reverse=True)
    store = LatentStore(tmp_path / "latents", ttl_hours=24)
    for entry in ranked:
        assert entry.score.score == score_file(entry.score.audio_path, "key_adherence", "A minor")
        assert Path(entry.score.audio_path).parent == tmp_path / "audio"
        assert store.record(entry.result.latent_id).seeds == [entry.score.seed]
        assert entry.changes == {"seed": entry.score.seed}

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["acestep-variations-ranking"])), limit=50
        )
    latest = max(artifacts, key=lambda artifact: artifact.created)
    assert "key_adherence" in latest.description
    rows = latest.data if isinstance(latest.data, list) else json.loads(latest.data)
    assert [row["latent_id"] for row in rows] == [entry.result.latent_id for entry in ranked]
    assert [row["seed"] for row in rows] == [entry.score.seed for entry in ranked]
