"""How an audio task's source becomes latents: the posterior mean by default (deterministic), or a
posterior sample as upstream draws it, seeded from the stage seed; recorded in the params, so a
replay and a checkpoint's resume encode alike."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers", reason="the acestep extra is not installed: pip install 'prefect-acestep[acestep]'")

from prefect_acestep.stages.backends.acestep import AceStepBackend  # noqa: E402
from prefect_acestep.stages.backends.embedded import EmbeddedBackend  # noqa: E402
from prefect_acestep.stages.errors import InvalidStageRequest  # noqa: E402
from prefect_acestep.stages.params import StageParams  # noqa: E402
from prefect_acestep.stages.runner import run_stage  # noqa: E402
from prefect_acestep.stages.store import LatentStore  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")


def test_sampled_encode_replays_and_resumes_exactly(tmp_path: Path, tiny_acestep: dict[str, Path]) -> None:
    model = AceStepBackend(str(tiny_acestep["turbo"]))
    store = LatentStore(tmp_path / "latents")
    shared = dict(backend="acestep", variant="turbo")
    source = run_stage(StageParams(caption="piano", duration=2.0, seed=1, **shared), store, backend=model)[0].latent_id
    cover = dict(stage_type="cover", src_latent_id=source, caption="rock", seed=9, **shared)
    mean = run_stage(StageParams(**cover), store, backend=model)[0]
    sampled = run_stage(StageParams(**cover, vae_encode="sample", checkpoint_steps=[3]), store, backend=model)[0]
    again = run_stage(StageParams(**cover, vae_encode="sample"), store, backend=model)[0]
    assert store.record(mean.latent_id).params["vae_encode"] == "mean"
    assert store.record(sampled.latent_id).params["vae_encode"] == "sample"
    assert torch.equal(store.get(sampled.latent_id), store.get(again.latent_id))
    assert not torch.equal(store.get(sampled.latent_id), store.get(mean.latent_id))
    checkpoint = sampled.checkpoints[0].latent_id
    resumed = run_stage(StageParams(**{**cover, "src_latent_id": checkpoint}), store, backend=model)[0]
    assert torch.equal(store.get(resumed.latent_id), store.get(sampled.latent_id))


def test_a_codec_without_a_posterior_refuses_to_sample(tmp_path: Path) -> None:
    store, model = LatentStore(tmp_path / "latents"), EmbeddedBackend("turbo")
    source = run_stage(StageParams(caption="piano", duration=2.0, seed=1), store, backend=model)[0].latent_id
    with pytest.raises(InvalidStageRequest, match="no posterior to sample"):
        run_stage(StageParams(stage_type="cover", src_latent_id=source, seed=2, vae_encode="sample"), store, backend=model)
    assert len(store.list()) == 1
