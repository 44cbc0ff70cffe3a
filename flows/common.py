"""Pieces every flow shares: where audio goes, decoding results, the run's identity."""

from __future__ import annotations

import os
from pathlib import Path

from prefect.runtime import deployment, flow_run

from prefect_acestep.stages.decode import existing_audio
from prefect_acestep.stages.errors import InvalidStageRequest
from prefect_acestep.stages.params import StageParams
from prefect_acestep.stages.results import StageResult
from prefect_acestep.tasks.blocks import AceLatentStore
from prefect_acestep.tasks.store_tasks import decode_task

AUDIO_DIR_ENV = "ACE_AUDIO_DIR"
DEFAULT_AUDIO_DIR = "~/.prefect-acestep/audio"


def audio_root() -> Path:
    """The worker's audio root: ``ACE_AUDIO_DIR``, else ``~/.prefect-acestep/audio`` (absolute)."""
    return Path(os.environ.get(AUDIO_DIR_ENV, DEFAULT_AUDIO_DIR)).expanduser().resolve()


def resolve_out_dir(out_dir: str | None) -> str:
    """Where a flow writes its audio files, under the worker's audio root (``audio_root``).

    None is the root itself; a relative ``out_dir`` is a folder under it, which ``..`` or a symlink
    may not leave. An absolute ``out_dir`` is taken as it is from a flow called in Python or from
    the command line (its caller writes with their own rights), but a run started from a
    deployment must stay under the root: its parameters come from whoever may start runs, and a
    worker writes nowhere its configuration did not put in reach (move the root with
    ``ACE_AUDIO_DIR`` on the worker)."""
    root = audio_root()
    if out_dir is None:
        return str(root)
    chosen = Path(out_dir).expanduser()
    target = (chosen if chosen.is_absolute() else root / chosen).resolve()
    from_deployment = deployment.id is not None  # this run's, or its parent's when a subflow
    if (from_deployment or not chosen.is_absolute()) and not target.is_relative_to(root):
        raise InvalidStageRequest(
            f"out_dir: {out_dir!r} leads outside the audio root {root}; a run started from a deployment writes "
            f"only under {AUDIO_DIR_ENV} (a folder relative to it, or an absolute path inside it)"
        )
    return str(target)


def borrowed_sources(params: list[StageParams]) -> set[str]:
    """The latents stages name by ID (not made by the run itself): what its lease must mark."""
    return {value for p in params for value in (p.src_latent_id, p.src_audio_id) if value is not None}


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
