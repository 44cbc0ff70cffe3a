"""Every stage type through the pipeline flow on the real ACE-Step backend, built from a tiny random
checkpoint on disk and loaded the way a worker loads real weights (ACESTEP_CHECKPOINT_DIR)."""

from __future__ import annotations

import pytest

pytest.importorskip("diffusers", reason="the acestep extra is not installed: pip install 'prefect-acestep[acestep]'")

from prefect_acestep import pipeline_flow  # noqa: E402
from prefect_acestep.stages.audio import load_audio  # noqa: E402
from prefect_acestep.stages.backends.acestep.tiny import build_tiny_checkpoint  # noqa: E402
from prefect_acestep.stages.requests import PipelineRequest  # noqa: E402
from prefect_acestep.stages.store import LatentStore  # noqa: E402


@pytest.mark.usefixtures("prefect_server")
def test_every_stage_type_runs_through_the_pipeline_flow(tmp_path, monkeypatch):
    checkpoint = build_tiny_checkpoint(tmp_path / "acestep-tiny-base", family="base")
    monkeypatch.setenv("ACESTEP_CHECKPOINT_DIR", str(checkpoint))
    monkeypatch.setenv("ACESTEP_DEVICE", "cpu")
    monkeypatch.setenv("ACE_LATENT_DIR", str(tmp_path / "store"))
    common = {"inference_steps": 2, "guidance_scale": 2.0}
    request = PipelineRequest.model_validate(
        {
            "backend": "acestep",
            "variant": "base",
            "caption": "tiny test",
            "duration": 1.0,
            "stages": [
                {"stage_type": "generate", "seed": 1, "checkpoint_steps": [1], **common},
                {"stage_type": "refine", "src_stage": 0, "denoise": 0.8, "seed": 2, **common},  # shift 3: [1, 0.75, 0]
                {"stage_type": "cover", "src_stage": 1, "audio_cover_strength": 0.5, "seed": 3, **common},
                {"stage_type": "repaint", "src_stage": 2, "repainting_start": 0.2, "repainting_end": 0.6,
                 "seed": 4, **common},
                {"stage_type": "extract", "src_stage": 3, "track_name": "bass", "seed": 5, **common},
                {"stage_type": "lego", "src_stage": 3, "track_name": "guitar", "seed": 6, **common},
                {"stage_type": "complete", "src_stage": 3, "complete_track_classes": ["drums"], "seed": 7, **common},
            ],
        }
    )  # fmt: skip
    hops = pipeline_flow(request, out_dir=str(tmp_path / "audio"))

    store = LatentStore(tmp_path / "store")
    assert [hop[0].params.stage_type for hop in hops] == [
        "generate", "refine", "cover", "repaint", "extract", "lego", "complete"
    ]  # fmt: skip
    for index, hop in enumerate(hops):
        record = store.record(hop[0].latent_id)
        assert record.backend.name == "acestep" and record.backend.variant == "base"
        assert record.stage_type == hop[0].params.stage_type
        if index > 0:
            assert record.parent_ids, f"stage {index} recorded no source"
    assert hops[0][0].checkpoints[0].step == 1
    audio = load_audio(hops[-1][0].audio_path)
    assert audio.shape[0] == 2 and audio.shape[1] > 0
