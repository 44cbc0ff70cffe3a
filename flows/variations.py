"""Variations: one stage run for N seeds (or N parameter sets) in parallel, decoded, scored, ranked.

The fan-out is a subflow whose task runner is chosen per run with ``.with_options(task_runner=...)``:
Prefect's default thread pool, or Dask through prefect-dask (a local cluster of worker processes, or
the scheduler the worker's ``ACE_DASK_ADDRESS`` names, to scale past one machine). Each variation is a stage task run (so
it is cached and retried like any stage, and holds the GPU concurrency slot when one is configured)
followed by a scoring task that decodes its samples and measures them (``prefect_acestep.tasks.scoring``). The
ranking lands in a table artifact; the flow returns it too.
"""

# Flow signatures hold real types, not strings: see the note in ``prefect_acestep.flows``.

import os
from typing import Any

from prefect import flow, task, unmapped
from prefect.artifacts import TableArtifact
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from pydantic import BaseModel, Field, ValidationError

from prefect_acestep.flows.common import borrowed_sources, resolve_out_dir, run_id
from prefect_acestep.flows.run_names import variations_run_name
from prefect_acestep.stages.budgets import check_fan_out_size
from prefect_acestep.stages.conversions import custom_to_params
from prefect_acestep.stages.errors import InvalidStageRequest
from prefect_acestep.stages.forms import Unsettable
from prefect_acestep.stages.params import MAX_BATCH, MAX_SEED, StageParams
from prefect_acestep.stages.requests import GenerateRequest
from prefect_acestep.stages.results import StageResult
from prefect_acestep.stages.runner import stage_size
from prefect_acestep.stages.seeds import draw_base_seed
from prefect_acestep.tasks.artifacts import key_values
from prefect_acestep.tasks.blocks import AceLatentStore
from prefect_acestep.tasks.leases import flow_lease
from prefect_acestep.tasks.publishing import publish, sending_artifacts
from prefect_acestep.tasks.scoring import METRIC_DOCS, RankMetric, SampleScore, score_file
from prefect_acestep.tasks.stage_tasks import stage_task_for
from prefect_acestep.tasks.retries import RETRIES, RETRY_DELAYS, RETRY_JITTER, retry_if_transient
from prefect_acestep.tasks.store_tasks import decode_task

DASK_ADDRESS_ENV = "ACE_DASK_ADDRESS"
"""A Dask scheduler (``tcp://host:8786``) the worker fans variations out to; set on the worker."""
DEFAULT_COUNT = 4
MAX_VARIATIONS = MAX_BATCH


class Variation(BaseModel):
    """One candidate: what it changes relative to the request, and the params it runs with."""

    index: int = Field(ge=0, description="Position in the seeds / param_sets given.")
    changes: dict[str, Any] = Field(description="Fields that differ from the request (seed included).")
    params: StageParams = Field(description="The effective stage params.")

    @property
    def label(self) -> str:
        """What this variation changes, e.g. ``seed=7`` or ``guidance_scale=5.0, seed=3``."""
        return key_values(self.changes, empty="as requested")


class RankedSample(BaseModel):
    """A decoded sample of one variation, with its rank (1 = best) and score."""

    rank: int = Field(ge=1, description="1 = best score.")
    variation: int = Field(ge=0, description="Index of the variation that made it.")
    changes: dict[str, Any] = Field(description="What that variation changed relative to the request.")
    score: SampleScore = Field(description="The sample, its audio file and its score.")
    result: StageResult = Field(description="The stage result of the sample (latent, seed, params, timings).")


def _changes(base: dict[str, Any], candidate: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in candidate.items() if base.get(name) != value}


