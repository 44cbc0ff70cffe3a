"""A backend's planner, found by the backend's name through the ``prefect_acestep.planners`` entry
point group (the same names as ``prefect_acestep.backends``) and built once per process per
(name, options): an LM is as large as the models it plans for.

As with backends, a planner's identity (name, LM folder, weights digest) is needed without the
model: the plan cache's key contains it, and a cache hit on a fresh worker must not load the LM
first. A planner class says it through an ``identity_for(**options)`` classmethod, an in-process
factory through ``register_planner(..., identity=...)``; otherwise the planner is built.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from prefect_acestep.stages.errors import PlannerUnavailable
from prefect_acestep.stages.planning.protocol import Planner, PlannerIdentity

ENTRY_POINT_GROUP = "prefect_acestep.planners"

Factory = Callable[..., Planner]
IdentityFunction = Callable[..., PlannerIdentity]
_Key = tuple[str, tuple[tuple[str, Any], ...]]

_loaded: dict[_Key, Planner] = {}
_identities: dict[_Key, PlannerIdentity] = {}
_registered: dict[str, tuple[Factory, IdentityFunction | None]] = {}
_lock = threading.Lock()


def register_planner(name: str, factory: Factory, *, identity: IdentityFunction | None = None) -> None:
    """Make ``factory`` the planner of backend ``name`` in this process (a notebook's or a test's);
    ``identity`` says, from the same options, the identity the built planner will have."""
    with _lock:
        _registered[name] = (factory, identity)
        for cache in (_loaded, _identities):
            for key in [key for key in cache if key[0] == name]:
                del cache[key]


def _factory(backend: str) -> tuple[Factory, IdentityFunction | None]:
    if backend in _registered:
        factory, identity = _registered[backend]
    else:
        matches = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == backend]
        if not matches:
            known = sorted({ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)} | set(_registered))
            raise PlannerUnavailable(f"backend {backend!r} has no planner; backends with one: {known}")
        factory, identity = matches[0].load(), None
    if identity is None:
        identity = getattr(factory, "identity_for", None)
    return factory, identity


def _key(backend: str, options: dict[str, Any]) -> _Key:
    return (backend, tuple(sorted(options.items())))


def planner_for(backend: str, **options: Any) -> Planner:
    """The process-wide planner of backend ``backend`` built with ``options``."""
    key = _key(backend, options)
    with _lock:
        if key not in _loaded:
            _loaded[key] = _factory(backend)[0](**options)
        return _loaded[key]


def planner_identity(backend: str, **options: Any) -> PlannerIdentity:
    """The identity of ``planner_for(backend, **options)``, without building it when its factory
    can say it (see the module docstring)."""
    key = _key(backend, options)
    with _lock:
        if key in _loaded:
            return _loaded[key].identity
        if key not in _identities:
            factory, identity = _factory(backend)
            if identity is None:
                _loaded[key] = factory(**options)
                return _loaded[key].identity
            _identities[key] = identity(**options)
        return _identities[key]
