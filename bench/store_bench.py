"""Latent store benchmark: every figure is a ratio against a baseline measured in the same run.

Run: ``.venv/bin/python bench/store_bench.py``. Absolute times are printed for information only
(machines are noisy); the targets are the ratios:

* put+get of a 240 s latent ([1, 6000, 64] float32, 1.5 MB) vs bare ``safetensors.torch.save_file``
  + fsync + ``load_file`` of the same tensor: at most 1.5x. Store and baseline alternate, one
  operation each, so both see the same machine noise; medians are compared.
* open, ``list`` with a filter, and ``gc`` of a 10,000-record store vs a 1,000-record store: at most
  12x (no worse than linear). Aims for 10,000 records: open < 300 ms, list < 50 ms, gc < 1 s.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import torch
from loguru import logger
from safetensors.torch import load_file, save_file

from prefect_acestep.stages.backends.identity import BackendIdentity
from prefect_acestep.stages.store import LatentStore

BACKEND = BackendIdentity(name="embedded", variant="turbo", latent_space="ace15", weights_digest="bench")
STAGES = ["generate", "refine", "cover", "repaint", "refine"]
WARMUP = 5


def timed_ms(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return (time.perf_counter() - start) * 1e3, result


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    return statistics.median(timed_ms(fn)[0] for _ in range(repeats))


def bare_save(tensor: torch.Tensor, path: Path) -> None:
    save_file({"latent": tensor}, path)
    fd = os.open(path, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)


def bench_put_get(work: Path, repeats: int) -> None:
    tensor = torch.randn(1, 6000, 64)
    store = LatentStore(work / "putget")
    bare_dir = work / "bare"
    bare_dir.mkdir()
    times: dict[str, list[float]] = {"bare save": [], "bare load": [], "store put": [], "store get": []}
    for i in range(repeats + WARMUP):
        path = bare_dir / f"{i}.safetensors"
        times["bare save"].append(timed_ms(functools.partial(bare_save, tensor, path))[0])
        times["bare load"].append(timed_ms(functools.partial(load_file, path))[0])
        elapsed, latent_id = timed_ms(functools.partial(store.put, tensor, stage_type="generate", backend=BACKEND))
        times["store put"].append(elapsed)
        times["store get"].append(timed_ms(functools.partial(store.get, latent_id))[0])
    store.close()
    med = {name: statistics.median(values[WARMUP:]) for name, values in times.items()}
    bare, ours = med["bare save"] + med["bare load"], med["store put"] + med["store get"]
    print(
        f"put+get [1, 6000, 64] f32: store {ours:.2f} ms (put {med['store put']:.2f}, get {med['store get']:.2f}) "
        f"vs bare {bare:.2f} ms (save_file+fsync {med['bare save']:.2f}, load_file {med['bare load']:.2f}): "
        f"ratio {ours / bare:.2f}x (target <= 1.5x)"
    )


def build_store(root: Path, records: int) -> None:
    """``records`` latents in pipelines of 5 chained stages; every 10th pipeline has a 1-hour TTL
    (gc at +2 h removes those) and every 50th (never a 1-hour one) has its last stage pinned."""
    store = LatentStore(root)
    tensor = torch.randn(1, 16, 64)
    for p in range(records // len(STAGES)):
        parent: list[str] = []
        for s, stage_type in enumerate(STAGES):
            latent_id = store.put(
                tensor,
                stage_type=stage_type,
                backend=BACKEND,
                pipeline_id=f"pipe-{p}",
                stage_index=s,
                parent_ids=parent,
                ttl_hours=1.0 if p % 10 == 0 else None,
                is_checkpoint=s == 1,
                pinned=p % 50 == 7 and s == 4,
            )
            parent = [latent_id]
    store.close()


def open_close(root: Path) -> None:
    LatentStore(root).close()


def gc_copy_ms(work: Path, root: Path, now: datetime, expect_removed: int) -> float:
    """gc is destructive, so each measurement runs on a fresh copy of the store."""
    copy = work / f"{root.name}-gc"
    shutil.copytree(root, copy)
    store = LatentStore(copy)
    elapsed, report = timed_ms(functools.partial(store.gc, now=now))
    assert len(report.removed) == expect_removed, (len(report.removed), expect_removed)
    store.close()
    shutil.rmtree(copy)
    return elapsed


def measure(work: Path, size: int, repeats: int) -> dict[str, float]:
    root = work / f"store{size}"
    elapsed, _ = timed_ms(functools.partial(build_store, root, size))
    print(f"(built a {size}-record store in {elapsed / 1e3:.1f} s)")
    open_close(root)  # warm the page cache the same way for both sizes
    results = {"open": median_ms(functools.partial(open_close, root), repeats)}
    store = LatentStore(root)
    pipe = f"pipe-{size // 10 // len(STAGES) + 1}"
    assert len(store.list(pipeline_id=pipe)) == len(STAGES)
    results["list(pipeline_id=...)"] = median_ms(functools.partial(store.list, pipeline_id=pipe), repeats * 4)
    results["list(stage_type, variant, limit=50)"] = median_ms(
        functools.partial(store.list, stage_type="cover", variant="turbo", limit=50), repeats * 4
    )
    store.close()
    now, later = datetime.now(UTC), datetime.now(UTC) + timedelta(hours=2)
    results["gc (nothing due)"] = statistics.median(gc_copy_ms(work, root, now, 0) for _ in range(5))
    results["gc (10% expired)"] = statistics.median(gc_copy_ms(work, root, later, size // 10) for _ in range(5))
    return results


def bench_scaling(work: Path, repeats: int) -> None:
    small, big = measure(work, 1_000, repeats), measure(work, 10_000, repeats)
    aims = {"open": 300, "list(pipeline_id=...)": 50, "list(stage_type, variant, limit=50)": 50}
    for name in small:
        print(
            f"{name:37s} 1k {small[name]:8.2f} ms   10k {big[name]:8.2f} ms (aim < {aims.get(name, 1000)} ms)   "
            f"ratio {big[name] / small[name]:5.2f}x (target <= 12x)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=60, help="put+get pairs; open/list use a quarter")
    parser.add_argument("--dir", type=Path, default=None, help="parent of the work directory (default: temp)")
    args = parser.parse_args()
    logger.remove()
    work = Path(tempfile.mkdtemp(prefix="store-bench-", dir=args.dir))
    try:
        bench_put_get(work, args.repeats)
        bench_scaling(work, max(5, args.repeats // 4))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