def plan_variations(
    request: GenerateRequest,
    seeds: list[int] | None,
    n: int | None,
    param_sets: list[dict[str, Any]] | None,
) -> list[Variation]:
    """The candidates: one per seed, one per parameter set (overrides of the request's fields), or
    ``n`` (default 4) seeds counted up from the request's seed (drawn when it is -1), spaced by the
    batch size so no two variations share a sample seed."""
    if seeds is not None and param_sets is not None:
        raise InvalidStageRequest("give seeds or param_sets, not both")
    given = seeds if seeds is not None else param_sets
    if given is not None and n is not None and n != len(given):
        raise InvalidStageRequest(f"n={n} disagrees with the {len(given)} seeds/param_sets given")
    count = len(given) if given is not None else (DEFAULT_COUNT if n is None else n)
    if not 1 <= count <= MAX_VARIATIONS:
        raise InvalidStageRequest(f"{count} variations: between 1 and {MAX_VARIATIONS} are allowed")
    base = request.model_dump(mode="json")
    if param_sets is not None:
        overrides = param_sets
    else:
        if seeds is None:
            first = draw_base_seed(request.seed)
            seeds = [(first + index * request.batch_size) % (MAX_SEED + 1) for index in range(count)]
        overrides = [{"seed": seed} for seed in seeds]
    source = "param_sets" if param_sets is not None else "seeds"
    variations = []
    for index, override in enumerate(overrides):
        try:
            candidate = GenerateRequest.model_validate({**base, **override})
        except ValidationError as error:
            raise InvalidStageRequest(f"{source}[{index}] {override}: {error}") from error
        changes = _changes(base, candidate.model_dump(mode="json")) if param_sets is not None else dict(override)
        variations.append(Variation(index=index, changes=changes, params=custom_to_params(candidate)))
    stage_types = sorted({variation.params.stage_type for variation in variations})
    if len(stage_types) != 1:
        raise InvalidStageRequest(f"variations run one stage type; param_sets mix {stage_types}")
    return variations


def check_metric(variations: list[Variation], metric: RankMetric) -> None:
    """Fail before any work when the metric cannot be measured for some variation."""
    if metric == "key_adherence":
        unkeyed = [variation.index for variation in variations if variation.params.keyscale == ""]
        if unkeyed:
            raise InvalidStageRequest(
                f"rank_by='key_adherence' needs a keyscale; variations {unkeyed} have none (set request.keyscale)"
            )


@task(
    name="score",
    task_run_name="score {label}",
    retries=RETRIES,
    retry_delay_seconds=RETRY_DELAYS,
    retry_jitter_factor=RETRY_JITTER,
    retry_condition_fn=retry_if_transient,
)
def score_task(
    results: list[StageResult], store: AceLatentStore, out_dir: str, metric: RankMetric, label: str
) -> list[SampleScore]:
    """Decode the samples of one stage run and score each audio file (``label`` names the run).
    The decode is the decode task's own body (GPU slot included) run inline: a nested task run
    per variation would cost a round of API calls for nothing a person looks at."""
    first = results[0]
    paths = decode_task.fn(first.latent_id, store, out_dir, stem=f"variation-{first.latent_id}")
    return [
        SampleScore(
            latent_id=result.latent_id,
            sample_index=result.sample_index,
            seed=result.seed,
            audio_path=paths[result.sample_index],
            metric=metric,
            score=score_file(paths[result.sample_index], metric, result.params.keyscale),
        )
        for result in results
    ]


@flow(name="acestep-variations-fan-out", description="Run, decode and score the variations in parallel.")
def fan_out_flow(
    variations: list[Variation], store: AceLatentStore, out_dir: str, metric: RankMetric, pipeline_id: str
) -> list[tuple[list[StageResult], list[SampleScore]]]:
    """The parallel part, on whatever task runner this flow was given (``.map`` fans out)."""
    params = [variation.params for variation in variations]
    stage = stage_task_for(params[0], store)
    runs = stage.map(params, unmapped(store), pipeline_id=unmapped(pipeline_id))
    labels = [f"{metric} {variation.label}" for variation in variations]
    scores = score_task.map(runs, unmapped(store), unmapped(out_dir), unmapped(metric), labels)
    return list(zip(runs.result(), scores.result(), strict=True))


def local_cluster(**cluster_kwargs: Any) -> Any:
    """A ``distributed.LocalCluster`` whose worker processes keep glibc's default malloc trimming.
    Dask starts workers with ``MALLOC_TRIM_THRESHOLD_=65536`` (to hand memory back to the OS sooner);
    with it every large torch allocation becomes an mmap/munmap pair, and a stage of the embedded
    model measured about 4x slower (0.75 s -> 2.9 s). Workers stay single-threaded (Dask's
    OMP_NUM_THREADS=1): each stage then uses one core, so N workers use N cores without
    oversubscribing them."""
    import dask
    from distributed import LocalCluster

    with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
        return LocalCluster(**cluster_kwargs)


