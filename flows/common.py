"""Pieces every flow shares: where audio goes, decoding results, the run's identity."""

from __future__ import annotations

import os
from pathlib import Path

from prefect.runtime import flow_run

from prefect_acestep.stages.decode import existing_audio
from prefect_acestep.stages.results import StageResult
from prefect_acestep.tasks.blocks import AceLatentStore
from prefect_acestep.tasks.store_tasks import decode_task

AUDIO_DIR_ENV = "ACE_AUDIO_DIR"
DEFAULT_AUDIO_DIR = "~/.prefect-acestep/audio"


def resolve_out_dir(out_dir: str | None) -> str:
    """``out_dir``, else ``ACE_AUDIO_DIR``, else ``~/.prefect-acestep/audio`` (absolute)."""
    chosen = out_dir if out_dir is not None else os.environ.get(AUDIO_DIR_ENV, DEFAULT_AUDIO_DIR)
    return str(Path(chosen).expanduser().resolve())


def run_id() -> str:
    """This flow run's id (a pipeline's identity on its latents)."""
    return str(flow_run.get_id())


def with_audio(results: list[StageResult], store: AceLatentStore, out_dir: str, stem: str) -> list[StageResult]:
    """Decode the batch latent of ``results`` and attach each sample's file. A cached stage's
    audio that is already there is kept without a decode task (no model call, no task run)."""
    latent_id = results[0].latent_id
    found = existing_audio(store.get_store(), latent_id, out_dir, stem=stem)
    paths = [str(path) for path in found] if found is not None else decode_task(latent_id, store, out_dir, stem=stem)
    by_index = dict(enumerate(paths))
    return [result.model_copy(update={"audio_path": by_index[result.sample_index]}) for result in results]
