"""A running flow's lease on the latents it still needs (``prefect_acestep.stages.store.flow_leases``).

Every flow that runs stages holds one for as long as it runs: taken when it starts, renewed by a
thread every third of the lease, released when it ends however it ends. A flow killed outright
stops renewing, and its lease ends by itself ``ACE_FLOW_LEASE_S`` seconds (default 300) after the
last renewal, after which gc treats its latents as it treats any others.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from loguru import logger

from prefect_acestep.stages.errors import InvalidStageRequest, StageError
from prefect_acestep.tasks.blocks import AceLatentStore

LEASE_ENV = "ACE_FLOW_LEASE_S"
DEFAULT_LEASE_S = 300.0


def lease_seconds() -> float:
    raw = os.environ.get(LEASE_ENV, "")
    try:
        value = DEFAULT_LEASE_S if raw == "" else float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise InvalidStageRequest(f"{LEASE_ENV}={raw!r}: must be a positive number of seconds")
    return value


@contextmanager
def flow_lease(block: AceLatentStore, holder: str, borrowed: Iterable[str] = ()) -> Iterator[None]:
    """Hold a lease named ``holder`` (the flow run's id) on ``block``'s store while the block runs,
    with the latents in ``borrowed`` (sources named by ID) marked as held."""
    store = block.get_store()
    lease_s = lease_seconds()
    held = sorted(set(borrowed))
    store.lease(holder, lease_s, held)  # one write: no gc sees the lease without what it borrows
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(lease_s / 3):
            try:
                store.lease(holder, lease_s, held)
            except StageError as exc:  # a blip: the lease has two more renewals of slack
                logger.warning("flow lease {}: renewal failed ({}); retrying", holder, exc)

    renewer = threading.Thread(target=renew, name=f"flow-lease-{holder}", daemon=True)
    renewer.start()
    try:
        yield
    finally:
        stop.set()
        renewer.join()
        try:
            store.release(holder)
        except StageError as exc:  # the lease then ends by itself
            logger.warning("flow lease {}: release failed ({}); it ends in {:g} s", holder, exc, lease_s)
