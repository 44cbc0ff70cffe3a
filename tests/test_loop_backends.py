"""Loop guarantees that must hold on ANY backend (only the protocol is used, no backend internals).

Add a backend to ``FACTORIES`` to hold it to the same contract: determinism, per-item seeding,
exact resume at N - K model calls per CFG branch, and the cover-switch cache reset.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from gaussian_backend import GaussianBackend

from prefect_acestep.stages.backends.protocol import Backend, ConditionSpec
from prefect_acestep.stages.engine.loop import LoopRequest, run_loop

FACTORIES: dict[str, Callable[[str], Backend]] = {
    "gaussian": lambda variant: GaussianBackend(variant=variant),
}

T2M = ConditionSpec(task="text2music", caption="slow ambient pads", bpm=70, keyscale="E minor")
FRAMES = 50


class Counting:
    """Delegates to a backend and counts what the loop asks of it, by branch."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.identity = inner.identity
        self.device = inner.device
        self.nulls: list[Any] = []
        self.cond_calls = 0
        self.null_calls = 0
        self.log: list[str] = []

    def null_condition(self, cond: Any) -> Any:
        null = self.inner.null_condition(cond)
        self.nulls.append(null)
        return null

    def velocity(self, x_t, t, cond, context):
        is_null = any(cond is n for n in self.nulls)
        self.null_calls += is_null
        self.cond_calls += not is_null
        self.log.append("uncond" if is_null else "cond")
        return self.inner.velocity(x_t, t, cond, context)

    def reset_cache(self) -> None:
        self.log.append("reset")
        self.inner.reset_cache()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def src_latents(batch: int = 1) -> torch.Tensor:
    return torch.randn(batch, FRAMES, 64, generator=torch.Generator().manual_seed(17))


@pytest.fixture(params=sorted(FACTORIES))
def make(request) -> Callable[[str], Counting]:
    return lambda variant: Counting(FACTORIES[request.param](variant))


def test_deterministic_and_seed_dependent(make):
    req = LoopRequest(cond=T2M, seeds=[1, 2], frames=FRAMES, infer_method="sde")
    a, b = run_loop(make("turbo"), req).x0, run_loop(make("turbo"), req).x0
    assert torch.equal(a, b)
    assert not torch.allclose(a[0], a[1])
    single = run_loop(make("turbo"), LoopRequest(cond=T2M, seeds=[2], frames=FRAMES, infer_method="sde")).x0
    torch.testing.assert_close(a[1], single[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["ode", "sde"])
@pytest.mark.parametrize(("variant", "guidance"), [("turbo", 1.0), ("base", 4.0)])
@pytest.mark.parametrize("switch", [None, 3, 7])
def test_exact_resume_costs_n_minus_k_calls_per_branch(make, method, variant, guidance, switch):
    n, k = (8, 5) if variant == "turbo" else (10, 5)
    params: dict[str, Any] = dict(variant=variant, infer_method=method, guidance_scale=guidance, frames=FRAMES)
    if variant == "base":
        params["steps"] = n
    if switch is not None:
        cover = ConditionSpec(task="cover", caption=T2M.caption)
        params.update(cond=cover, source=src_latents(), cover_strength=switch / n)
    else:
        params["cond"] = T2M
    full_backend = make(variant)
    full = run_loop(full_backend, LoopRequest(seeds=[5, 6], checkpoint_steps=(k,), **params))
    backend = make(variant)
    resumed = run_loop(backend, LoopRequest(seeds=[5, 6], resume=full.checkpoints[0], **params))
    assert torch.equal(resumed.x0, full.x0)
    assert backend.cond_calls == n - k
    assert backend.null_calls == (n - k if guidance > 1 else 0)
    switch_inside = switch is not None and switch > k
    assert backend.log.count("reset") == 1 + switch_inside
    assert full_backend.log.count("reset") == 1 + (switch is not None)
