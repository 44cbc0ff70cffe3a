"""Optional serialization of backend work through a Prefect global concurrency limit.

A GPU has one slot: with ``ACE_GPU_CONCURRENCY_LIMIT=<limit name>`` set (and the limit created with
``prefect gcl create <name> --limit 1``) every stage's backend work holds one slot of it. Off by default,
because on CPU or with the embedded model parallel stages are fine. ``strict`` so a named limit that
does not exist is an error, not a silent no-op.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from prefect.concurrency.sync import concurrency

GPU_LIMIT_ENV = "ACE_GPU_CONCURRENCY_LIMIT"


def configured_limit() -> str | None:
    name = os.environ.get(GPU_LIMIT_ENV, "")
    return name if name != "" else None


@contextmanager
def backend_slot(limit_name: str | None) -> Iterator[None]:
    if limit_name is None:
        yield
        return
    with concurrency(limit_name, occupy=1, strict=True):
        yield
