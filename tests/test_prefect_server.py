"""Guards the pinned Prefect stack: the server must start and run a flow with the locked fastapi and
SQLAlchemy (Prefect 3.8's server failed to start with fastapi >= 0.142, and its scheduler failed
with SQLAlchemy 2.1; ``tests/test_schedules_fire.py`` covers the scheduler), so a bad resolution
fails CI here."""

from __future__ import annotations

import httpx
import pytest
from prefect import flow
from prefect.settings import PREFECT_API_URL


@flow
def add(a: int, b: int) -> int:
    return a + b


@pytest.mark.usefixtures("prefect_server")
def test_server_starts_and_runs_a_flow():
    health = httpx.get(f"{PREFECT_API_URL.value()}/health", timeout=10)
    assert health.status_code == 200
    state = add(2, 3, return_state=True)
    assert state.is_completed()
    assert state.result() == 5
