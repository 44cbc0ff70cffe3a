"""A stage's size is bounded as a whole, before any work (issue 14, items 2 and 4).

Before: a repaint window of -600..600 s over a 4 s source made a 1200 s latent (twice the model's
15,000-frame cap) and chaining such stages grew it until memory ran out; a batch of 64 at 600 s
needed ~90 GB to decode, and 200 checkpoints of it ~48 GB, all held in memory until the loop ended.
Now each stage's output length and its products (frames x batch, checkpoint bytes) are checked
before any model call, decoding goes one batch item at a time, and checkpoints are stored as they
are taken. ``run_stage`` on a real store with the embedded model (counted, so "no work" is seen).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from prefect_acestep.stages.audio import load_audio
from prefect_acestep.stages.budgets import AUDIO_BUDGET_ENV, CHECKPOINT_BUDGET_ENV
from prefect_acestep.stages.decode import decode_latent
from prefect_acestep.stages.engine.context import output_frames
from prefect_acestep.stages.errors import BudgetExceeded, InvalidStageRequest
from prefect_acestep.stages.geometry import MAX_FRAMES
from prefect_acestep.stages.params import StageParams
from prefect_acestep.stages.runner import run_stage
from prefect_acestep.stages.store import LatentStore
from tests.flow_helpers import counting, register_counting, stage_params

BACKEND = "counting-bounds"


@pytest.fixture(scope="module", autouse=True)
def _backend() -> None:
    register_counting(BACKEND)


@pytest.fixture
def store(tmp_path: Path) -> LatentStore:
    return LatentStore(tmp_path / "latents")


def params(**fields) -> StageParams:
    return stage_params(BACKEND, **fields)


def no_work_done(store: LatentStore, before: int) -> bool:
    model = counting(BACKEND)
    calls = sum(model.calls[name] for name in ("velocity", "vae_decode", "vae_encode", "encode_condition"))
    return calls == 0 and len(list((store.root / "latents").glob("*.safetensors"))) == before


# --- item 2: output length -----------------------------------------------------------------------


@pytest.mark.parametrize("stage_type", ["repaint", "lego"])
def test_an_outpainting_window_past_the_cap_is_refused_before_any_work(store: LatentStore, stage_type: str) -> None:
    source = run_stage(params(duration=4.0), store)[0].latent_id
    model = counting(BACKEND)
    model.reset()
    extra = {"track_name": "drums", "variant": "base"} if stage_type == "lego" else {}
    if stage_type == "lego":  # lego needs a base model; its source must be of that variant
        source = run_stage(params(duration=4.0, variant="base"), store)[0].latent_id
        model = counting(BACKEND, "base")
        model.reset()
    request = params(stage_type=stage_type, src_latent_id=source, repainting_start=-600.0, repainting_end=600.0,
                     seed=8, duration=None, **extra)  # fmt: skip
    with pytest.raises(InvalidStageRequest) as caught:
        run_stage(request, store)
    message = str(caught.value)
    assert "repainting_start/repainting_end: the window [-600, 600) s over a 4 s source" in message
    assert "makes a 1200 s result (30000 frames)" in message and "at most 600 s (15000 frames)" in message
    assert no_work_done(store, before=2 if stage_type == "lego" else 1)


def test_chained_outpainting_stops_at_the_cap(store: LatentStore) -> None:
    first = run_stage(params(duration=2.0), store)[0].latent_id
    grown = run_stage(params(stage_type="repaint", src_latent_id=first, repainting_start=-1.0, repainting_end=3.0,
                             seed=9, duration=4.0), store)[0].latent_id  # fmt: skip  (the longer clip, asked for)
    assert store.record(grown).shape[1] == 100  # 4 s: padded one second on each side
    counting(BACKEND).reset()
    with pytest.raises(InvalidStageRequest, match=r"over a 4 s source makes a 602 s result \(15050 frames\)"):
        run_stage(params(stage_type="repaint", src_latent_id=grown, repainting_start=-598.0, repainting_end=0.0,
                         seed=10, duration=None), store)  # fmt: skip
    assert no_work_done(store, before=2)


def test_the_cap_itself_is_allowed() -> None:
    assert output_frames("repaint", 100, (-(MAX_FRAMES - 100) / 25, 4.0)) == MAX_FRAMES
    with pytest.raises(InvalidStageRequest, match="15001 frames"):
        output_frames("repaint", 100, (-(MAX_FRAMES - 99) / 25, 4.0))


# --- item 4: products of bounded fields ----------------------------------------------------------


def test_batch_times_duration_is_bounded_with_a_message_that_says_how_to_raise_it(
    store: LatentStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    counting(BACKEND).reset()
    with pytest.raises(BudgetExceeded) as caught:
        run_stage(params(batch_size=64, duration=600.0), store)
    message = str(caught.value)
    assert "64 x 600 s = 38400 s of audio in one stage, over the budget of 7200 s" in message
    assert f"raise {AUDIO_BUDGET_ENV} on the worker" in message
    assert no_work_done(store, before=0)
    monkeypatch.setenv(AUDIO_BUDGET_ENV, "7.9")  # a worker's own budget, in seconds of audio
    with pytest.raises(BudgetExceeded, match="4 x 2 s = 8 s of audio"):
        run_stage(params(batch_size=4, duration=2.0), store)
    assert len(run_stage(params(batch_size=3, duration=2.0), store)) == 3


def test_checkpoint_bytes_are_bounded(store: LatentStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CHECKPOINT_BUDGET_ENV, str(30_000))  # two 2 s checkpoints take 25,600 bytes
    counting(BACKEND).reset()
    with pytest.raises(BudgetExceeded, match=f"3 checkpoints of 1 x 50 frames take .* \\({CHECKPOINT_BUDGET_ENV}\\)"):
        run_stage(params(checkpoint_steps=[0, 1, 2]), store)
    assert no_work_done(store, before=0)
    [result] = run_stage(params(checkpoint_steps=[1, 2]), store)
    assert len(result.checkpoints) == 2


def test_checkpoints_are_in_the_store_as_soon_as_they_are_taken(store: LatentStore) -> None:
    """Stored during the run, not held until its end: at each step, every checkpoint before it is
    already a stored latent."""
    seen: list[int] = []

    def at_step(info) -> None:
        seen.append(len(store.list(is_checkpoint=True)))

    run_stage(params(checkpoint_steps=[0, 1, 2]), store, on_step=at_step)
    assert seen == [1, 2, 3, 3]


def test_a_batch_decodes_one_item_at_a_time(store: LatentStore, tmp_path: Path) -> None:
    """A batch of 8 goes through the VAE as 8 decodes of one item, so memory holds one item's audio
    (a batch of 64 at 600 s is 15 GB of float32 audio at once). The memory figures are measured by
    ``bench/hostile_bench.py``."""
    [result, *_] = run_stage(params(batch_size=8, duration=2.0), store)
    model = counting(BACKEND)
    model.reset()
    paths = decode_latent(store, result.latent_id, tmp_path / "audio")
    assert len(paths) == 8 and model.calls["vae_decode"] == 8
    assert all(load_audio(path).shape == (2, 2 * 48_000) for path in paths)


@pytest.mark.usefixtures("fast_prefect", "latent_dir")
def test_variations_share_one_budget(tmp_path: Path) -> None:
    """Each of 64 variations of a batch of 8 at 30 s is within the stage budget; together they are
    4 h of audio, refused before any of them runs."""
    from prefect_acestep import variations_flow
    from prefect_acestep.stages.requests import GenerateRequest

    counting(BACKEND).reset()
    request = GenerateRequest(caption="bounds", backend=BACKEND, duration=30.0, batch_size=8, seed=1)
    with pytest.raises(BudgetExceeded, match=r"64 variations of batch_size x duration make 15360 s of audio together"):
        variations_flow(request, n=64, rank_by="loudness", out_dir=str(tmp_path / "audio"))
    assert counting(BACKEND).calls["velocity"] == 0 and not (tmp_path / "audio").exists()
