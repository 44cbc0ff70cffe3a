"""Simple mode: a description becomes a planned custom request, then one generate stage.

Both backends answer the same way: the description is the caption, the stage asks its backend's
planner for everything that planner can decide, and the plan task plans before the generate task
runs. On ``acestep`` the planner is the 5 Hz LM (metas, caption, language and audio codes; its
folder must be configured, ``ACESTEP_LM_DIR``); on ``embedded`` it is the rule reader (metas and
caption).
"""

# Flow signatures hold real types, not strings: see the note in ``prefect_acestep.flows``.

from prefect import flow
from prefect.states import State

from prefect_acestep.flows.common import checked
from prefect_acestep.flows.generate import run_custom
from prefect_acestep.flows.run_names import simple_run_name
from prefect_acestep.stages.conversions import simple_to_custom
from prefect_acestep.stages.forms import Unsettable
from prefect_acestep.stages.planning.registry import planner_for
from prefect_acestep.stages.requests import GenerateRequest, SimpleRequest
from prefect_acestep.stages.results import StageResult

TITLE = "ACE-Step simple"


def planned_request(request: SimpleRequest) -> GenerateRequest:
    """The custom request simple mode runs: every planning switch the backend's planner serves is
    on (building the planner here, so a missing LM fails before any task); the request's own fields
    (instrumental, vocal language, duration, seed, variant, batch, LM sampling) are kept as given."""
    can = planner_for(request.backend).capabilities
    switches = {
        "thinking": "codes" in can,
        "use_cot_metas": "metas" in can,
        "use_cot_caption": "caption" in can,
        "use_cot_language": "language" in can,
    }
    return GenerateRequest.model_validate({**simple_to_custom(request).model_dump(), **switches})


@flow(
    name="acestep-simple",
    description="Describe the music in words; the backend's planner fills the parameters.",
    flow_run_name=simple_run_name,
    validate_parameters=False,
)
def simple_flow(
    request: SimpleRequest, store: Unsettable[str] = None, out_dir: Unsettable[str] = None
) -> list[StageResult] | State:
    """Plan the song from ``request.description`` (a plan task run), then run one generate stage;
    the plan is recorded as the latent's ``lm_metadata``.

    Args:
        request: The description and the few settings simple mode exposes.
        store: Name of a saved ACE Latent Store block; Unset uses ACE_LATENT_DIR / ACE_LATENT_TTL_HOURS.
        out_dir: Directory for the audio files; Unset uses ACE_AUDIO_DIR.
    """
    request = checked(SimpleRequest, request, TITLE)
    if isinstance(request, State):
        return request
    return run_custom(planned_request(request), store, out_dir, TITLE)
