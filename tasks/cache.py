"""The stage cache: keyed on content, and never answering with a latent that no longer resolves.

Prefect's default ``INPUTS`` policy hashes pickled arguments; two requests that mean the same run
would miss, and one that names a latent ID would hit after the latent changed. Our key is what
determines the output: the stage type and canonical params (seed included, source fields replaced
by the source's content digest), the backend identity (name, variant, latent space, weights), the
plan handed in (which carries its planner's identity: the LM folder and weights digest) and a code
version. A run with a random seed (-1) has nothing to reuse and is never cached, nor is one that
would plan for itself inside the task (its planner's identity is not known before it runs).
The identities come from the registries without building the models, so a cache hit on a fresh worker
loads no weights.

A cache hit must never return a latent ID that no longer resolves, so the key carries a generation
suffix. If the record under generation g names a latent that is gone (deleted, expired, corrupt),
the key moves to g + 1, which has no record, so the stage recomputes and commits there. Dead records are left to expire; no storage backend needs a delete for this.
"Resolves" means reads back whole: a hit reads its latents and checks their digests, so a latent
corrupted on disk is quarantined by that read and the stage recomputes.
"""

from __future__ import annotations

import hashlib
import json
from importlib.metadata import version
from itertools import count
from typing import Any

from prefect.cache_policies import CachePolicy
from prefect.context import TaskRunContext

from prefect_acestep.stages.backends.registry import backend_identity
from prefect_acestep.stages.errors import (
    LatentCorrupt,
    LatentDeleted,
    LatentExpired,
    LatentNotFound,
    StageError,
)
from prefect_acestep.stages.params import StageParams
from prefect_acestep.stages.planning.protocol import Plan
from prefect_acestep.stages.planning.stage import needs_new_plan
from prefect_acestep.stages.runner import source_latent_id
from prefect_acestep.stages.store import LatentStore

CODE_VERSION = f"prefect-acestep/{version('prefect-acestep')}/cache-v1"
SOURCE_FIELDS = ("src_latent_id", "src_stage", "src_audio_id", "backend")
"""Replaced in the key by the source's digest and the backend's full identity."""


def content_key(
    params: StageParams, store: LatentStore, stage_latents: dict[int, str] | None, plan: Plan | None = None
) -> str | None:
    """The content part of the key, or None when the run must not be cached."""
    if params.seed == -1 or (plan is None and needs_new_plan(params)):
        return None
    source_id = source_latent_id(params, stage_latents)
    source_digest = None if source_id is None else store.record(source_id).digest
    payload = {
        "code": CODE_VERSION,
        "params": params.model_dump(mode="json", exclude=set(SOURCE_FIELDS)),
        "source": source_digest,
        "backend": backend_identity(params.backend, variant=params.variant).model_dump(mode="json"),
        "plan": None if plan is None else plan.model_dump(mode="json"),
    }
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


def all_latents_resolve(results: Any, store: LatentStore, holder: str | None = None) -> bool:
    """True when every latent a cached result names still resolves in the store and reads back
    whole: each is read and its digests checked (``LatentStore.verify``), so a latent corrupted on
    disk since it was cached is quarantined here and the stage recomputes, rather than the hit
    answering with an ID that every later read refuses. This costs one read and hash of the
    result's latents per hit (about 2 ms per 1.5 MB local latent), a small part of a stage's run.

    With ``holder`` (the running flow), the latents are leased to it first and checked after, so
    a gc cannot take them between this answer and the flow's next stage."""
    ids: set[str] = set()
    for result in results if isinstance(results, list) else [results]:
        ids.add(result.latent_id)
        ids.update(checkpoint.latent_id for checkpoint in result.checkpoints)
    if holder is not None:
        store.lease_latents(holder, sorted(ids))
    for latent_id in sorted(ids):
        try:
            store.verify(latent_id)
        except (LatentNotFound, LatentExpired, LatentDeleted, LatentCorrupt):
            return False
    return True


class StageCachePolicy(CachePolicy):
    """Cache policy of the stage tasks (see the module docstring)."""

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        params: StageParams = inputs["params"]
        store = inputs["store"].get_store()
        try:
            base = content_key(params, store, inputs.get("stage_latents"), inputs.get("plan"))
        except StageError:
            return None  # the source does not resolve: the run itself raises the typed error
        if base is None:
            return None
        result_store = task_ctx.result_store
        for generation in count():
            key = f"stage-{base}-{generation}"
            if not result_store.exists(key):
                return key
            if all_latents_resolve(result_store.read(key).result, store, inputs.get("pipeline_id")):
                return key
        raise AssertionError("unreachable")
