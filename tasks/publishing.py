"""How artifacts reach the Prefect API: from one background thread per process, so that a stage
never waits on the API.

Each artifact is one API write, and on Prefect's default SQLite server a write costs 10-30 ms, more
while the server records a burst of events; a pipeline writes a table and a progress bar per stage
and a summary per flow. Sent inline, those writes were most of a pipeline's orchestration overhead.
Here a run queues its artifacts and one daemon thread sends them, in the order they were queued:

- the flow and task run ids are taken from the run context when an artifact is queued (the sending
  thread has no run context), and so are the Prefect settings (which API);
- a progress bar's updates are coalesced: while its creation is still queued, an update changes what
  will be created; after that, only the newest waiting value is sent. A fast diffusion costs one
  write, a slow one a write per ``PROGRESS_INTERVAL_S`` at most (``prefect_acestep.tasks.artifacts``).

Nothing is left unsent when a run ends. A flow body runs inside ``sending_artifacts()``, which waits
for everything queued before the flow returns, so the run's artifacts are there when it is
Completed; a task that runs where no such flow body is active (a Dask worker process, a user's own
flow) calls ``task_done()``, which waits for its own. At interpreter exit whatever is still queued is
sent. A write the API refuses is reported as a warning on the run's logger when the run waits for
its artifacts: never dropped silently, and never failing a run whose results are already stored.
"""

from __future__ import annotations

import atexit
import contextvars
import os
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from prefect.artifacts import Artifact, ProgressArtifact
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.actions import ArtifactCreate, ArtifactUpdate
from prefect.exceptions import MissingContextError
from prefect.logging import get_logger, get_run_logger
from prefect.settings import PREFECT_API_URL
from prefect.utilities.context import get_task_and_flow_run_ids

EXIT_FLUSH_S = 30.0
"""How long the interpreter's exit waits for artifacts still queued."""


@dataclass(eq=False)
class Progress:
    """A progress bar being published: ``update`` it as often as you like; what reaches the API is
    the newest value (see the module docstring)."""

    publisher: Publisher
    artifact: ProgressArtifact
    artifact_id: UUID | None = None
    created: bool = False
    latest: tuple[float, str] | None = None
    update_queued: bool = False

    def update(self, progress: float, description: str) -> None:
        self.publisher.update_progress(self, progress, description)


@dataclass(eq=False)
class _Write:
    """One queued API write, with the context (settings, run ids) it was queued in."""

    context: contextvars.Context
    artifact: Artifact | None = None
    progress: Progress | None = None
    done: threading.Event = field(default_factory=threading.Event)


