"""The contract every backend keeps with the diffusion loop (stages/backends/protocol.py).

Parametrised over backend factories: the embedded model's variants, and the real ACE-Step backend
on tiny random checkpoints built on disk when its extra (diffusers, transformers) is installed.
A new backend joins by adding a factory to BACKENDS.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from prefect_acestep.stages.backends.embedded import EmbeddedBackend
from prefect_acestep.stages.backends.identity import BackendIdentity
from prefect_acestep.stages.backends.protocol import Backend, ConditionSpec
from prefect_acestep.stages.engine.loop import LoopRequest, run_loop
from prefect_acestep.stages.engine.variants import VARIANTS
from prefect_acestep.stages.geometry import HOP_LENGTH, LATENT_DIM, VQ_POOL

FRAMES = 20
BATCH = 2


def _acestep(family: str) -> Callable[[Path], Backend]:
    def build(root: Path) -> Backend:
        pytest.importorskip("diffusers", reason="the acestep extra is not installed")
        pytest.importorskip("transformers", reason="the acestep extra is not installed")
        from prefect_acestep.stages.backends.acestep import AceStepBackend
        from prefect_acestep.stages.backends.acestep.tiny import build_tiny_checkpoint

        return AceStepBackend(str(build_tiny_checkpoint(root / family, family)), device="cpu")

    return build


BACKENDS: dict[str, Callable[[Path], Backend]] = {
    "embedded-turbo": lambda root: EmbeddedBackend("turbo"),
    "embedded-base": lambda root: EmbeddedBackend("base"),
    "embedded-sft": lambda root: EmbeddedBackend("sft"),
    "acestep-tiny-turbo": _acestep("turbo"),
    "acestep-tiny-base": _acestep("base"),
}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Backend | pytest.skip.Exception]:
    """Every factory built once per module (or the reason it cannot be built here)."""
    backends: dict[str, Backend | pytest.skip.Exception] = {}
    for name, factory in BACKENDS.items():
        try:
            backends[name] = factory(tmp_path_factory.mktemp(name))
        except pytest.skip.Exception as reason:
            backends[name] = reason
    return backends


@pytest.fixture(params=list(BACKENDS))
def backend(request: pytest.FixtureRequest, built: dict[str, Backend | pytest.skip.Exception]) -> Backend:
    value = built[request.param]
    if isinstance(value, pytest.skip.Exception):
        pytest.skip(str(value))
    return value


def _spec(**fields) -> ConditionSpec:
    values = dict(task="text2music", caption="bright pop song with piano", keyscale="G major", bpm=110,
                  timesignature="4", duration_s=FRAMES / 25)
    values.update(fields)
    return ConditionSpec(**values)


def _guided(backend: Backend) -> bool:
    return VARIANTS[backend.identity.variant].uses_cfg


def _inputs(backend: Backend, seed: int = 0) -> tuple[torch.Tensor, object]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(BATCH, FRAMES, LATENT_DIM, generator=g).to(backend.device)
    silence = backend.silence_latent(FRAMES).to(backend.device)
    src = silence.expand(BATCH, -1, -1).contiguous()
    context = backend.make_context(src, torch.ones(BATCH, FRAMES, device=backend.device))
    return x, context


def test_identity_is_complete(backend: Backend) -> None:
    assert isinstance(backend, Backend)
    identity = backend.identity
    assert isinstance(identity, BackendIdentity)
    for field in (identity.name, identity.variant, identity.latent_space, identity.weights_digest):
        assert isinstance(field, str) and field.strip()
    assert identity.variant in VARIANTS


def test_latent_spaces_never_collide_across_backends(built: dict[str, Backend | pytest.skip.Exception]) -> None:
    spaces: dict[str, set[str]] = {}
    for value in built.values():
        if not isinstance(value, pytest.skip.Exception):
            spaces.setdefault(value.identity.name, set()).add(value.identity.latent_space)
    names = list(spaces)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not spaces[a] & spaces[b], (a, b)


def test_velocity_shapes_dtype_finiteness_and_determinism(backend: Backend) -> None:
    cond = backend.encode_condition(_spec(), BATCH)
    x, context = _inputs(backend)
    for level in (1.0, 0.5, 0.1):
        t = torch.full((BATCH,), level, device=backend.device)
        v = backend.velocity(x, t, cond, context)
        assert v.shape == (BATCH, FRAMES, LATENT_DIM) and v.dtype == torch.float32
        assert torch.isfinite(v).all()
        assert torch.equal(backend.velocity(x, t, cond, context), v)


def test_null_condition_differs_from_the_condition(backend: Backend) -> None:
    if not _guided(backend):
        pytest.skip(f"variant {backend.identity.variant} is not guided: the loop never asks for its null condition")
    cond = backend.encode_condition(_spec(), BATCH)
    x, context = _inputs(backend)
    t = torch.full((BATCH,), 0.9, device=backend.device)
    v = backend.velocity(x, t, cond, context)
    v_null = backend.velocity(x, t, backend.null_condition(cond), context)
    assert torch.isfinite(v_null).all() and not torch.allclose(v, v_null)


def test_silence_latent(backend: Backend) -> None:
    silence = backend.silence_latent(FRAMES)
    assert silence.shape == (FRAMES, LATENT_DIM) and silence.dtype == torch.float32 and torch.isfinite(silence).all()


def test_vae_shapes_and_deterministic_encode(backend: Backend) -> None:
    x = _inputs(backend, seed=1)[0][:1]  # one item: a real VAE at 48 kHz is the slow part of this suite
    audio = backend.vae_decode(x)
    assert audio.shape == (1, 2, FRAMES * HOP_LENGTH) and torch.isfinite(audio).all()
    latents = backend.vae_encode(audio)
    assert latents.shape == (1, FRAMES, LATENT_DIM) and latents.dtype == torch.float32
    assert torch.equal(backend.vae_encode(audio), latents)


def test_tokenize_detokenize_shapes(backend: Backend) -> None:
    x, _ = _inputs(backend, seed=2)
    codes = backend.tokenize(x)
    assert codes.shape[:2] == (BATCH, math.ceil(FRAMES / VQ_POOL))
    assert not codes.dtype.is_floating_point
    coarse = backend.detokenize(codes, FRAMES)
    assert coarse.shape == (BATCH, FRAMES, LATENT_DIM) and torch.isfinite(coarse).all()
    assert torch.equal(backend.detokenize(codes, FRAMES), coarse)


def test_noise_follows_the_generator(backend: Backend) -> None:
    def draw(seed: int) -> torch.Tensor:
        return backend.noise((FRAMES, LATENT_DIM), torch.Generator(device=backend.device).manual_seed(seed))

    assert draw(3).shape == (FRAMES, LATENT_DIM)
    assert torch.equal(draw(3), draw(3)) and not torch.equal(draw(3), draw(4))


def test_reset_cache_is_callable_between_runs(backend: Backend) -> None:
    assert backend.reset_cache() is None
    request = LoopRequest(cond=_spec(), seeds=[1, 2], frames=FRAMES, variant=backend.identity.variant,
                          steps=4 if _guided(backend) else None, guidance_scale=2.0 if _guided(backend) else 1.0)
    first = run_loop(backend, request).x0
    backend.reset_cache()
    again = run_loop(backend, request).x0
    assert first.shape == (2, FRAMES, LATENT_DIM) and torch.equal(first, again)
