"""Test-wide setup and the fixtures several test modules share.

Prefect state lives in a throwaway home, and Prefect-facing tests share one real Prefect server (the
test harness starts Prefect's API in a subprocess, with a temporary database).
"""

from __future__ import annotations

import os
import tempfile

_home = tempfile.mkdtemp(prefix="prefect-acestep-test-home-")
os.environ.setdefault("PREFECT_HOME", _home)
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_API_SERVICES_SCHEDULER_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_UI_ENABLED", "false")

from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING  # noqa: E402

import pytest  # noqa: E402

if TYPE_CHECKING:
    from tests.flow_helpers import CountingBackend


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[None]:
    """A real Prefect API server for the whole session (started on first use)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def fast_prefect(prefect_server) -> Iterator[None]:
    """The real server, with flow heartbeats off: Prefect joins the heartbeat thread at every flow's
    end, which waits out its current one-second sleep, and nothing here watches heartbeats."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


@pytest.fixture
def latent_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The default store (``ACE_LATENT_DIR``) and audio directory, both under ``tmp_path``. The
    stores the test opened are closed after it, as a worker's are at exit."""
    from prefect_acestep.tasks.open_stores import close_stores

    root = tmp_path / "latents"
    monkeypatch.setenv("ACE_LATENT_DIR", str(root))
    monkeypatch.setenv("ACE_LATENT_TTL_HOURS", "24")
    monkeypatch.setenv("ACE_AUDIO_DIR", str(tmp_path / "audio"))
    monkeypatch.delenv("ACE_GPU_CONCURRENCY_LIMIT", raising=False)
    yield root
    close_stores()


@pytest.fixture(scope="module")
def counting_backend(request: pytest.FixtureRequest) -> str:
    """The test module's ``BACKEND`` name, registered once per module as a counting backend
    (``tests.flow_helpers.CountingBackend``); requests naming it run on the embedded model."""
    from tests.flow_helpers import register_counting

    name: str = request.module.BACKEND
    register_counting(name)
    return name


@pytest.fixture
def model(counting_backend: str) -> Iterator[CountingBackend]:
    """The module's counting backend instance, with its counts and faults cleared before and after."""
    from tests.flow_helpers import counting

    backend = counting(counting_backend)
    backend.reset()
    yield backend
    backend.reset()


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One torch thread for a module of tiny models: they gain nothing from intra-op threads, and on
    a busy shared CPU the pool's contention made each tiny matmul ~10x slower. The process's setting
    is restored after the module."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_acestep(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny random ACE-Step checkpoints of base and turbo (one VAE) in the diffusers layout, built
    once for the session; tests that change files copy them first."""
    pytest.importorskip("diffusers", reason="the acestep extra is not installed: pip install 'prefect-acestep[acestep]'")
    from prefect_acestep.stages.backends.acestep.tiny import build_tiny_checkpoint

    root = tmp_path_factory.mktemp("acestep-tiny")
    return {family: build_tiny_checkpoint(root / family, family) for family in ("base", "turbo")}