class Publisher:
    """The per-process queue and its sending thread (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._queue: deque[_Write] = deque()
        self._sending: _Write | None = None
        self._errors: list[str] = []
        self._thread: threading.Thread | None = None
        self._clients: dict[str | None, SyncPrefectClient] = {}
        self._flow_scopes = 0
        self.writes = 0
        """API writes sent by this process (for the benchmark and the tests)."""

    # --- queueing (any thread) ---------------------------------------------------------------

    def publish(self, artifact: Artifact) -> None:
        """Queue ``artifact`` for the current flow or task run."""
        self._enqueue(_Write(contextvars.copy_context(), artifact=_with_run_ids(artifact)))

    def progress(self, progress: float, description: str) -> Progress:
        """Queue a progress bar for the current run; update it through the returned handle."""
        handle = Progress(self, _with_run_ids(ProgressArtifact(progress=progress, description=description)))
        self._enqueue(_Write(contextvars.copy_context(), progress=handle))
        return handle

    def update_progress(self, handle: Progress, progress: float, description: str) -> None:
        with self._lock:
            if not handle.created:  # still queued: create it with the new value instead
                handle.artifact = handle.artifact.model_copy(update={"progress": progress, "description": description})
                return
            handle.latest = (progress, description)
            if handle.update_queued:
                return
            handle.update_queued = True
        self._enqueue(_Write(contextvars.copy_context(), progress=handle))

    def _enqueue(self, write: _Write) -> None:
        with self._lock:
            self._queue.append(write)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="prefect-acestep-artifacts", daemon=True)
                self._thread.start()
            self._lock.notify_all()

    # --- waiting ---------------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> list[str]:
        """Wait until everything queued so far is sent; return (and forget) the refused writes."""
        with self._lock:
            pending = [*self._queue, *([self._sending] if self._sending is not None else [])]
        deadline = None if timeout is None else time.monotonic() + timeout
        for write in pending:
            write.done.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        with self._lock:
            errors, self._errors = self._errors, []
        return errors

    @contextmanager
    def flow_scope(self) -> Iterator[None]:
        """Around a flow body: its artifacts (and its tasks') are sent before it returns."""
        with self._lock:
            self._flow_scopes += 1
        try:
            yield
        finally:
            with self._lock:
                self._flow_scopes -= 1
            _report(self.flush())

    def task_done(self) -> None:
        """At a task's end: wait for its artifacts unless a flow body of this process will."""
        with self._lock:
            if self._flow_scopes > 0:
                return
        _report(self.flush())

    # --- sending (the background thread) ----------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._queue:
                    self._lock.wait()
                write = self._sending = self._queue.popleft()
            try:
                write.context.run(self._send, write)
            except Exception as error:  # the API refused or was unreachable: reported at the flush
                what = write.artifact if write.artifact is not None else write.progress.artifact  # type: ignore[union-attr]
                with self._lock:
                    self._errors.append(f"{what.type} artifact {what.description!r}: {type(error).__name__}: {error}")
            finally:
                with self._lock:
                    self._sending = None
                write.done.set()

    def _client(self) -> SyncPrefectClient:
        url = PREFECT_API_URL.value()
        if url not in self._clients:
            client = get_client(sync_client=True)
            client.__enter__()
            self._clients[url] = client
        return self._clients[url]

    def _send(self, write: _Write) -> None:
        client = self._client()
        if write.artifact is not None:
            client.create_artifact(_request(write.artifact))
            self.writes += 1
            return
        handle = write.progress
        assert handle is not None
        with self._lock:
            creating = not handle.created
            handle.created = True  # from here on, updates queue their own writes
            artifact, latest, handle.latest, handle.update_queued = handle.artifact, handle.latest, None, False
        if creating:
            handle.artifact_id = client.create_artifact(_request(artifact)).id
            self.writes += 1
        elif latest is not None and handle.artifact_id is not None:
            progress, description = latest
            client.update_artifact(handle.artifact_id, ArtifactUpdate(data=progress, description=description))
            self.writes += 1


def _with_run_ids(artifact: Artifact) -> Artifact:
    task_run_id, flow_run_id = get_task_and_flow_run_ids()
    return artifact.model_copy(
        update={
            "task_run_id": artifact.task_run_id if artifact.task_run_id is not None else task_run_id,
            "flow_run_id": artifact.flow_run_id if artifact.flow_run_id is not None else flow_run_id,
        }
    )


def _request(artifact: Artifact) -> ArtifactCreate:
    data: Any = artifact.format(_sync=True)  # type: ignore[call-arg]  # Prefect's own formatting, sync
    return ArtifactCreate(
        type=artifact.type,
        key=artifact.key,
        description=artifact.description,
        data=data,
        task_run_id=artifact.task_run_id,
        flow_run_id=artifact.flow_run_id,
    )


def _report(errors: list[str]) -> None:
    if not errors:
        return
    try:
        logger = get_run_logger()
    except MissingContextError:
        logger = get_logger("prefect_acestep.publishing")
    for error in errors:
        logger.warning("The Prefect API did not take an artifact: %s", error)


_publisher = Publisher()


def publisher() -> Publisher:
    """This process's publisher."""
    return _publisher


def publish(artifact: Artifact) -> None:
    """Queue an artifact (table, markdown, link, image...) for the current run."""
    _publisher.publish(artifact)


def sending_artifacts() -> Any:
    """Wrap a flow body: the artifacts it and its tasks queued are sent before it returns."""
    return _publisher.flow_scope()


def _fresh_after_fork() -> None:
    """A forked child starts with an empty queue and no thread (the parent's does not exist there)."""
    global _publisher
    _publisher = Publisher()


def _send_the_rest() -> None:
    _publisher.flush(timeout=EXIT_FLUSH_S)


os.register_at_fork(after_in_child=_fresh_after_fork)
atexit.register(_send_the_rest)
