"""Test-wide setup: Prefect state lives in a throwaway home, and Prefect-facing tests share one real
Prefect server (the test harness starts Prefect's API in a subprocess, with a temporary database)."""

from __future__ import annotations

import os
import tempfile

_home = tempfile.mkdtemp(prefix="prefect-acestep-test-home-")
os.environ.setdefault("PREFECT_HOME", _home)
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_API_SERVICES_SCHEDULER_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_UI_ENABLED", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def prefect_server():
    """A real Prefect API server for the whole session (started on first use)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
