"""A backend's planner, found by the backend's name through the ``prefect_acestep.planners`` entry
point group (the same names as ``prefect_acestep.backends``) and built once per process per
(name, options): an LM is as large as the models it plans for.

As with backends (the same ``Registry``), a planner's identity (name, LM folder, weights digest) is
needed without the model: the plan cache's key contains it, and a cache hit on a fresh worker must
not load the LM first. A planner class says it through an ``identity_for(**options)`` classmethod,
an in-process factory through ``register_planner(..., identity=...)``; otherwise it is built.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prefect_acestep.stages.backends.registry import Registry
from prefect_acestep.stages.errors import PlannerUnavailable
from prefect_acestep.stages.planning.protocol import Planner, PlannerIdentity

ENTRY_POINT_GROUP = "prefect_acestep.planners"

_planners: Registry[Planner, PlannerIdentity] = Registry(
    ENTRY_POINT_GROUP,
    lambda name, known: PlannerUnavailable(f"backend {name!r} has no planner; backends with one: {known}"),
)


def register_planner(
    name: str, factory: Callable[..., Planner], *, identity: Callable[..., PlannerIdentity] | None = None
) -> None:
    """Make ``factory`` the planner of backend ``name`` in this process (a notebook's or a test's);
    ``identity`` says, from the same options, the identity the built planner will have."""
    _planners.register(name, factory, identity=identity)


def planner_for(backend: str, **options: Any) -> Planner:
    """The process-wide planner of backend ``backend`` built with ``options``."""
    return _planners.load(backend, **options)


def planner_identity(backend: str, **options: Any) -> PlannerIdentity:
    """The identity of ``planner_for(backend, **options)``, without building it when it can be said."""
    return _planners.identity(backend, **options)
