"""A latent damaged on disk never keeps being served by the stage cache (issue 14, item 1).

Before: flip a byte in a stored latent, and an identical re-run completed from the cache with the
unreadable ID, so every later pipeline sharing that stage failed with ``LatentCorrupt`` until the
TTL ran out; a truncated final latent was returned the same way when its audio file existed. Now a
cache hit reads its latents back whole: a damaged one is quarantined (moved to ``corrupt/``,
tombstoned in the journal) and the stage recomputes. Real flows on a real Prefect server, real
files damaged with ordinary file writes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from prefect_acestep import generate_flow, pipeline_flow
from prefect_acestep.stages.errors import LatentCorrupt
from prefect_acestep.stages.store.files import split_header
from tests.flow_helpers import (
    custom_request,
    default_store as store,
    flow_run_id,
    pipeline_request,
    task_state_names,
)

BACKEND = "counting-corrupt-cache"

pytestmark = pytest.mark.usefixtures("fast_prefect", "counting_backend")


def flip_a_bit(path: Path) -> None:
    """One bit in the middle of the latent tensor's bytes (located through the file's header)."""
    data = bytearray(path.read_bytes())
    header, start = split_header(bytes(data))
    begin, end = header["latent"]["data_offsets"]
    data[start + (begin + end) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    """Cut the file short, as a crash of a copy or a full disk under a foreign tool would."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])


DAMAGE = {"bit flip": flip_a_bit, "truncation": truncate}


@pytest.mark.parametrize("which", ["final", "checkpoint"])
@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_hit_whose_latent_was_damaged_on_disk_recomputes(
    latent_dir: Path, tmp_path: Path, model, damage: str, which: str
) -> None:
    request = custom_request(BACKEND, checkpoint_steps=[1])
    [first] = generate_flow(request, out_dir=str(tmp_path))  # its audio file is written too
    assert Path(first.audio_path).is_file()
    damaged = first.latent_id if which == "final" else first.checkpoints[0].latent_id
    DAMAGE[damage](latent_dir / "latents" / f"{damaged}.safetensors")

    model.reset()
    state = generate_flow(request, out_dir=str(tmp_path), return_state=True)
    [second] = state.result()
    assert task_state_names(flow_run_id(state), "generate") == ["Completed"]
    assert model.calls["velocity"] == 4  # really recomputed, not answered from the cache
    assert second.latent_id != first.latent_id
    store().verify(second.latent_id)
    store().verify(second.checkpoints[0].latent_id)
    assert torch.equal(store().get(second.latent_id), store().get(second.latent_id))
    # The damaged file is kept for inspection and its record tombstoned: no read meets it again.
    assert (latent_dir / "corrupt" / f"{damaged}.safetensors").is_file()
    assert not (latent_dir / "latents" / f"{damaged}.safetensors").exists()
    with pytest.raises(LatentCorrupt, match="corrupt, quarantined at"):
        store().get(damaged)

    model.reset()  # the recomputed result is the cache's answer from now on
    state = generate_flow(request, out_dir=str(tmp_path), return_state=True)
    assert task_state_names(flow_run_id(state), "generate") == ["Cached"] and model.calls["velocity"] == 0
    assert state.result()[0].latent_id == second.latent_id


def test_a_pipeline_sharing_a_damaged_stage_recomputes_it_and_runs_on(latent_dir: Path, tmp_path: Path, model) -> None:
    stages = [
        {"stage_type": "generate", "seed": 1, "backend": BACKEND},
        {"stage_type": "refine", "src_stage": 0, "denoise": 0.5, "seed": 2, "backend": BACKEND},
    ]
    first = pipeline_flow(pipeline_request(stages), out_dir=str(tmp_path))
    digest = store().record(first[0][0].latent_id).digest
    flip_a_bit(latent_dir / "latents" / f"{first[0][0].latent_id}.safetensors")
    later = pipeline_request([*stages, {"stage_type": "refine", "src_stage": 1, "denoise": 0.75, "seed": 3,
                                        "backend": BACKEND}])  # fmt: skip
    state = pipeline_flow(later, out_dir=str(tmp_path), return_state=True)
    hops = state.result()
    assert task_state_names(flow_run_id(state), "generate") == ["Completed"]
    # The recomputed generate has the same content, so the refine after it keeps its cached result.
    assert task_state_names(flow_run_id(state), "refine") == ["Cached", "Completed"]
    assert store().record(hops[0][0].latent_id).digest == digest
    for hop in hops:
        store().verify(hop[0].latent_id)
