"""A backend's identity comes from the registry without building the backend, where the factory can
say it, and is always the identity the built backend has (the real model's side of this is in
test_acestep_backend.py)."""

from __future__ import annotations

import itertools
import subprocess
import sys
from typing import Any

import pytest

from prefect_acestep.stages.backends.embedded import EmbeddedBackend
from prefect_acestep.stages.backends.identity import BackendIdentity
from prefect_acestep.stages.backends.registry import backend_identity, load_backend, register_backend
from prefect_acestep.stages.errors import BackendLoadError, BackendNotFound, InvalidStageRequest
from prefect_acestep.stages.vocabulary import MODEL_VARIANTS
from tests.flow_helpers import register_counting

_names = itertools.count()


def fresh_name(prefix: str) -> str:
    """A backend name no other test registered (the registry is process-wide)."""
    return f"{prefix}-{next(_names)}"


class BuildCounter:
    """Factories that build the embedded model under another name and count how often they build."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.builds = 0

    def build(self, **options: Any) -> EmbeddedBackend:
        self.builds += 1
        backend = EmbeddedBackend(**options)
        backend.identity = backend.identity.model_copy(update={"name": self.name})
        return backend

    def identity(self, **options: Any) -> BackendIdentity:
        return EmbeddedBackend.identity_for(**options).model_copy(update={"name": self.name})


@pytest.mark.parametrize("variant", MODEL_VARIANTS)
def test_embedded_identity_for_is_the_built_identity(variant: str) -> None:
    assert EmbeddedBackend.identity_for(variant) == EmbeddedBackend(variant).identity
    assert backend_identity("embedded", variant=variant) == load_backend("embedded", variant=variant).identity


def test_an_identity_function_spares_the_build() -> None:
    counter = BuildCounter(fresh_name("counted"))
    register_backend(counter.name, counter.build, identity=counter.identity)
    said = backend_identity(counter.name, variant="base")
    assert counter.builds == 0
    assert backend_identity(counter.name, variant="base") == said and counter.builds == 0
    assert load_backend(counter.name, variant="base").identity == said
    assert counter.builds == 1


def test_identity_for_on_the_factory_spares_the_build() -> None:
    builds: list[str] = []

    class Counted(EmbeddedBackend):
        def __init__(self, variant: str = "turbo") -> None:
            builds.append(variant)
            super().__init__(variant)

    name = fresh_name("classmethod")
    register_backend(name, Counted)
    assert backend_identity(name, variant="sft") == EmbeddedBackend.identity_for("sft")
    assert builds == []


def test_without_an_identity_function_the_backend_is_built_once() -> None:
    counter = BuildCounter(fresh_name("uncounted"))
    register_backend(counter.name, counter.build)
    identity = backend_identity(counter.name, variant="turbo")
    assert counter.builds == 1 and identity.name == counter.name
    assert load_backend(counter.name, variant="turbo").identity == identity
    assert counter.builds == 1


def test_an_identity_function_that_disagrees_with_the_backend_is_refused() -> None:
    counter = BuildCounter(fresh_name("lying"))

    def wrong(**options: Any) -> BackendIdentity:
        return counter.identity(**options).model_copy(update={"weights_digest": "sha256:something-else"})

    register_backend(counter.name, counter.build, identity=wrong)
    backend_identity(counter.name, variant="turbo")
    with pytest.raises(BackendLoadError, match="identity function said"):
        load_backend(counter.name, variant="turbo")


def test_registering_again_forgets_the_identity() -> None:
    counter = BuildCounter(fresh_name("renamed"))
    register_backend(counter.name, counter.build, identity=counter.identity)
    first = backend_identity(counter.name, variant="turbo")
    register_backend(counter.name, counter.build, identity=lambda **options: first.model_copy(update={"variant": "x"}))
    assert backend_identity(counter.name, variant="turbo").variant == "x"


def test_the_counting_test_backend_says_its_identity() -> None:
    name = fresh_name("counting")
    register_counting(name)
    for variant in ("turbo", "base"):
        said = backend_identity(name, variant=variant)
        assert said.name == name
        assert load_backend(name, variant=variant).identity == said


def test_bad_names_and_options_are_typed_errors() -> None:
    with pytest.raises(BackendNotFound, match="no backend named 'nope'"):
        backend_identity("nope", variant="turbo")
    with pytest.raises(InvalidStageRequest, match="unknown embedded variant 'turbo-fast'"):
        backend_identity("embedded", variant="turbo-fast")


def test_the_embedded_identity_builds_nothing_in_a_fresh_process() -> None:
    """On a fresh worker the identity must not build the model (its codec tables take a while)."""
    script = (
        "from prefect_acestep.stages.backends.registry import backend_identity\n"
        "from prefect_acestep.stages.backends.embedded import backend\n"
        "identity = backend_identity('embedded', variant='base')\n"
        "print(len(backend._codecs), identity.model_dump_json())\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split(" ", 1)
    assert out[0] == "0"
    assert BackendIdentity.model_validate_json(out[1]) == EmbeddedBackend("base").identity
