"""One Prefect task per stage type, all built by one factory around ``prefect_acestep.stages.runner.run_stage``.

A task adds only orchestration: the content-keyed cache (``prefect_acestep.tasks.cache``) with its records and
locks beside the latent store, retries for transient failures only, the optional GPU concurrency
slot, a live progress artifact, and run names that say what ran. Its stage table (and listen page)
is published by the flow once the stage is decoded (``tasks.artifacts.publish_stage``), so the table
names the audio, and a cached stage gets one too.
Tasks take IDs and small pydantic models and return ``StageResult``s, never tensors.

The tasks carry no tags. Prefect checks the tag-based concurrency limits of every tagged task run
with an API call (a lease request), also when no limit exists; on the default SQLite server that
call was the largest part of a stage's orchestration cost, and a busy server answered it 503, which
Prefect's client retries after seconds. What the tags said (stage type, backend, variant) is in the
run name (``refine[1] seed=43 embedded/turbo``) and in the stage table; concurrency of backend work
is limited with ``ACE_GPU_CONCURRENCY_LIMIT`` (``prefect_acestep.tasks.concurrency``).
"""

from __future__ import annotations

import json
import os
import threading
from datetime import timedelta
from typing import get_args

from prefect import Task, task
from prefect.runtime import task_run as current_task_run
from prefect.context import FlowRunContext, TaskRunContext
from prefect.settings import PREFECT_API_URL

from prefect_acestep.stages.params import StageKind, StageParams
from prefect_acestep.stages.planning.protocol import Plan
from prefect_acestep.stages.results import StageResult
from prefect_acestep.stages.runner import Provenance, run_stage
from prefect_acestep.tasks.artifacts import DiffusionProgress
from prefect_acestep.tasks.blocks import AceLatentStore
from prefect_acestep.tasks.cache import StageCachePolicy
from prefect_acestep.tasks.cache_storage import CACHE_DIR, LOCK_MANAGER_ENV, cache_storage  # noqa: F401 (CACHE_DIR re-exported)
from prefect_acestep.tasks.concurrency import backend_slot, configured_limit
from prefect_acestep.tasks.logbridge import install_loguru_bridge
from prefect_acestep.tasks.publishing import publisher
from prefect_acestep.tasks.retries import TRANSIENT_RETRIES

install_loguru_bridge()


def _run_name() -> str:
    parameters = current_task_run.parameters
    params: StageParams = parameters["params"]
    index = parameters.get("stage_index")
    where = "" if index is None else f"[{index}]"
    seed = "random" if params.seed == -1 else str(params.seed)
    return f"{params.stage_type}{where} seed={seed} {params.backend}/{params.variant}"


def _current_run_ids() -> tuple[str | None, str | None]:
    flow_ctx, task_ctx = FlowRunContext.get(), TaskRunContext.get()
    flow_run_id = str(flow_ctx.flow_run.id) if flow_ctx is not None and flow_ctx.flow_run is not None else None
    task_run_id = str(task_ctx.task_run.id) if task_ctx is not None else None
    return flow_run_id, task_run_id


def _run_stage_task(
    params: StageParams,
    store: AceLatentStore,
    stage_latents: dict[int, str] | None = None,
    stage_index: int | None = None,
    pipeline_id: str | None = None,
    plan: Plan | None = None,
) -> list[StageResult]:
    flow_run_id, task_run_id = _current_run_ids()
    provenance = Provenance(
        pipeline_id=pipeline_id, stage_index=stage_index, flow_run_id=flow_run_id, task_run_id=task_run_id
    )
    progress = DiffusionProgress(f"{params.stage_type} diffusion")
    try:
        with backend_slot(configured_limit()):
            results = run_stage(
                params,
                store.get_store(),
                stage_latents=stage_latents,
                provenance=provenance,
                plan=plan,
                on_step=progress,
            )
    finally:
        publisher().task_done()
    return results


def _stage_task(stage_type: str) -> Task[..., list[StageResult]]:
    return task(
        _run_stage_task,
        name=stage_type,
        task_run_name=_run_name,
        description=f"Run one {stage_type} stage and store its latents.",
        cache_policy=StageCachePolicy(),
        **TRANSIENT_RETRIES,
        persist_result=True,
        result_serializer="json",
    )


STAGE_TASKS: dict[str, Task[..., list[StageResult]]] = {kind: _stage_task(kind) for kind in get_args(StageKind)}
generate_task = STAGE_TASKS["generate"]
refine_task = STAGE_TASKS["refine"]
cover_task = STAGE_TASKS["cover"]
repaint_task = STAGE_TASKS["repaint"]
extract_task = STAGE_TASKS["extract"]
lego_task = STAGE_TASKS["lego"]
complete_task = STAGE_TASKS["complete"]


_configured: dict[tuple[str, ...], Task[..., list[StageResult]]] = {}
_configured_lock = threading.Lock()


def stage_task_for(params: StageParams, store: AceLatentStore) -> Task[..., list[StageResult]]:
    """The task for ``params``' stage type, configured for ``store``: cache records, results and
    locks live beside the latents (so every worker sharing the store shares the cache), cache
    lifetime follows the store's TTL.

    Configuring a task costs several milliseconds (Prefect builds a validation model for it), and a
    pipeline asks for one per stage, so each configuration is made once per process: per stage
    type, store, Prefect API (where a remote store's result block is saved) and lock manager."""
    key = (
        params.stage_type, store.root, json.dumps(store.storage_options, sort_keys=True, default=repr),
        repr(store.ttl_hours), str(PREFECT_API_URL.value()), os.environ.get(LOCK_MANAGER_ENV, ""),
    )  # fmt: skip
    with _configured_lock:
        task = _configured.get(key)
        if task is None:
            storage = cache_storage(store)  # local dirs, or beside a remote store (see tasks.cache_storage)
            policy = StageCachePolicy().configure(
                key_storage=storage.key_storage,
                lock_manager=storage.lock_manager,
                isolation_level="SERIALIZABLE",
            )
            task = _configured[key] = STAGE_TASKS[params.stage_type].with_options(
                cache_policy=policy,
                cache_expiration=timedelta(hours=store.ttl_hours),
                result_storage=storage.result_storage,
            )
        return task
