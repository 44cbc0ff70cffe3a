"""Pipeline mode: linear stages, each one task run, chained by latent IDs."""

from __future__ import annotations

from prefect import flow

from prefect_acestep.flows.common import borrowed_sources, resolve_out_dir, run_id, with_audio
from prefect_acestep.stages.requests import PipelineRequest
from prefect_acestep.stages.results import StageResult
from prefect_acestep.tasks.artifacts import publish_summary
from prefect_acestep.tasks.blocks import AceLatentStore
from prefect_acestep.tasks.leases import flow_lease
from prefect_acestep.tasks.plan_tasks import plan_for_stage
from prefect_acestep.tasks.publishing import sending_artifacts
from prefect_acestep.tasks.stage_tasks import stage_task_for


@flow(name="acestep-pipeline", description="Run a linear pipeline of ACE-Step stages over stored latents.")
def pipeline_flow(
    request: PipelineRequest, store: str | None = None, out_dir: str | None = None
) -> list[list[StageResult]]:
    """Run the stages in order. Each stage's source resolves by ``src_latent_id > src_stage >
    src_audio_id > noise``; the final stage and every ``preview`` stage are decoded to audio files.

    Args:
        request: The pipeline: shared conditioning and run settings, then the stages.
        store: Name of a saved ACE Latent Store block; None uses ACE_LATENT_DIR / ACE_LATENT_TTL_HOURS.
        out_dir: Directory for the audio files; None uses ACE_AUDIO_DIR (default ~/.prefect-acestep/audio).
    """
    block = AceLatentStore.resolve(store)
    audio_dir = resolve_out_dir(out_dir)
    pipeline_id = run_id()
    stage_latents: dict[int, str] = {}
    hops: list[list[StageResult]] = []
    last = len(request.stages) - 1
    sources = [request.stage_params(index) for index in range(len(request.stages))]
    with sending_artifacts(), flow_lease(block, pipeline_id, borrowed=borrowed_sources(sources)):
        for index, stage in enumerate(request.stages):
            params, plan = plan_for_stage(request.stage_params(index), block)
            results = stage_task_for(params, block)(
                params, block, stage_latents=dict(stage_latents), stage_index=index, pipeline_id=pipeline_id, plan=plan
            )
            stage_latents[index] = results[0].latent_id
            if stage.preview or index == last:
                stem = f"stage{index}-{params.stage_type}-{results[0].latent_id}"
                results = with_audio(results, block, audio_dir, stem=stem)
            hops.append(results)
        publish_summary("ACE-Step pipeline", hops, audio_dir, key="acestep-pipeline-summary")
    return hops
