"""How a plan meets a stage: the request a stage asks its planner, and the stage a plan yields.

``apply_plan`` follows upstream's ``generate_music`` (acestep/inference.py): the planner's metas
fill only what the user left unset, its caption replaces the user's when ``use_cot_caption`` is
on, and its codes become the DiT's context. The result is the stage's *effective* params: the
planned values written in, the codes in ``audio_code_string`` and the LM switches off, so that the
params a latent records re-run the same diffusion (replay, restore) without planning again.
"""

from __future__ import annotations

from typing import Any

from prefect_acestep.stages.errors import InvalidStageRequest
from prefect_acestep.stages.params import LmSampling, StageParams
from prefect_acestep.stages.planning.codes import format_audio_codes, parse_audio_codes
from prefect_acestep.stages.planning.protocol import Plan, Planner, PlanRequest
from prefect_acestep.stages.planning.registry import planner_for
from prefect_acestep.stages.records import LatentRecord
from prefect_acestep.stages.requests import resolve_source
from prefect_acestep.stages.vocabulary import PLANNED_STAGES

INSTRUMENTAL_LYRICS = "[Instrumental]"
PLAN_OFF: dict[str, Any] = {"thinking": False, "use_cot_metas": False, "use_cot_caption": False, "use_cot_language": False}
"""The LM switches of effective params: the plan is already in them."""


def plan_request(params: StageParams, seed: int) -> PlanRequest:
    """What ``params`` asks its planner; codes only when thinking and none were given by hand
    (upstream's ``need_audio_codes``)."""
    metas, caption, language = params.cot_fields
    return PlanRequest(
        caption=params.caption,
        lyrics=INSTRUMENTAL_LYRICS if params.instrumental else params.lyrics,
        vocal_language=params.vocal_language,
        bpm=params.bpm,
        keyscale=None if params.keyscale == "" else params.keyscale,
        timesignature=None if params.timesignature == "" else params.timesignature,
        duration=params.duration,
        metas=metas,
        caption_rewrite=caption,
        language=language,
        codes=params.thinking and not parse_audio_codes(params.audio_code_string),
        seed=seed,
        **params.model_dump(include=set(LmSampling.model_fields)),
    )


def check_capabilities(planner: Planner, request: PlanRequest, backend: str) -> None:
    """Refuse, before any work, a request for what ``planner`` cannot decide."""
    missing = sorted(request.capabilities - planner.capabilities)
    if missing:
        fields = {"metas": "use_cot_metas", "caption": "use_cot_caption", "language": "use_cot_language", "codes": "thinking"}
        raise InvalidStageRequest(
            f"{', '.join(fields[name] for name in missing)}: the {backend} backend's planner "
            f"({planner.identity.name}) cannot decide {missing}; it decides {sorted(planner.capabilities)}"
        )


def apply_plan(params: StageParams, plan: Plan) -> StageParams:
    """The effective params of ``params`` planned by ``plan`` (see the module docstring)."""
    found, asked = plan.metadata, plan.request
    update: dict[str, Any] = dict(PLAN_OFF)
    if asked.metas:
        if params.bpm is None and "bpm" in found:
            update["bpm"] = int(found["bpm"])
        for name in ("keyscale", "timesignature"):
            if getattr(params, name) == "" and found.get(name):
                update[name] = str(found[name])
        if params.duration is None and "duration" in found:
            update["duration"] = float(found["duration"])
    if asked.caption_rewrite and found.get("caption"):
        update["caption"] = found["caption"]
    if asked.language and params.vocal_language == "unknown" and found.get("language"):
        update["vocal_language"] = found["language"]
    if plan.audio_codes:
        update["audio_code_string"] = format_audio_codes(plan.audio_codes)
    return StageParams.model_validate({**params.model_dump(), **update})


def plan_of_record(record: LatentRecord) -> Plan | None:
    """The plan a latent was made from, rebuilt from its ``lm_metadata`` and its params' codes;
    None when it was not planned (or planned before plans were recorded whole)."""
    stored = record.lm_metadata
    if stored is None or "planner" not in stored or "request" not in stored:
        return None
    fields = {name: value for name, value in stored.items() if name != "audio_code_count"}
    codes = parse_audio_codes(record.params.get("audio_code_string", ""))
    return Plan.model_validate({**fields, "audio_codes": codes})


def asks_for_plan(params: StageParams) -> bool:
    """A generate/refine with the LM switched on (audio tasks never plan; their switches are kept,
    not rejected, like their other task-specific fields)."""
    return params.stage_type in PLANNED_STAGES and params.wants_plan


def needs_new_plan(params: StageParams) -> bool:
    """The run plans anew: it asks for a plan and starts from noise (a source's plan is reused)."""
    return asks_for_plan(params) and resolve_source(params).kind == "noise"


def new_plan(params: StageParams, seed: int) -> Plan:
    """Ask the backend's planner; a request for more than it can decide fails before any work."""
    request = plan_request(params, seed)
    planner = planner_for(params.backend)
    check_capabilities(planner, request, params.backend)
    return planner.plan(request)


def planned(
    params: StageParams, source: LatentRecord | None, given: Plan | None, seed: int
) -> tuple[StageParams, Plan | None]:
    """The params a stage runs with and the plan they came from (None when it asks for none).

    From noise: ``given`` (made by the caller for exactly these params) or a new plan with ``seed``.
    From a source latent: the source's stored plan, never a new one.
    """
    if not asks_for_plan(params):
        if given is not None:
            raise InvalidStageRequest(f"plan: given for a {params.stage_type} that asks for none (LM switches off)")
        return params, None
    if source is not None:
        if given is not None:
            raise InvalidStageRequest(f"plan: a run from latent {source.id} reuses its stored plan; none may be given")
        stored = plan_of_record(source)
        if stored is None:
            raise InvalidStageRequest(
                f"thinking/use_cot_*: source latent {source.id} has no stored plan, and a run from a latent never "
                "plans anew; plan a generate from noise, or turn the LM switches off for this stage"
            )
        return apply_plan(params, stored), stored
    if given is None:
        given = new_plan(params, seed)
    elif given.request != plan_request(params, given.request.seed):
        raise InvalidStageRequest(f"plan: made for another request than this stage's ({given.request!r})")
    return apply_plan(params, given), given
