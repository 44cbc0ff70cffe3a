"""Simple mode: a description becomes a full custom request through the planner, then generate."""

from __future__ import annotations

from prefect import flow

from prefect_acestep.flows.generate import run_custom
from prefect_acestep.stages.backends.embedded import plan
from prefect_acestep.stages.conversions import simple_to_custom
from prefect_acestep.stages.requests import GenerateRequest, SimpleRequest
from prefect_acestep.stages.results import StageResult
from prefect_acestep.tasks.blocks import AceLatentStore


def planned_request(request: SimpleRequest) -> tuple[GenerateRequest, dict]:
    """The custom request simple mode runs, and the planner's metadata. The planner fills caption,
    bpm, key, time signature and (when the request leaves it unset) duration; the request's own
    fields (instrumental, vocal language, seed, variant, batch) are kept as given: the planner
    describes the music, it does not override what the user chose."""
    custom = simple_to_custom(request)
    planned = plan(request.description)
    duration = request.duration if request.duration is not None else planned.duration
    filled = custom.model_copy(
        update={
            "caption": planned.caption,
            "bpm": planned.bpm,
            "keyscale": planned.keyscale,
            "timesignature": planned.timesignature,
            "duration": duration,
        }
    )
    return GenerateRequest.model_validate(filled.model_dump()), {"description": request.description, **planned.lm_metadata}


@flow(name="acestep-simple", description="Describe the music in words; the planner fills the parameters.")
def simple_flow(request: SimpleRequest, store: str | None = None, out_dir: str | None = None) -> list[StageResult]:
    """Plan caption, tempo, key, time signature and duration from ``request.description``, then run
    one generate stage; the plan is recorded as the latent's ``lm_metadata``.

    Args:
        request: The description and the few settings simple mode exposes.
        store: Name of a saved ACE Latent Store block; None uses ACE_LATENT_DIR / ACE_LATENT_TTL_HOURS.
        out_dir: Directory for the audio files; None uses ACE_AUDIO_DIR.
    """
    custom, metadata = planned_request(request)
    return run_custom(custom, AceLatentStore.resolve(store), out_dir, "ACE-Step simple", lm_metadata=metadata)
