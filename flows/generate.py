"""Custom mode: one stage, from noise or resumed from a stored latent, with checkpoints."""

# Flow signatures hold real types, not strings: see the note in ``prefect_acestep.flows``.

from prefect import flow
from prefect.states import State

from prefect_acestep.flows.common import RunStory, borrowed_sources, checked, resolve_out_dir, run_id, run_stage, with_audio
from prefect_acestep.flows.run_names import custom_run_name
from prefect_acestep.stages.conversions import custom_to_params
from prefect_acestep.stages.forms import Unsettable
from prefect_acestep.stages.requests import GenerateRequest
from prefect_acestep.stages.results import StageResult
from prefect_acestep.tasks.blocks import AceLatentStore
from prefect_acestep.tasks.leases import flow_lease
from prefect_acestep.tasks.plan_tasks import plan_for_stage
from prefect_acestep.tasks.publishing import sending_artifacts
from prefect_acestep.tasks.stage_tasks import stage_task_for

TITLE = "ACE-Step generate"


def run_custom(
    request: GenerateRequest,
    store: str | None,
    out_dir: str | None,
    title: str,
    refresh_cache: bool = False,
) -> list[StageResult]:
    """The body of every one-stage flow (generate, simple, replay): the plan task first when the
    stage plans anew, then the stage task."""
    block = AceLatentStore.resolve(store)
    audio_dir = resolve_out_dir(out_dir)  # before any work: a refused out_dir runs nothing
    pipeline_id = run_id()
    params = custom_to_params(request)
    story = RunStory(block, store, out_dir)
    with sending_artifacts():
        with flow_lease(block, pipeline_id, borrowed=borrowed_sources([params])):
            params, plan = plan_for_stage(params, block)
            stage = stage_task_for(params, block)
            if refresh_cache:
                stage = stage.with_options(refresh_cache=True)
            results, task_run_id = run_stage(stage, params, block, pipeline_id=pipeline_id, plan=plan)
            results = with_audio(results, block, audio_dir, stem=f"{params.stage_type}-{results[0].latent_id}")
        story.stage(None, results, task_run_id, key="acestep-stage")
        story.summary(title, [results], audio_dir, key="acestep-generate-summary")
    return results


@flow(
    name="acestep-generate",
    description="Run one ACE-Step stage (custom mode): generate, resume, or an audio task.",
    flow_run_name=custom_run_name,
    validate_parameters=False,
)
def generate_flow(
    request: GenerateRequest, store: Unsettable[str] = None, out_dir: Unsettable[str] = None
) -> list[StageResult] | State:
    """Run one stage. With ``init_latent_id`` it partially denoises that latent from ``t_start``, or
    resumes a checkpoint exactly (``t_start`` unset); ``checkpoint_steps`` stores intermediate states.

    Args:
        request: The custom-mode request.
        store: Name of a saved ACE Latent Store block; Unset uses ACE_LATENT_DIR / ACE_LATENT_TTL_HOURS.
        out_dir: Directory for the audio files; Unset uses ACE_AUDIO_DIR (default ~/.prefect-acestep/audio).
    """
    request = checked(GenerateRequest, request, TITLE)
    return request if isinstance(request, State) else run_custom(request, store, out_dir, TITLE)
