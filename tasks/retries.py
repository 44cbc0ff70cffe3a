"""Which failures a stage task retries.

Only failures that can pass on their own are retried, decided by type alone: a ``TransientError``
(which includes ``StorageUnavailable``: a dropped connection, a timeout, a throttled server) or a
device out of memory. Everything else fails fast with its message: validation, missing, expired,
deleted, incompatible or corrupt latents, a full disk or a permission error (``StorageFull``,
``StoragePermission``), unknown bugs. Retrying cannot help those and would hide the error behind
minutes of backoff.

Storage errors are typed where storage is touched (``prefect_acestep.stages.storage_errors``). An
``OSError`` that reaches this rule untyped (raised inside a backend, say) is typed by that same
function here, so it is judged exactly as it would have been at the boundary (so is a network
error of botocore or aiohttp).
"""

from __future__ import annotations

import torch
from prefect import Task
from prefect.client.schemas.objects import TaskRun
from prefect.states import State
from prefect.tasks import exponential_backoff

from prefect_acestep.stages.errors import TransientError
from prefect_acestep.stages.storage_errors import storage_error

RETRIES = 3
RETRY_DELAYS = exponential_backoff(backoff_factor=2)(RETRIES)
RETRY_JITTER = 0.5


def is_transient(exc: BaseException) -> bool:
    judged = storage_error(exc, "an unknown path") or exc
    return isinstance(judged, TransientError | torch.OutOfMemoryError)


def retry_if_transient(task: Task, task_run: TaskRun, state: State) -> bool:
    """Prefect ``retry_condition_fn``: the failed state's data is the raised exception."""
    exc = state.result(raise_on_failure=False)
    return isinstance(exc, BaseException) and is_transient(exc)


TRANSIENT_RETRIES = dict(
    retries=RETRIES,
    retry_delay_seconds=RETRY_DELAYS,
    retry_jitter_factor=RETRY_JITTER,
    retry_condition_fn=retry_if_transient,
)
"""The retry options of every model task (``task(..., **TRANSIENT_RETRIES)``)."""
