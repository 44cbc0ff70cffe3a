"""Engine logs (loguru, in ``prefect_acestep.stages``) reach the Prefect run's logs.

``prefect_acestep.stages`` must not import Prefect, so it logs with loguru; this sink forwards each record to the
run logger of the flow or task run active in the calling thread, where the Prefect UI shows it.
Outside a run the record is left to loguru's other sinks.
"""

from __future__ import annotations

import threading

from loguru import logger
from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger

_installed = False
_install_lock = threading.Lock()


def _forward(message) -> None:  # loguru passes a Message whose .record holds the fields
    record = message.record
    try:
        run_logger = get_run_logger()
    except MissingContextError:
        return
    run_logger.log(record["level"].no, "%s", record["message"], extra={"source": record["name"]})


def install_loguru_bridge(level: str = "INFO") -> None:
    """Add the forwarding sink once per process."""
    global _installed
    with _install_lock:
        if not _installed:
            logger.add(_forward, level=level, format="{message}")
            _installed = True
