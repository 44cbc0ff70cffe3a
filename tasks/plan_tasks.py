"""The planning phase (the 5 Hz LM, or the embedded rules) as its own Prefect task run.

A plan is a pure function of the request (text, metas, LM settings, seed) and the planner's identity
(name, LM folder, weights digest), so the task is cached on exactly those: the same plan request
twice is one LM run. The plan then goes to the stage task as an input (and into its cache key), and
onto every latent it conditions as ``lm_metadata``. A plan holds no latent IDs, so unlike the stage
cache a hit needs no check against the store; it is kept beside the store (shared by every worker
that shares the store) for the store's TTL. Like the stage tasks it carries no tags (a tagged task
run costs an API call for Prefect's tag concurrency check); its run name says the backend.
"""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from typing import Any

from prefect import Task, task
from prefect.cache_policies import CachePolicy
from prefect.context import TaskRunContext
from prefect.runtime import task_run as current_task_run

from prefect_acestep.stages.errors import StageError
from prefect_acestep.stages.params import StageParams
from prefect_acestep.stages.planning.protocol import Plan, PlanRequest
from prefect_acestep.stages.planning.registry import planner_for, planner_identity
from prefect_acestep.stages.planning.stage import check_capabilities, needs_new_plan, plan_request
from prefect_acestep.stages.seeds import draw_base_seed
from prefect_acestep.tasks.blocks import AceLatentStore
from prefect_acestep.tasks.cache import CODE_VERSION
from prefect_acestep.tasks.cache_storage import cache_storage
from prefect_acestep.tasks.concurrency import backend_slot, configured_limit
from prefect_acestep.tasks.retries import TRANSIENT_RETRIES


def plan_key(request: PlanRequest, backend: str) -> str:
    """The cache key of a plan: the request and the planner's identity (read from the LM folder's
    files, so a cache hit on a fresh worker loads no LM)."""
    payload = {
        "code": CODE_VERSION,
        "request": request.model_dump(mode="json"),
        "planner": planner_identity(backend).model_dump(mode="json"),
    }
    return "plan-" + hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class PlanCachePolicy(CachePolicy):
    """Cache policy of the plan task (see the module docstring)."""

    def compute_key(
        self, task_ctx: TaskRunContext, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any
    ) -> str | None:
        try:
            return plan_key(inputs["request"], inputs["backend"])
        except StageError:
            return None  # no planner: the run itself raises the typed error


def _run_name() -> str:
    parameters = current_task_run.parameters
    return f"plan {parameters['backend']} seed={parameters['request'].seed}"


def _plan(request: PlanRequest, backend: str) -> Plan:
    planner = planner_for(backend)
    check_capabilities(planner, request, backend)
    with backend_slot(configured_limit()):
        return planner.plan(request)


plan_task: Task[..., Plan] = task(
    _plan,
    name="plan",
    task_run_name=_run_name,
    description="Plan a song with the backend's planner (the 5 Hz LM on acestep): metadata, caption, audio codes.",
    cache_policy=PlanCachePolicy(),
    **TRANSIENT_RETRIES,
    persist_result=True,
    result_serializer="json",
)


def plan_for_stage(params: StageParams, store: AceLatentStore) -> tuple[StageParams, Plan | None]:
    """Run the plan task when ``params`` plans anew (a generate/refine from noise with the LM on),
    and return the params to run the stage with and the plan (None when nothing is planned: no
    switch on, or a source latent whose stored plan the stage reuses). A random seed (-1) is drawn
    here, so that the plan and the stage record the same one."""
    if not needs_new_plan(params):
        return params, None
    if params.seed == -1:
        params = params.model_copy(update={"seed": draw_base_seed(-1)})
    storage = cache_storage(store)
    planner = plan_task.with_options(
        cache_policy=PlanCachePolicy().configure(
            key_storage=storage.key_storage, lock_manager=storage.lock_manager, isolation_level="SERIALIZABLE"
        ),
        cache_expiration=timedelta(hours=store.ttl_hours),
        result_storage=storage.result_storage,
    )
    return params, planner(plan_request(params, params.seed), params.backend)
