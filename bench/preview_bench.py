"""What a stage's player and spectrogram cost: bytes in the artifact, and the time to build them as a
ratio of the time to decode the same latent to audio (the baseline, measured in the same run).

    .venv/bin/python bench/preview_bench.py

For clips of 4, 8, 30 and 120 s of the embedded model's music it prints the Opus preview's bytes
(and kbit/s), the WebP picture's bytes, what both take in a markdown artifact (base64), and
build time / decode time (median of 5).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from prefect_acestep.stages.decode import decode_latent
from prefect_acestep.stages.params import StageParams
from prefect_acestep.stages.runner import run_stage
from prefect_acestep.stages.store import LatentStore
from prefect_acestep.tasks.previews import preview_of

REPEATS = 5


def median_seconds(work) -> float:
    times = []
    for _ in range(REPEATS):
        clock = time.perf_counter()
        work()
        times.append(time.perf_counter() - clock)
    return statistics.median(times)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = LatentStore(Path(tmp) / "store", ttl_hours=1)
        print(f"{'clip':>6} {'opus B':>8} {'kbit/s':>7} {'webp B':>7} {'artifact B':>10} {'build/decode':>12}")
        for seconds in (4.0, 8.0, 30.0, 120.0):
            params = StageParams(caption="warm electric piano ballad with soft drums and a round bass",
                                 keyscale="D minor", bpm=96, duration=seconds, seed=1)  # fmt: skip
            [result] = run_stage(params, store)
            out = Path(tmp) / f"clip{seconds:g}"
            [path] = decode_latent(store, result.latent_id, out, stem="clip")
            decode = median_seconds(lambda: decode_latent(store, result.latent_id, out, stem="clip"))
            build = median_seconds(lambda: preview_of(path))
            preview = preview_of(path)
            kbps = len(preview.audio) * 8 / 1000 / preview.previewed_s
            print(
                f"{seconds:>5g}s {len(preview.audio):>8} {kbps:>7.1f} {len(preview.picture):>7} "
                f"{preview.size_bytes:>10} {build / decode:>11.2f}x"
            )


if __name__ == "__main__":
    main()
