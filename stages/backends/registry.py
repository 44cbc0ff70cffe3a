"""Backends are found by name through the ``prefect_acestep.backends`` entry point group and
built once per process per (name, options): models are large, loading them per stage is waste.

A backend's identity (name, variant, latent space, weights digest) is part of every cache key, so
it must be known without building the model: ``backend_identity`` asks the factory
(``identity_for``, or the ``identity`` given to ``register_backend``) and builds only a backend that
cannot tell."""

from __future__ import annotations

import threading
from importlib.metadata import entry_points
from collections.abc import Callable
from typing import Any

from prefect_acestep.stages.backends.identity import BackendIdentity
from prefect_acestep.stages.backends.protocol import Backend
from prefect_acestep.stages.errors import BackendNotFound

ENTRY_POINT_GROUP = "prefect_acestep.backends"
DEFAULT_BACKEND = "embedded"

_loaded: dict[tuple[str, tuple[tuple[str, Any], ...]], Backend] = {}
_registered: dict[str, Callable[..., Backend]] = {}
_identities: dict[str, Callable[..., BackendIdentity]] = {}
_lock = threading.Lock()


def register_backend(
    name: str, factory: Callable[..., Backend], identity: Callable[..., BackendIdentity] | None = None
) -> None:
    """Make ``factory`` available as backend ``name`` in this process, without packaging an entry
    point (a notebook's experimental model, or a test's fault-injecting backend). ``identity``,
    called with the same options, tells the identity of what ``factory`` would build."""
    with _lock:
        _registered[name] = factory
        _identities.pop(name, None)
        if identity is not None:
            _identities[name] = identity
        for key in [key for key in _loaded if key[0] == name]:
            del _loaded[key]


def available_backends() -> list[str]:
    return sorted({ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)} | set(_registered))


def _factory(name: str) -> Callable[..., Backend]:
    if name in _registered:
        return _registered[name]
    matches = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
    if not matches:
        raise BackendNotFound(f"no backend named {name!r}; available: {available_backends()}")
    return matches[0].load()


def load_backend(name: str = DEFAULT_BACKEND, **options: Any) -> Backend:
    """The process-wide instance of backend ``name`` built with ``options`` (e.g. variant)."""
    key = (name, tuple(sorted(options.items())))
    with _lock:
        if key not in _loaded:
            _loaded[key] = _factory(name)(**options)
        return _loaded[key]


def backend_identity(name: str = DEFAULT_BACKEND, **options: Any) -> BackendIdentity:
    """The identity of ``load_backend(name, **options)``, without building the backend when it is
    not built yet and its factory can tell (``identity_for``, or a registered ``identity``)."""
    key = (name, tuple(sorted(options.items())))
    with _lock:
        if key in _loaded:
            return _loaded[key].identity
        tell = _identities.get(name)
    if tell is None:
        tell = getattr(_factory(name), "identity_for", None)
    if tell is None:
        return load_backend(name, **options).identity
    return tell(**options)
