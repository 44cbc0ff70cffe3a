"""Tasks around the store: decode to audio files, import audio, pin/unpin, gc.

Decode and import retry transient failures like the stage tasks (a flaky disk or URL); pin, unpin
and gc are quick metadata changes that either work or name the latent that is wrong. Like the stage
tasks they carry no tags: a tagged task run costs an API call for Prefect's tag concurrency check.
"""

from __future__ import annotations

from prefect import task
from prefect.runtime import task_run as current_task_run

from prefect_acestep.stages.audio_import import import_audio_latent
from prefect_acestep.stages.backends.registry import load_backend
from prefect_acestep.stages.decode import DEFAULT_NORMALIZE_DBFS, decode_latent
from prefect_acestep.stages.redact import scrub_url
from prefect_acestep.stages.store import GcReport
from prefect_acestep.tasks.artifacts import gc_markdown, publish_markdown
from prefect_acestep.tasks.blocks import AceLatentStore
from prefect_acestep.tasks.concurrency import backend_slot, configured_limit
from prefect_acestep.tasks.publishing import publisher
from prefect_acestep.tasks.retries import RETRIES, RETRY_DELAYS, RETRY_JITTER, retry_if_transient

_retrying = dict(
    retries=RETRIES,
    retry_delay_seconds=RETRY_DELAYS,
    retry_jitter_factor=RETRY_JITTER,
    retry_condition_fn=retry_if_transient,
)


@task(name="decode", task_run_name="decode {latent_id}", **_retrying)
def decode_task(
    latent_id: str,
    store: AceLatentStore,
    out_dir: str,
    sample_indices: list[int] | None = None,
    stem: str | None = None,
    normalize_dbfs: float | None = DEFAULT_NORMALIZE_DBFS,
) -> list[str]:
    """Decode a stored latent's samples to WAV files in ``out_dir``; returns their paths. Each
    sample is peak-normalised to ``normalize_dbfs`` (upstream's -1 dBFS; None: off)."""
    with backend_slot(configured_limit()):
        paths = decode_latent(
            store.get_store(), latent_id, out_dir, sample_indices=sample_indices, stem=stem, normalize_dbfs=normalize_dbfs
        )
    return [str(path) for path in paths]


def _import_run_name() -> str:
    """``import <source>``, with any credentials in a URL scrubbed (a run name is shown to everyone)."""
    return f"import {scrub_url(str(current_task_run.parameters['source']))}"


@task(name="import-audio", task_run_name=_import_run_name, **_retrying)
def import_audio_task(
    source: str, store: AceLatentStore, backend: str = "embedded", variant: str = "turbo", pin: bool = False
) -> str:
    """Import audio from a local path or http(s) URL; returns the latent ID for ``src_audio_id``.
    Building the backend happens inside the GPU slot too: it puts the weights on the device."""
    with backend_slot(configured_limit()):
        return import_audio_latent(source, store.get_store(), load_backend(backend, variant=variant), pin=pin)


@task(name="pin", task_run_name="pin {latent_id}")
def pin_task(latent_id: str, store: AceLatentStore) -> str:
    store.get_store().pin(latent_id)
    return latent_id


@task(name="unpin", task_run_name="unpin {latent_id}")
def unpin_task(latent_id: str, store: AceLatentStore) -> str:
    store.get_store().unpin(latent_id)
    return latent_id


@task(name="gc")
def gc_task(store: AceLatentStore) -> GcReport:
    """Collect expired latents (and evict to the byte budget); publish what was removed and why."""
    report = store.get_store().gc()
    publish_markdown(gc_markdown(report, store.root), key="acestep-gc", description="Latent store gc report")
    publisher().task_done()
    return report
