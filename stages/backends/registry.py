"""Backends are found by name through the ``prefect_acestep.backends`` entry point group and
built once per process per (name, options): models are large, loading them per stage is waste.

A backend's identity (name, variant, latent space, weights digest) is needed without the model: a
stage's cache key contains it, and on a fresh worker a cache hit must not load gigabytes of weights
first. So a factory may say the identity its backend would have: a backend class through a
``identity_for(**options)`` classmethod, a factory registered in-process through
``register_backend(..., identity=...)``. ``backend_identity`` uses that when it exists, and builds
the backend (once, shared with ``load_backend``) only when the factory cannot say.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from prefect_acestep.stages.backends.identity import BackendIdentity
from prefect_acestep.stages.backends.protocol import Backend
from prefect_acestep.stages.errors import BackendLoadError, BackendNotFound

ENTRY_POINT_GROUP = "prefect_acestep.backends"
DEFAULT_BACKEND = "embedded"

Factory = Callable[..., Backend]
IdentityFunction = Callable[..., BackendIdentity]
"""Takes the factory's options and returns the identity of the backend it would build, cheaply."""

_Key = tuple[str, tuple[tuple[str, Any], ...]]

_loaded: dict[_Key, Backend] = {}
_identities: dict[_Key, BackendIdentity] = {}
_registered: dict[str, tuple[Factory, IdentityFunction | None]] = {}
_lock = threading.Lock()


def register_backend(name: str, factory: Factory, *, identity: IdentityFunction | None = None) -> None:
    """Make ``factory`` available as backend ``name`` in this process, without packaging an entry
    point (a notebook's experimental model, or a test's fault-injecting backend).

    ``identity`` says, from the same options, the identity the built backend will have; without
    it (and without an ``identity_for`` on the factory) ``backend_identity`` builds the backend.
    """
    with _lock:
        _registered[name] = (factory, identity)
        for cache in (_loaded, _identities):
            for key in [key for key in cache if key[0] == name]:
                del cache[key]


def available_backends() -> list[str]:
    return sorted({ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)} | set(_registered))


def _factory(name: str) -> tuple[Factory, IdentityFunction | None]:
    if name in _registered:
        factory, identity = _registered[name]
    else:
        matches = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
        if not matches:
            raise BackendNotFound(f"no backend named {name!r}; available: {available_backends()}")
        factory, identity = matches[0].load(), None
    if identity is None:
        identity = getattr(factory, "identity_for", None)
    return factory, identity


def _key(name: str, options: dict[str, Any]) -> _Key:
    return (name, tuple(sorted(options.items())))


def load_backend(name: str = DEFAULT_BACKEND, **options: Any) -> Backend:
    """The process-wide instance of backend ``name`` built with ``options`` (e.g. variant)."""
    key = _key(name, options)
    with _lock:
        if key not in _loaded:
            backend = _factory(name)[0](**options)
            said = _identities.get(key)
            if said is not None and said != backend.identity:
                # Cache keys computed from the said identity would be wrong: refuse the backend.
                raise BackendLoadError(
                    f"backend {name!r} {options}: its identity function said {said}, the built backend is "
                    f"{backend.identity}"
                )
            _loaded[key] = backend
        return _loaded[key]


def backend_identity(name: str = DEFAULT_BACKEND, **options: Any) -> BackendIdentity:
    """The identity ``load_backend(name, **options)`` has, without building it where the factory
    can say it (see the module docstring); memoized per process like ``load_backend``."""
    key = _key(name, options)
    with _lock:
        if key in _loaded:
            return _loaded[key].identity
        if key not in _identities:
            identity = _factory(name)[1]
            if identity is not None:
                _identities[key] = identity(**options)
        if key in _identities:
            return _identities[key]
    return load_backend(name, **options).identity
