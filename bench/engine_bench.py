"""Engine benchmark: ratios measured in one run, absolute times for information only.

1. Realtime factor of the embedded backend: a 30 s, 8-step turbo generate + decode, batch 1
   (target >= 100x realtime).
2. Loop overhead: wall time of ``run_loop`` against the bare sum of the backend's velocity calls
   made during that same run (target <= 1.05x).
3. Resume from step K of N against the full run (target (N - K) / N, within 5%).

Run: .venv/bin/python bench/engine_bench.py
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from prefect_acestep.stages.backends.embedded import EmbeddedBackend
from prefect_acestep.stages.backends.protocol import ConditionSpec
from prefect_acestep.stages.engine.loop import LoopRequest, LoopState, run_loop

SECONDS = 30.0
FRAMES = int(SECONDS * 25)
REPEATS = 7


class TimedBackend(EmbeddedBackend):
    """The embedded model, timing each velocity call (the loop's only model work)."""

    def __init__(self, variant: str) -> None:
        super().__init__(variant=variant)
        self.velocity_seconds = 0.0

    def velocity(self, x_t, t, cond, context):
        start = time.perf_counter()
        v = super().velocity(x_t, t, cond, context)
        self.velocity_seconds += time.perf_counter() - start
        return v


def best_of(fn: Callable[[], object], repeats: int = REPEATS) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def cond() -> ConditionSpec:
    return ConditionSpec(task="text2music", caption="piano and drums", bpm=120, keyscale="C major",
                         timesignature="4", duration_s=SECONDS)  # fmt: skip


def realtime_factor() -> None:
    backend = EmbeddedBackend(variant="turbo")
    request = LoopRequest(cond=cond(), seeds=[1], frames=FRAMES, variant="turbo")

    def generate_and_decode() -> None:
        backend.vae_decode(run_loop(backend, request).x0)

    generate_and_decode()  # warm-up: allocations, first-call caches
    seconds = best_of(generate_and_decode)
    print(f"realtime factor (30 s, 8-step turbo generate + decode, batch 1): {SECONDS / seconds:8.1f}x"
          f"   [{seconds * 1000:.1f} ms; target >= 100x]")  # fmt: skip


def loop_overhead(variant: str, **options) -> None:
    backend = TimedBackend(variant)
    request = LoopRequest(cond=cond(), seeds=[1], frames=FRAMES, variant=variant, **options)
    run_loop(backend, request)
    ratios, walls = [], []
    for _ in range(REPEATS):
        backend.velocity_seconds = 0.0
        start = time.perf_counter()
        run_loop(backend, request)
        wall = time.perf_counter() - start
        ratios.append(wall / backend.velocity_seconds)
        walls.append(wall)
    label = f"{variant} {options}" if options else variant
    print(f"loop overhead vs bare velocity calls ({label}): {statistics.median(ratios):6.3f}x"
          f"   [median of {REPEATS}; wall {statistics.median(walls) * 1000:.1f} ms; target <= 1.05x]")  # fmt: skip


def resume_ratio(k: int) -> None:
    backend = EmbeddedBackend(variant="base")
    full = LoopRequest(cond=cond(), seeds=[1], frames=FRAMES, variant="base", guidance_scale=3.0,
                       checkpoint_steps=(k,))  # fmt: skip
    result = run_loop(backend, full)
    state: LoopState = result.checkpoints[0]
    resumed = LoopRequest(cond=cond(), seeds=[1], frames=FRAMES, variant="base", guidance_scale=3.0, resume=state)
    assert torch.equal(run_loop(backend, resumed).x0, result.x0), "resume is not exact"
    plain = LoopRequest(cond=cond(), seeds=[1], frames=FRAMES, variant="base", guidance_scale=3.0)
    t_full = best_of(lambda: run_loop(backend, plain), 5)
    t_resume = best_of(lambda: run_loop(backend, resumed), 5)
    n = result.steps
    expected = (n - k) / n
    measured = t_resume / t_full
    print(f"resume from step {k} of {n} vs full run: {measured:6.3f}   [expected {(n - k)}/{n} = {expected:.3f};"
          f" off by {abs(measured - expected) / expected * 100:.1f}%; target within 5%]")  # fmt: skip


def main() -> None:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    realtime_factor()
    loop_overhead("turbo")
    loop_overhead("turbo", infer_method="sde")
    loop_overhead("base", guidance_scale=3.0)
    resume_ratio(k=10)


if __name__ == "__main__":
    main()
