"""Flow run names that say what ran: the caption and the stage types, e.g.
``warm electric piano ballad… · generate → refine → repaint``.

Prefect calls these (``flow_run_name=``) with the run's parameters as it received them: a request
model from Python, a JSON mapping from a deployment. A request that does not validate is named as
such; the flow then rejects it with one line per problem (``flows.common.checked``).
"""

from __future__ import annotations

from typing import Any

from prefect.runtime import flow_run
from pydantic import BaseModel, ValidationError

from prefect_acestep.stages.requests import GenerateRequest, PipelineRequest, SimpleRequest

CAPTION_CHARS = 48


def short(text: str) -> str:
    """``text`` on one line, cut to ``CAPTION_CHARS`` with an ellipsis; "no caption" when empty."""
    line = " ".join(text.split())
    if not line:
        return "no caption"
    return line if len(line) <= CAPTION_CHARS else line[: CAPTION_CHARS - 1].rstrip() + "…"


def _request(model: type[BaseModel], name: str = "request") -> Any:
    value = flow_run.parameters.get(name)
    try:
        return model.model_validate(value.model_dump() if isinstance(value, BaseModel) else value)
    except ValidationError:
        return None


def pipeline_run_name() -> str:
    request = _request(PipelineRequest)
    if request is None:
        return "pipeline · invalid request"
    kinds = " → ".join(request.stage_params(index).stage_type for index in range(len(request.stages)))
    return f"{short(request.caption)} · {kinds}"


def custom_run_name() -> str:
    request = _request(GenerateRequest)
    if request is None:
        return "custom · invalid request"
    source = request.init_latent_id if request.init_latent_id is not None else request.src_audio_id
    return f"{short(request.caption)} · {request.stage_type}" + ("" if source is None else f" from {source}")


def simple_run_name() -> str:
    request = _request(SimpleRequest)
    return "simple · invalid request" if request is None else f"simple · {short(request.description)}"


def variations_run_name() -> str:
    request = _request(GenerateRequest)
    if request is None:
        return "variations · invalid request"
    return f"{short(request.caption)} · {request.stage_type} variations"


def replay_run_name() -> str:
    parameters = flow_run.parameters
    overrides = parameters.get("overrides")
    changed = f" with {', '.join(sorted(overrides))}" if isinstance(overrides, dict) and overrides else ""
    return f"replay {parameters.get('latent_id')}{changed}"


def gc_run_name() -> str:
    store = flow_run.parameters.get("store")
    return f"gc · {'default store' if store is None else store}"