def task_runner_for(use_dask: bool, workers: int) -> TaskRunner:
    """Threads in this process, or Dask: the scheduler the worker's environment names
    (``ACE_DASK_ADDRESS``), else a local cluster of ``workers`` single-threaded processes
    (``local_cluster``).

    Where work runs is the worker's configuration, never a run parameter: a Dask scheduler sends
    pickled results, which are code, so an address taken from a run form would let whoever may
    start a run execute code on the worker."""
    if not use_dask:
        return ThreadPoolTaskRunner(max_workers=workers)
    from prefect_dask import DaskTaskRunner

    address = os.environ.get(DASK_ADDRESS_ENV, "")
    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(
        cluster_class=local_cluster,
        cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True, "dashboard_address": None},
    )


def rank(
    variations: list[Variation], outputs: list[tuple[list[StageResult], list[SampleScore]]]
) -> list[RankedSample]:
    """Every sample of every variation, best score first (ties: earlier variation, then sample)."""
    entries = [
        (variation, result, score)
        for variation, (results, scores) in zip(variations, outputs, strict=True)
        for result, score in zip(results, scores, strict=True)
    ]
    entries.sort(key=lambda entry: (-entry[2].score, entry[0].index, entry[1].sample_index))
    return [
        RankedSample(rank=position, variation=variation.index, changes=variation.changes, score=score, result=result)
        for position, (variation, result, score) in enumerate(entries, start=1)
    ]


def ranking_rows(ranked: list[RankedSample]) -> list[dict[str, Any]]:
    """The table artifact's rows: rank, score, what changed, where the latent and audio are."""
    return [
        {
            "rank": entry.rank,
            "score": round(entry.score.score, 4),
            "variation": entry.variation,
            "changes": key_values(entry.changes, empty="as requested"),
            "seed": entry.score.seed,
            "latent_id": entry.score.latent_id,
            "sample": entry.score.sample_index,
            "audio": entry.score.audio_path,
        }
        for entry in ranked
    ]


@flow(
    name="acestep-variations",
    description="Run one stage for several seeds or parameter sets in parallel; rank.",
    flow_run_name=variations_run_name,
)
def variations_flow(
    request: GenerateRequest,
    seeds: Unsettable[list[int]] = None,
    n: Unsettable[int] = None,
    param_sets: Unsettable[list[dict[str, Any]]] = None,
    rank_by: RankMetric = "key_adherence",
    store: Unsettable[str] = None,
    out_dir: Unsettable[str] = None,
    use_dask: bool = False,
    workers: int = 2,
) -> list[RankedSample]:
    """Run ``request``'s stage once per variation in parallel, decode every sample, rank by ``rank_by``.

    Args:
        request: The stage every variation starts from (custom mode).
        seeds: One variation per seed. Exclusive with param_sets.
        n: Number of variations when neither seeds nor param_sets is given (default 4): seeds count up
            from request.seed, or from a drawn one when it is -1.
        param_sets: One variation per dict of request fields to override, e.g. {"guidance_scale": 5}.
        rank_by: key_adherence (share of tonal energy in the requested key; needs request.keyscale) or
            loudness (RMS dBFS). Higher ranks first.
        store: Name of a saved ACE Latent Store block; Unset uses ACE_LATENT_DIR / ACE_LATENT_TTL_HOURS.
        out_dir: Directory for the audio files; Unset uses ACE_AUDIO_DIR (default ~/.prefect-acestep/audio).
        use_dask: Fan out on Dask (prefect-dask) instead of Prefect's thread pool: the scheduler the
            worker's ACE_DASK_ADDRESS names, else a local cluster.
        workers: Threads, or local Dask worker processes (one thread each).
    """
    if not 1 <= workers <= MAX_VARIATIONS:
        raise InvalidStageRequest(f"workers={workers}: between 1 and {MAX_VARIATIONS} are allowed")
    variations = plan_variations(request, seeds, n, param_sets)
    check_metric(variations, rank_by)
    block = AceLatentStore.resolve(store)
    check_fan_out_size([(v.params, *stage_size(v.params, block.get_store())) for v in variations])
    audio_dir = resolve_out_dir(out_dir)
    runner = task_runner_for(use_dask, workers)
    fan_out = fan_out_flow.with_options(task_runner=runner)
    pipeline_id = run_id()
    with sending_artifacts():
        with flow_lease(block, pipeline_id, borrowed=borrowed_sources([variation.params for variation in variations])):
            outputs = fan_out(variations, block, audio_dir, rank_by, pipeline_id)
        ranked = rank(variations, outputs)
        publish(
            TableArtifact(
                table=ranking_rows(ranked),
                key="acestep-variations-ranking",
                description=f"Variations ranked by {rank_by}: {METRIC_DOCS[rank_by]}",
            )
        )
    return ranked
