"""The ``prefect-acestep`` command line. Nothing here may reach the network: Prefect's telemetry
from an ephemeral server is off unless the user turned it on."""

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from prefect_acestep.flows.cli.app import app  # noqa: E402

__all__ = ["app"]
