"""A backend's planner, found by the backend's name through the ``prefect_acestep.planners`` entry
point group (the same names as ``prefect_acestep.backends``) and built once per process per
(name, options): an LM is as large as the models it plans for."""

from __future__ import annotations

import threading
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from prefect_acestep.stages.errors import PlannerUnavailable
from prefect_acestep.stages.planning.protocol import Planner

ENTRY_POINT_GROUP = "prefect_acestep.planners"

_loaded: dict[tuple[str, tuple[tuple[str, Any], ...]], Planner] = {}
_registered: dict[str, Callable[..., Planner]] = {}
_lock = threading.Lock()


def register_planner(name: str, factory: Callable[..., Planner]) -> None:
    """Make ``factory`` the planner of backend ``name`` in this process (a notebook's or a test's)."""
    with _lock:
        _registered[name] = factory
        for key in [key for key in _loaded if key[0] == name]:
            del _loaded[key]


def _factory(backend: str) -> Callable[..., Planner]:
    if backend in _registered:
        return _registered[backend]
    matches = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == backend]
    if not matches:
        known = sorted({ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)} | set(_registered))
        raise PlannerUnavailable(f"backend {backend!r} has no planner; backends with one: {known}")
    return matches[0].load()


def planner_for(backend: str, **options: Any) -> Planner:
    """The process-wide planner of backend ``backend`` built with ``options``."""
    key = (backend, tuple(sorted(options.items())))
    with _lock:
        if key not in _loaded:
            _loaded[key] = _factory(backend)(**options)
        return _loaded[key]
