"""Pipeline mode: linear stages, each one task run, chained by latent IDs."""

# Flow signatures hold real types, not strings: see the note in ``prefect_acestep.flows``.

from prefect import flow
from prefect.states import State

from prefect_acestep.flows.common import RunStory, borrowed_sources, checked, resolve_out_dir, run_id, run_stage, with_audio
from prefect_acestep.flows.run_names import pipeline_run_name
from prefect_acestep.stages.forms import Unsettable
from prefect_acestep.stages.requests import PipelineRequest
from prefect_acestep.stages.results import StageResult
from prefect_acestep.tasks.blocks import AceLatentStore
from prefect_acestep.tasks.leases import flow_lease
from prefect_acestep.tasks.plan_tasks import plan_for_stage
from prefect_acestep.tasks.publishing import sending_artifacts
from prefect_acestep.tasks.stage_tasks import stage_task_for

TITLE = "ACE-Step pipeline"


@flow(
    name="acestep-pipeline",
    description="Run a linear pipeline of ACE-Step stages over stored latents.",
    flow_run_name=pipeline_run_name,
    validate_parameters=False,
)
def pipeline_flow(
    request: PipelineRequest, store: Unsettable[str] = None, out_dir: Unsettable[str] = None
) -> list[list[StageResult]] | State:
    """Run the stages in order. Each stage's source resolves by ``src_latent_id > src_stage >
    src_audio_id > noise``; the final stage and every ``preview`` stage are decoded to audio files.
    A request with problems runs nothing: the run fails naming each (``flows.common.checked``).

    Args:
        request: The pipeline: shared conditioning and run settings, then the stages.
        store: Name of a saved ACE Latent Store block; Unset uses ACE_LATENT_DIR / ACE_LATENT_TTL_HOURS.
        out_dir: Directory for the audio files; Unset uses ACE_AUDIO_DIR (default ~/.prefect-acestep/audio).
    """
    request = checked(PipelineRequest, request, TITLE)
    if isinstance(request, State):
        return request
    block = AceLatentStore.resolve(store)
    audio_dir = resolve_out_dir(out_dir)
    story = RunStory(block, store, out_dir)
    pipeline_id = run_id()
    stage_latents: dict[int, str] = {}
    hops: list[list[StageResult]] = []
    last = len(request.stages) - 1
    sources = [request.stage_params(index) for index in range(len(request.stages))]
    with sending_artifacts(), flow_lease(block, pipeline_id, borrowed=borrowed_sources(sources)):
        for index, stage in enumerate(request.stages):
            params, plan = plan_for_stage(request.stage_params(index), block)
            results, task_run_id = run_stage(
                stage_task_for(params, block),
                params, block, stage_latents=dict(stage_latents), stage_index=index, pipeline_id=pipeline_id, plan=plan,
            )  # fmt: skip
            stage_latents[index] = results[0].latent_id
            if stage.preview or index == last:
                stem = f"stage{index}-{params.stage_type}-{results[0].latent_id}"
                results = with_audio(results, block, audio_dir, stem=stem)
            story.stage(index, results, task_run_id, key=f"acestep-stage-{index}")
            hops.append(results)
        story.summary(TITLE, hops, audio_dir, key="acestep-pipeline-summary")
    return hops
