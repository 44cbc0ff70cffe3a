"""What a decoded stage sounds and looks like inside an artifact, built from real decoded audio: the
Opus preview decodes back to the clip (capped in length and bitrate), the spectrogram puts a tone
at its pitch, and the markdown around them (players, pictures, files, decode commands, run-form
links, the summary against each stage's source, the gc report) says what it should. No Prefect
server: these are the plain builders the flows hand to Prefect."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from prefect_acestep.stages.audio import write_audio
from prefect_acestep.stages.conversions import custom_to_pipeline, restore
from prefect_acestep.stages.geometry import SAMPLE_RATE
from prefect_acestep.stages.params import StageParams
from prefect_acestep.stages.runner import run_stage
from prefect_acestep.stages.store import LatentStore
from prefect_acestep.stages.store.models import GcReport, RemovedLatent
from prefect_acestep.tasks.artifacts import gc_markdown, lineage_markdown, stage_log_line, stage_rows
from prefect_acestep.tasks.listen import PREVIEW_SAMPLES, decode_command, stage_listen_markdown
from prefect_acestep.tasks.previews import (
    HIGHEST_HZ,
    LOWEST_HZ,
    PICTURE_WIDTH,
    PREVIEW_KBPS,
    PREVIEW_SECONDS,
    SPECTRUM_HEIGHT,
    MARGIN_LEFT,
    preview_of,
)
from prefect_acestep.tasks.run_links import CUSTOM_FLOW, PIPELINE_FLOW, REPLAY_FLOW, RunForms, run_form_url


def tone(path: Path, hz: float, seconds: float) -> Path:
    t = torch.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    wave = 0.3 * torch.sin(2 * math.pi * hz * t)
    return write_audio(path, torch.stack([wave, wave]))


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> LatentStore:
    return LatentStore(tmp_path_factory.mktemp("store"), ttl_hours=24)


@pytest.fixture(scope="module")
def song(store: LatentStore, tmp_path_factory) -> tuple[list, Path]:
    """A decoded 4 s embedded song (generate with a checkpoint at step 4) and its audio file."""
    from prefect_acestep.stages.decode import decode_latent

    params = StageParams(caption="warm electric piano with soft drums", keyscale="D minor", bpm=96, duration=4.0,
                         seed=5, checkpoint_steps=[4])  # fmt: skip
    results = run_stage(params, store)
    [path] = decode_latent(store, results[0].latent_id, tmp_path_factory.mktemp("audio"), stem="song")
    return [results[0].model_copy(update={"audio_path": str(path)})], path


# --- the preview and the picture ------------------------------------------------------------------


def test_the_preview_is_the_clip_in_ogg_opus_under_the_bitrate_cap(song) -> None:
    _, path = song
    preview = preview_of(path)
    audio, rate = sf.read(io.BytesIO(preview.audio), always_2d=True)
    original, _ = sf.read(str(path), always_2d=True)
    assert sf.info(io.BytesIO(preview.audio)).subtype == "OPUS" and rate == SAMPLE_RATE and audio.shape[1] == 2
    assert abs(len(audio) - len(original)) <= 0.01 * SAMPLE_RATE and preview.previewed_s == preview.duration_s == 4.0
    correlation = np.corrcoef(audio[: len(original), 0], original[: len(audio), 0])[0, 1]
    assert correlation > 0.95  # the same music, lossy
    assert len(preview.audio) * 8 / 1000 / preview.previewed_s < PREVIEW_KBPS
    assert preview.audio_uri.startswith("data:audio/ogg;base64,")


def test_a_long_clip_previews_its_first_seconds_and_pictures_all_of_it(tmp_path: Path) -> None:
    preview = preview_of(tone(tmp_path / "long.wav", 220.0, 30.0))
    audio, _ = sf.read(io.BytesIO(preview.audio))
    assert (preview.previewed_s, preview.duration_s) == (PREVIEW_SECONDS, 30.0)
    assert abs(len(audio) / SAMPLE_RATE - PREVIEW_SECONDS) < 0.01
    assert len(preview.audio) < PREVIEW_KBPS * 1000 / 8 * PREVIEW_SECONDS  # 120 KB at the cap
    short = preview_of(tone(tmp_path / "short.wav", 220.0, 1.0))  # the container's overhead weighs most here
    assert len(short.audio) * 8 / 1000 < PREVIEW_KBPS


@pytest.mark.parametrize("hz", [110.0, 440.0, 3520.0])
def test_the_spectrogram_shows_a_tone_at_its_pitch(tmp_path: Path, hz: float) -> None:
    picture = Image.open(io.BytesIO(preview_of(tone(tmp_path / "a.wav", hz, 2.0)).picture))
    assert picture.format == "WEBP" and picture.width == PICTURE_WIDTH
    spectrum = np.asarray(picture.convert("L"))[:SPECTRUM_HEIGHT, MARGIN_LEFT:].astype(float)
    brightest = int(np.argmax(spectrum.mean(axis=1)))
    expected = (SPECTRUM_HEIGHT - 1) * math.log(HIGHEST_HZ / hz) / math.log(HIGHEST_HZ / LOWEST_HZ)
    assert abs(brightest - expected) <= 2, (brightest, expected)


# --- links -----------------------------------------------------------------------------------------


@pytest.fixture
def ui() -> str:
    from prefect.settings import PREFECT_UI_URL, temporary_settings

    with temporary_settings(updates={PREFECT_UI_URL: "http://ui.example:4200"}):
        yield "http://ui.example:4200"


def _parameters(url: str) -> dict:
    return json.loads(parse_qs(urlparse(url).query)["parameters"][0])


def test_a_run_form_url_carries_the_parameters(ui: str) -> None:
    parameters = {"request": {"caption": "a & b / c?", "stages": [{"seed": 1}]}, "store": "s3 block"}
    url = run_form_url("d-1", parameters)
    assert url.startswith(f"{ui}/deployments/deployment/d-1/run?parameters=")
    assert _parameters(url) == parameters


def test_links_resume_branch_add_and_replay_a_latent(ui: str, song, store: LatentStore) -> None:
    [result], _ = song
    forms = RunForms({CUSTOM_FLOW: "custom", PIPELINE_FLOW: "demo", REPLAY_FLOW: "replay"}, {"store": "mine"})
    final, checkpoint = store.record(result.latent_id), store.record(result.checkpoints[0].latent_id)

    links = forms.links(final)
    assert list(links) == ["resume", "branch", "add to pipeline", "replay"]
    resume = _parameters(links["resume"])
    assert resume == {"request": restore(final).model_dump(mode="json"), "store": "mine"}
    assert _parameters(links["branch"])["request"] == {**resume["request"], "seed": -1}
    assert _parameters(links["add to pipeline"])["request"] == custom_to_pipeline(restore(final)).model_dump(mode="json")
    assert _parameters(links["replay"]) == {"latent_id": final.id, "store": "mine"}
    assert "/deployment/replay/run" in links["replay"]

    links = forms.links(checkpoint)  # a checkpoint is resumed, not replayed; its branch diverges by SDE
    assert list(links) == ["resume", "branch", "add to pipeline"]
    assert _parameters(links["resume"])["request"]["init_latent_id"] == checkpoint.id
    branch = _parameters(links["branch"])["request"]
    assert (branch["seed"], branch["infer_method"], branch["init_latent_id"]) == (-1, "sde", checkpoint.id)


def test_no_link_to_a_form_that_is_not_deployed(ui: str, song, store: LatentStore) -> None:
    [result], _ = song
    assert list(RunForms({PIPELINE_FLOW: "demo"}).links(store.record(result.latent_id))) == ["add to pipeline"]


def test_no_links_without_a_ui(song, store: LatentStore) -> None:
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL, temporary_settings

    [result], _ = song
    with temporary_settings(updates={PREFECT_UI_URL: None, PREFECT_API_URL: None}):
        assert RunForms({CUSTOM_FLOW: "custom"}).links(store.record(result.latent_id)) == {}


# --- the markdown -------------------------------------------------------------------------------------


def test_a_stage_page_plays_pictures_and_says_where_the_full_file_is(ui: str, song, store: LatentStore) -> None:
    [result], path = song
    forms = RunForms({CUSTOM_FLOW: "custom"})
    links = {(result.latent_id, 0): forms.links(store.record(result.latent_id))}
    links[(result.checkpoints[0].latent_id, 0)] = forms.links(store.record(result.checkpoints[0].latent_id))
    page = stage_listen_markdown(0, [result], {0: preview_of(path)}, links, "s3://bucket/acestep", "remote")
    assert page.startswith(f"## Stage 0 · generate · `{result.latent_id}`")
    assert page.count('<audio controls preload="metadata"') == 1 and page.count("](data:image/webp;base64,") == 1
    assert f"Full length: `{path}` on the worker" in page
    assert f"`s3://bucket/acestep/latents/{result.latent_id}.safetensors`" in page
    assert f"`prefect-acestep decode {result.latent_id} --sample 0 -o {path.name} --store remote`" in page
    assert f"Checkpoint at step 4 `{result.checkpoints[0].latent_id}`: [resume](" in page
    assert decode_command("L", 1, "/a/b c.wav", None) == "prefect-acestep decode L --sample 1 -o 'b c.wav'"


def test_a_large_batch_gets_players_for_its_first_samples_only(song) -> None:
    [result], path = song
    preview = preview_of(path)
    results = [result.model_copy(update={"sample_index": i, "params": result.params.model_copy(
        update={"batch_size": 6})}) for i in range(6)]  # fmt: skip
    previews = {i: preview for i in range(PREVIEW_SAMPLES)}
    page = stage_listen_markdown(None, results, previews, {}, "/store", None)
    assert page.count("<audio") == PREVIEW_SAMPLES and page.count("Full length:") == 6


def test_the_summary_compares_each_stage_with_its_source_and_plays_the_decoded_ones(song, store) -> None:
    [result], path = song
    source = StageParams.model_validate(store.record(result.latent_id).params)
    resumed = result.model_copy(
        update={"params": source.model_copy(update={"src_latent_id": result.latent_id, "caption": "bright folk",
                                                    "bpm": 110, "seed": 9})}  # fmt: skip
    )
    summary = lineage_markdown("ACE-Step generate", [[resumed]], "/audio", {result.latent_id: source}, {},
                               {0: {0: preview_of(path)}})  # fmt: skip
    assert f"- 0 generate from `{result.latent_id}`: caption=bright folk, bpm=110, seed=9" in summary
    assert (
        f"- Stage 0 changes the music of its source `{result.latent_id}`: caption 'bright folk' (source: 'warm "
        "electric piano with soft drums'), bpm 110 (source: 96)"
    ) in summary
    assert "## Listen" in summary and summary.count("<audio") == 1
    plain = lineage_markdown("ACE-Step pipeline", [[result]], None)
    assert "Differs from its source" not in plain and "## Listen" not in plain


def test_the_stage_table_names_its_audio_and_links(ui: str, song, store) -> None:
    [result], path = song
    links = {(result.latent_id, 0): {"resume": "http://x/r"}, (result.checkpoints[0].latent_id, 0): {"resume": "http://x/c"}}
    [row] = stage_rows([result], links)
    assert (row["audio"], row["links"], row["checkpoint links"]) == (str(path), "[resume](http://x/r)", "step 4: [resume](http://x/c)")
    [row] = stage_rows([result.model_copy(update={"audio_path": None})])
    assert (row["audio"], row["links"], row["checkpoint links"]) == ("not decoded", "none", "none")


def test_one_log_line_per_stage_says_what_it_made(song) -> None:
    [result], path = song
    assert stage_log_line(1, [result]) == (
        f"stage 1 generate: latent {result.latent_id} (1 sample(s), seeds 5); checkpoints: "
        f"4: {result.checkpoints[0].latent_id}; audio: {path}"
    )


def test_the_gc_report_lists_what_it_removed_and_why() -> None:
    from datetime import UTC, datetime

    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    report = GcReport(
        removed=[RemovedLatent(id="A", reason="expired", at=at, size_bytes=10),
                 RemovedLatent(id="B", reason="evicted", at=at, size_bytes=20)],
        orphans_removed=["latents/.tmp-x"], bytes_freed=40, bytes_in_use=100, over_budget=True,
    )  # fmt: skip
    text = gc_markdown(report, "/store")
    assert "# Latent store gc: 2 removed, 40 bytes freed" in text and "1 expired, 1 evicted" in text
    assert "| `A` | expired (its TTL ran out) | 2026-01-02T03:04:05+00:00 | 10 |" in text
    assert "| `B` | evicted (the store was over its byte budget) |" in text
    assert "- `latents/.tmp-x`" in text and "Still over the byte budget" in text
