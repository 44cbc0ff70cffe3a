"""Peak memory of a VAE decode, tiled (upstream's 512/64-frame windows) against untiled, per second
of audio, measured in one run.

    python bench/vae_memory_bench.py --tiny                       # CPU, a tiny random VAE
    python bench/vae_memory_bench.py CHECKPOINT_DIR --device cuda  # a real checkpoint on a GPU

The measurements run in a child process started for them. On CPU the peak is the rise of the
resident set (Linux ``VmHWM``, reset before each decode through ``/proc/self/clear_refs``) with
glibc told to return every freed block above 64 KiB at once (``MALLOC_MMAP_THRESHOLD_``), so that
the resident set follows the live tensors and one decode's freed heap cannot hide the next one's
peak; on CUDA it is
``torch.cuda.max_memory_allocated`` above what was allocated before the decode. The decoded
audio itself (``T * 1920 * 2`` floats) is reported apart from the working memory: the output
grows with the song whatever the decoder does, the working memory should not when tiled.

``--json`` prints the measurements for a program to read (tests/test_vae_tiling.py does).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

_MIB = 2**20
CHILD_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


def _status_bytes(key: str) -> int:
    match = re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    assert match is not None, key
    return int(match.group(1)) * 1024


def measure(checkpoint: str, device: str, runs: list[tuple[int, int]]) -> list[dict[str, int]]:
    """Decode random latents of each ``(frames, tile_frames)`` (tile 0: untiled); report the peaks."""
    from prefect_acestep.stages.backends.acestep import AceStepBackend
    from prefect_acestep.stages.backends.acestep.vae_tiling import VaeTiling

    torch.set_num_threads(1)  # one thread: per-thread conv buffers would blur the comparison
    backend = AceStepBackend(checkpoint, device=device)
    backend.vae_decode(torch.zeros(1, 8, 64))  # lazy initialisation outside the measurements
    results = []
    for frames, tile_frames in runs:
        overlap = VaeTiling().decode_overlap
        backend.tiling = VaeTiling(tile_frames, overlap) if tile_frames else VaeTiling(frames, 0)
        latents = torch.randn(1, frames, 64, generator=torch.Generator().manual_seed(0)).to(backend.device)
        peak, audio = peak_during(backend.device, lambda: backend.vae_decode(latents))
        output = audio.numel() * audio.element_size()
        results.append({"frames": frames, "tile_frames": tile_frames, "peak": peak, "output": output,
                        "working": peak - output})
        del audio, latents
    return results


def peak_during(device: torch.device, decode: Callable[[], torch.Tensor]) -> tuple[int, torch.Tensor]:
    """Peak memory (bytes above the start) while ``decode`` runs, and its result."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        audio = decode()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before, audio
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = _status_bytes("VmRSS")
    audio = decode()
    return _status_bytes("VmHWM") - before, audio


def run_child(checkpoint: str, device: str, runs: list[tuple[int, int]]) -> list[dict[str, int]]:
    """``measure`` in a fresh interpreter with the allocator settings above."""
    command = [sys.executable, __file__, "--child", checkpoint, device, json.dumps(runs)]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **CHILD_ENV}, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"measurement child failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint_dir", nargs="?", help="ACE-Step checkpoint (official checkpoints/ or diffusers layout)")
    parser.add_argument("--tiny", action="store_true", help="build and use a tiny random checkpoint")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seconds", type=float, nargs="+", default=[40.0, 160.0], help="song lengths to decode")
    parser.add_argument("--untiled-max-seconds", type=float, default=60.0, help="longest untiled decode to run")
    parser.add_argument("--json", action="store_true", help="print the measurements as JSON")
    parser.add_argument("--child", nargs=3, metavar=("CHECKPOINT", "DEVICE", "RUNS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        checkpoint, device, runs = args.child
        print(json.dumps(measure(checkpoint, device, [tuple(run) for run in json.loads(runs)])))
        return
    if args.tiny == (args.checkpoint_dir is not None):
        parser.error("give a checkpoint_dir or --tiny, not both or neither")
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint_dir
        if args.tiny:
            from prefect_acestep.stages.backends.acestep.tiny import build_tiny_checkpoint

            checkpoint = str(build_tiny_checkpoint(Path(tmp) / "tiny", "turbo"))
        from prefect_acestep.stages.backends.acestep.vae_tiling import VaeTiling

        tile = VaeTiling().decode_frames
        plan = []
        for seconds in args.seconds:
            frames = round(seconds * 25)
            plan.append((frames, tile))
            if seconds <= args.untiled_max_seconds:
                plan.append((frames, 0))
        runs = run_child(checkpoint, args.device, plan)
    if args.json:
        print(json.dumps(runs))
        return
    print(f"VAE decode peak memory on {args.device} ({'tiny random VAE' if args.tiny else checkpoint})")
    print(f"{'audio':>8} {'decode':>9} {'peak MiB':>9} {'output MiB':>10} {'working MiB':>11} {'working MiB/s':>13}")
    for run in runs:
        seconds = run["frames"] / 25
        kind = f"tile {run['tile_frames']}" if run["tile_frames"] else "untiled"
        print(
            f"{seconds:7.0f}s {kind:>9} {run['peak'] / _MIB:9.1f} {run['output'] / _MIB:10.1f} "
            f"{run['working'] / _MIB:11.1f} {run['working'] / _MIB / seconds:13.2f}"
        )


if __name__ == "__main__":
    main()
