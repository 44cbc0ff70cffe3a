"""Custom mode: one stage, from noise or resumed from a stored latent, with checkpoints."""

from __future__ import annotations

from prefect import flow

from prefect_acestep.flows.common import borrowed_sources, resolve_out_dir, run_id, with_audio
from prefect_acestep.stages.conversions import custom_to_params
from prefect_acestep.stages.requests import GenerateRequest
from prefect_acestep.stages.results import StageResult
from prefect_acestep.tasks.artifacts import publish_summary
from prefect_acestep.tasks.blocks import AceLatentStore
from prefect_acestep.tasks.leases import flow_lease
from prefect_acestep.tasks.plan_tasks import plan_for_stage
from prefect_acestep.tasks.publishing import sending_artifacts
from prefect_acestep.tasks.stage_tasks import stage_task_for


def run_custom(
    request: GenerateRequest,
    block: AceLatentStore,
    out_dir: str | None,
    title: str,
    refresh_cache: bool = False,
) -> list[StageResult]:
    """The body of every one-stage flow (generate, simple, replay): the plan task first when the
    stage plans anew, then the stage task."""
    audio_dir = resolve_out_dir(out_dir)  # before any work: a refused out_dir runs nothing
    pipeline_id = run_id()
    params = custom_to_params(request)
    with sending_artifacts():
        with flow_lease(block, pipeline_id, borrowed=borrowed_sources([params])):
            params, plan = plan_for_stage(params, block)
            stage = stage_task_for(params, block)
            if refresh_cache:
                stage = stage.with_options(refresh_cache=True)
            results = stage(params, block, pipeline_id=pipeline_id, plan=plan)
            results = with_audio(results, block, audio_dir, stem=f"{params.stage_type}-{results[0].latent_id}")
        publish_summary(title, [results], audio_dir, key="acestep-generate-summary")
    return results


@flow(name="acestep-generate", description="Run one ACE-Step stage (custom mode): generate, resume, or an audio task.")
def generate_flow(request: GenerateRequest, store: str | None = None, out_dir: str | None = None) -> list[StageResult]:
    """Run one stage. With ``init_latent_id`` it partially denoises that latent from ``t_start``, or
    resumes a checkpoint exactly (``t_start`` unset); ``checkpoint_steps`` stores intermediate states.

    Args:
        request: The custom-mode request.
        store: Name of a saved ACE Latent Store block; None uses ACE_LATENT_DIR / ACE_LATENT_TTL_HOURS.
        out_dir: Directory for the audio files; None uses ACE_AUDIO_DIR (default ~/.prefect-acestep/audio).
    """
    return run_custom(request, AceLatentStore.resolve(store), out_dir, "ACE-Step generate")
