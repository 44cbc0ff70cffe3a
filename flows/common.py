"""Pieces every flow shares: where audio goes, decoding results, the run's identity, checking a
request before anything runs, and telling each stage's story (``RunStory``)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

from prefect import Task, get_run_logger
from prefect.runtime import deployment, flow_run
from prefect.states import Failed, State
from pydantic import BaseModel, ValidationError

from prefect_acestep.stages.decode import existing_audio
from prefect_acestep.stages.errors import InvalidStageRequest, LatentCorrupt, LatentDeleted, LatentExpired, LatentNotFound
from prefect_acestep.stages.forms import problem_lines
from prefect_acestep.stages.params import StageParams
from prefect_acestep.stages.records import LatentRecord
from prefect_acestep.stages.results import StageResult
from prefect_acestep.stages.vocabulary import IMPORT_STAGE
from prefect_acestep.tasks.artifacts import (
    lineage_markdown,
    problems_markdown,
    publish_markdown,
    publish_stage,
    stage_log_line,
)
from prefect_acestep.tasks.blocks import AceLatentStore
from prefect_acestep.tasks.listen import PREVIEW_SAMPLES, stage_listen_markdown
from prefect_acestep.tasks.previews import Preview, preview_of
from prefect_acestep.tasks.run_links import find_run_forms
from prefect_acestep.tasks.store_tasks import decode_task

AUDIO_DIR_ENV = "ACE_AUDIO_DIR"
DEFAULT_AUDIO_DIR = "~/.prefect-acestep/audio"
PROBLEMS_KEY = "acestep-request-problems"

Request = TypeVar("Request", bound=BaseModel)


def audio_root() -> Path:
    """The worker's audio root: ``ACE_AUDIO_DIR``, else ``~/.prefect-acestep/audio`` (absolute)."""
    return Path(os.environ.get(AUDIO_DIR_ENV, DEFAULT_AUDIO_DIR)).expanduser().resolve()


def resolve_out_dir(out_dir: str | None) -> str:
    """Where a flow writes its audio files, under the worker's audio root (``audio_root``).

    None is the root itself; a relative ``out_dir`` is a folder under it, which ``..`` or a symlink
    may not leave. An absolute ``out_dir`` is taken as it is from a flow called in Python or from
    the command line (its caller writes with their own rights), but a run started from a
    deployment must stay under the root: its parameters come from whoever may start runs, and a
    worker writes nowhere its configuration did not put in reach (move the root with
    ``ACE_AUDIO_DIR`` on the worker)."""
    root = audio_root()
    if out_dir is None:
        return str(root)
    chosen = Path(out_dir).expanduser()
    target = (chosen if chosen.is_absolute() else root / chosen).resolve()
    from_deployment = deployment.id is not None  # this run's, or its parent's when a subflow
    if (from_deployment or not chosen.is_absolute()) and not target.is_relative_to(root):
        raise InvalidStageRequest(
            f"out_dir: {out_dir!r} leads outside the audio root {root}; a run started from a deployment writes "
            f"only under {AUDIO_DIR_ENV} (a folder relative to it, or an absolute path inside it)"
        )
    return str(target)


def borrowed_sources(params: list[StageParams]) -> set[str]:
    """The latents stages name by ID (not made by the run itself): what its lease must mark."""
    return {value for p in params for value in (p.src_latent_id, p.src_audio_id) if value is not None}


def run_id() -> str:
    """This flow run's id (a pipeline's identity on its latents)."""
    return str(flow_run.get_id())


def checked(model: type[Request], value: Any, title: str) -> Request | State:
    """``value`` as a ``model`` request, checked whole before anything runs; or, when it has
    problems, the Failed state the flow returns instead of running.

    The flows take their request unvalidated (``validate_parameters=False``) so that a rejected one
    is told here in the form's words, one line per problem naming the stage index and the field's
    title: in the run's state message and an ERROR log line (no traceback: nothing broke, the input
    was wrong), in a short markdown artifact, and as the ``InvalidStageRequest`` a Python caller gets.
    """
    try:
        return model.model_validate(value)
    except ValidationError as error:
        lines = problem_lines(error, model)
    message = "The request was not run:\n" + "\n".join(lines)
    publish_markdown(problems_markdown(title, lines), key=PROBLEMS_KEY, description=f"{title}: the request's problems")
    get_run_logger().error(message)
    return Failed(message=message, data=InvalidStageRequest(message))


