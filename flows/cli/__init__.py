"""The ``prefect-acestep`` command line. Nothing here may reach the network: Prefect's telemetry
(the server's, and since Prefect 3.9 the SDK's, read when Prefect is first imported) is off unless
the user turned it on. These defaults are set before anything here imports Prefect
(``prefect_acestep.flows`` loads its flows lazily for this)."""

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

from prefect_acestep.flows.cli.app import app  # noqa: E402

__all__ = ["app"]
