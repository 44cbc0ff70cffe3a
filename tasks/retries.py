"""Which failures a stage task retries.

Only failures that can pass on their own are retried: a typed ``TransientError``, an OS-level I/O
error from storage, or a device out of memory. Everything else (validation, missing/expired/deleted,
incompatible or corrupt latents, unknown bugs) fails fast with its message: retrying cannot help and
would hide the error behind minutes of backoff.
"""

from __future__ import annotations

import torch
from prefect import Task
from prefect.client.schemas.objects import TaskRun
from prefect.states import State
from prefect.tasks import exponential_backoff

from prefect_acestep.stages.errors import StageError, TransientError

RETRIES = 3
RETRY_DELAYS = exponential_backoff(backoff_factor=2)(RETRIES)
RETRY_JITTER = 0.5


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, TransientError | torch.OutOfMemoryError):
        return True
    return isinstance(exc, OSError) and not isinstance(exc, StageError)


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