def run_stage(stage: Task[..., list[StageResult]], *args: Any, **kwargs: Any) -> tuple[list[StageResult], UUID | None]:
    """Run a stage task; its results and its task run's id (the stage's artifacts are shown with it)."""
    state = stage(*args, return_state=True, **kwargs)
    return state.result(), state.state_details.task_run_id


def with_audio(results: list[StageResult], store: AceLatentStore, out_dir: str, stem: str) -> list[StageResult]:
    """Decode the batch latent of ``results`` and attach each sample's file. A cached stage's
    audio that is already there is kept without a decode task (no model call, no task run)."""
    latent_id = results[0].latent_id
    found = existing_audio(store.get_store(), latent_id, out_dir, stem=stem)
    paths = [str(path) for path in found] if found is not None else decode_task(latent_id, store, out_dir, stem=stem)
    by_index = dict(enumerate(paths))
    return [result.model_copy(update={"audio_path": by_index[result.sample_index]}) for result in results]


class RunStory:
    """What one flow run tells about its stages: per stage one INFO log line, a table and, when
    decoded, a page to listen and look; at the end a summary with every decoded stage's player and
    the run-form links of every latent. The deployments the links open are looked up once, here."""

    def __init__(self, block: AceLatentStore, store: str | None, out_dir: str | None) -> None:
        self.block = block
        self.store_name = store
        carried = {name: value for name, value in (("store", store), ("out_dir", out_dir)) if value is not None}
        self.forms = find_run_forms(carried)
        self.links: dict[tuple[str, int], dict[str, str]] = {}
        self.sources: dict[str, StageParams] = {}
        self.previews: dict[int, dict[int, Preview]] = {}
        self._records: dict[str, LatentRecord] = {}

    def _record(self, latent_id: str) -> LatentRecord:
        if latent_id not in self._records:
            self._records[latent_id] = self.block.get_store().record(latent_id)
        return self._records[latent_id]

    def _learn(self, results: Sequence[StageResult]) -> None:
        params = results[0].params
        source = params.src_latent_id if params.src_latent_id is not None else params.src_audio_id
        if source is not None:
            self._learn_source(source)
        if not self.forms.deployments:
            return
        for result in results:
            for latent_id in (result.latent_id, *(c.latent_id for c in result.checkpoints)):
                record = self._record(latent_id)
                self.links[(latent_id, result.sample_index)] = self.forms.links(record, result.sample_index)

    def _learn_source(self, source: str) -> None:
        """The params a stage's source was made with, for the summary's comparison. A cached stage
        may name a source that is gone since (a damaged latent is set aside and made again under a
        new ID): the summary then compares that stage against the defaults, and the log says why."""
        try:
            record = self._record(source)
        except (LatentNotFound, LatentExpired, LatentDeleted, LatentCorrupt) as error:
            get_run_logger().warning(f"the summary compares against the defaults where a stage read {source}: {error}")
            return
        if record.stage_type != IMPORT_STAGE:  # imported audio has no params
            self.sources[source] = StageParams.model_validate(record.params)

    def stage(self, index: int | None, results: list[StageResult], task_run_id: UUID | None, key: str) -> None:
        """A stage is done (and decoded, if it is to be heard): log it and publish its artifacts."""
        self._learn(results)
        previews = {
            r.sample_index: preview_of(r.audio_path) for r in results[:PREVIEW_SAMPLES] if r.audio_path is not None
        }
        listen = None
        if previews:
            self.previews[0 if index is None else index] = previews
            listen = stage_listen_markdown(index, results, previews, self.links, str(self.block.root), self.store_name)
        publish_stage(results, task_run_id, self.links, listen, key)
        get_run_logger().info(stage_log_line(index, results))

    def summary(self, title: str, hops: list[list[StageResult]], audio_dir: str, key: str) -> None:
        markdown = lineage_markdown(title, hops, audio_dir, self.sources, self.links, self.previews)
        publish_markdown(markdown, key=key, description=title)
