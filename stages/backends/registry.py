"""Backends are found by name through the ``prefect_acestep.backends`` entry point group and
built once per process per (name, options): models are large, loading them per stage is waste.

A backend's identity (name, variant, latent space, weights digest) is needed without the model: a
stage's cache key contains it, and on a fresh worker a cache hit must not load gigabytes of weights
first. So a factory may say the identity its backend would have: a backend class through a
``identity_for(**options)`` classmethod, a factory registered in-process through
``register_backend(..., identity=...)``. ``backend_identity`` uses that when it exists, and builds
the backend (once, shared with ``load_backend``) only when the factory cannot say.

``Registry`` is that mechanism for any kind of model found by name; the planners (the 5 Hz LM) use
it too, under their own entry point group.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any, Generic, Protocol, TypeVar

from prefect_acestep.stages.backends.identity import BackendIdentity
from prefect_acestep.stages.backends.protocol import Backend
from prefect_acestep.stages.errors import BackendLoadError, BackendNotFound, StageError

ENTRY_POINT_GROUP = "prefect_acestep.backends"
DEFAULT_BACKEND = "embedded"


class _Identified(Protocol):
    identity: Any


Built = TypeVar("Built", bound=_Identified)
Identity = TypeVar("Identity")
_Key = tuple[str, tuple[tuple[str, Any], ...]]


class Registry(Generic[Built, Identity]):
    """Models of one kind by name: an entry point group plus in-process registrations, each model
    built once per (name, options), its identity said by the factory when it can (see above)."""

    def __init__(self, group: str, missing: Callable[[str, list[str]], StageError]) -> None:
        self.group = group
        self._missing = missing
        self._loaded: dict[_Key, Built] = {}
        self._identities: dict[_Key, Identity] = {}
        self._registered: dict[str, tuple[Callable[..., Built], Callable[..., Identity] | None]] = {}
        self._lock = threading.Lock()

    def register(
        self, name: str, factory: Callable[..., Built], *, identity: Callable[..., Identity] | None = None
    ) -> None:
        with self._lock:
            self._registered[name] = (factory, identity)
            for cache in (self._loaded, self._identities):
                for key in [key for key in cache if key[0] == name]:
                    del cache[key]

    def available(self) -> list[str]:
        return sorted({ep.name for ep in entry_points(group=self.group)} | set(self._registered))

    def _factory(self, name: str) -> tuple[Callable[..., Built], Callable[..., Identity] | None]:
        if name in self._registered:
            factory, identity = self._registered[name]
        else:
            matches = [ep for ep in entry_points(group=self.group) if ep.name == name]
            if not matches:
                raise self._missing(name, self.available())
            factory, identity = matches[0].load(), None
        if identity is None:
            identity = getattr(factory, "identity_for", None)
        return factory, identity

    @staticmethod
    def _key(name: str, options: dict[str, Any]) -> _Key:
        return (name, tuple(sorted(options.items())))

    def load(self, name: str, **options: Any) -> Built:
        key = self._key(name, options)
        with self._lock:
            if key not in self._loaded:
                built = self._factory(name)[0](**options)
                said = self._identities.get(key)
                if said is not None and said != built.identity:
                    # Cache keys computed from the said identity would be wrong: refuse the model.
                    raise BackendLoadError(
                        f"{name!r} {options}: its identity function said {said}, the built model is {built.identity}"
                    )
                self._loaded[key] = built
            return self._loaded[key]

    def identity(self, name: str, **options: Any) -> Identity:
        key = self._key(name, options)
        with self._lock:
            if key in self._loaded:
                return self._loaded[key].identity
            if key not in self._identities:
                identity = self._factory(name)[1]
                if identity is not None:
                    self._identities[key] = identity(**options)
            if key in self._identities:
                return self._identities[key]
        return self.load(name, **options).identity


_backends: Registry[Backend, BackendIdentity] = Registry(
    ENTRY_POINT_GROUP, lambda name, known: BackendNotFound(f"no backend named {name!r}; available: {known}")
)


def register_backend(
    name: str, factory: Callable[..., Backend], *, identity: Callable[..., BackendIdentity] | None = None
) -> None:
    """Make ``factory`` available as backend ``name`` in this process, without packaging an entry
    point (a notebook's experimental model, or a test's fault-injecting backend).

    ``identity`` says, from the same options, the identity the built backend will have; without
    it (and without an ``identity_for`` on the factory) ``backend_identity`` builds the backend.
    """
    _backends.register(name, factory, identity=identity)


def available_backends() -> list[str]:
    return _backends.available()


def load_backend(name: str = DEFAULT_BACKEND, **options: Any) -> Backend:
    """The process-wide instance of backend ``name`` built with ``options`` (e.g. variant)."""
    return _backends.load(name, **options)


def backend_identity(name: str = DEFAULT_BACKEND, **options: Any) -> BackendIdentity:
    """The identity ``load_backend(name, **options)`` has, without building it where the factory
    can say it (see the module docstring); memoized per process like ``load_backend``."""
    return _backends.identity(name, **options)
