"""Benchmark the real ACE-Step 1.5 backend through our diffusion loop.

    python bench/acestep_gpu.py /path/to/acestep-v15-turbo-diffusers [--device cuda] [--seconds 30]
    python bench/acestep_gpu.py --tiny            # CPU smoke run on a tiny random checkpoint

Runs, on one checkpoint (a turbo one gives the 8-step numbers): a generate of ``--seconds`` of audio
with a checkpoint at the middle step, the VAE decode, an exact resume from that checkpoint, and a
cover of the generated latent; prints wall times (medians of ``--repeats``), the realtime factor
(seconds of audio per second of wall time), and the loop's overhead: the loop's wall time, less
its one-off conditioning setup, over the same number of bare DiT calls on identical inputs, all
measured in this run (target on a GPU with real weights: at most 1.02x). The tiny model's numbers
only show the script works: its DiT is so small that Python overhead dominates.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from prefect_acestep.stages.backends.acestep import AceStepBackend
from prefect_acestep.stages.backends.acestep.tiny import build_tiny_checkpoint
from prefect_acestep.stages.backends.protocol import ConditionSpec
from prefect_acestep.stages.engine.loop import LoopRequest, LoopResult, run_loop
from prefect_acestep.stages.geometry import FRAME_RATE, LATENT_DIM

CAPTION = "energetic synth-pop with punchy drums, bright lead synth and a warm bass line"


def _timed(device: torch.device, fn: Callable[[], Any]) -> tuple[float, Any]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, out


def _median(device: torch.device, repeats: int, fn: Callable[[], Any]) -> tuple[float, Any]:
    fn()  # warm-up: kernels, allocator, lazy inits
    runs = [_timed(device, fn) for _ in range(repeats)]
    return statistics.median(t for t, _ in runs), runs[-1][1]


def _bare_decoder(
    backend: AceStepBackend, spec: ConditionSpec, frames: int, schedule: list[float]
) -> Callable[[], None]:
    """The DiT alone, called once per step on the inputs the loop would give it (no loop around)."""
    parts, dtype, device = backend.components, backend.dtype, backend.device
    cond = backend.encode_condition(spec, 1)
    silence = backend.silence_latent(frames).unsqueeze(0)
    context = backend.make_context(silence, torch.ones(1, frames, device=device))
    x = torch.randn(1, frames, LATENT_DIM, device=device, dtype=dtype)
    levels = [torch.full((1,), t, device=device, dtype=dtype) for t in schedule[:-1]]

    def run() -> None:
        with torch.no_grad():
            for t in levels:
                parts.transformer(
                    hidden_states=x,
                    timestep=t,
                    timestep_r=t,
                    encoder_hidden_states=cond.hidden_states,
                    context_latents=context,
                    return_dict=False,
                )

    return run


def _setup_only(backend: AceStepBackend, spec: ConditionSpec, frames: int) -> Callable[[], None]:
    """What one loop run does once before its steps: encode the condition, build the context."""

    def run() -> None:
        backend.encode_condition(spec, 1)
        silence = backend.silence_latent(frames).unsqueeze(0)
        backend.make_context(silence, torch.ones(1, frames, device=backend.device))
        backend.noise((frames, LATENT_DIM), torch.Generator(device=backend.device).manual_seed(0))

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint_dir", nargs="?", help="local diffusers-layout ACE-Step 1.5 checkpoint")
    parser.add_argument("--tiny", action="store_true", help="build and use a tiny random checkpoint (CPU smoke run)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--variant", default=None, help="e.g. turbo-shift3; default: the checkpoint's own")
    parser.add_argument("--seconds", type=float, default=None, help="audio length (default 30; 2 with --tiny)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.tiny == (args.checkpoint_dir is not None):
        parser.error("give a checkpoint_dir or --tiny, not both or neither")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.tiny:  # a tiny model's matmuls lose more to thread hand-offs than they gain
        torch.set_num_threads(1)
    seconds = args.seconds if args.seconds is not None else (2.0 if args.tiny else 30.0)
    frames = round(seconds * FRAME_RATE)

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = build_tiny_checkpoint(Path(tmp) / "tiny", "turbo") if args.tiny else Path(args.checkpoint_dir)
        load_s, backend = _timed(torch.device(device), lambda: AceStepBackend(str(checkpoint), args.variant, device))
    dev = backend.device
    ident = backend.identity
    print(f"checkpoint {checkpoint} -> variant {ident.variant}, dtype {backend.dtype}, device {dev}")
    print(f"weights {ident.weights_digest[:16]}, latent space {ident.latent_space}; load {load_s:.2f} s")

    spec = ConditionSpec(task="text2music", caption=CAPTION, bpm=120, keyscale="C major", duration_s=seconds)
    probe: LoopResult = run_loop(backend, LoopRequest(cond=spec, seeds=[0], frames=frames, variant=ident.variant))
    n = len(probe.schedule) - 1
    generate = LoopRequest(cond=spec, seeds=[0], frames=frames, variant=ident.variant, checkpoint_steps=(n // 2,))
    gen_s, full = _median(dev, args.repeats, lambda: run_loop(backend, generate))
    dec_s, _audio = _median(dev, args.repeats, lambda: backend.vae_decode(full.x0))

    resume = LoopRequest(cond=spec, seeds=[0], frames=frames, variant=ident.variant, resume=full.checkpoints[0])
    res_s, resumed = _median(dev, args.repeats, lambda: run_loop(backend, resume))
    resume_diff = float((resumed.x0 - full.x0).abs().max())

    cover_spec = ConditionSpec(task="cover", caption="acoustic folk version, fingerpicked guitar", duration_s=seconds)
    cover = LoopRequest(
        cond=cover_spec, seeds=[1], frames=frames, variant=ident.variant, source=full.x0, cover_strength=0.5
    )
    cov_s, _ = _median(dev, args.repeats, lambda: run_loop(backend, cover))

    bare_s, _ = _median(dev, args.repeats, _bare_decoder(backend, spec, frames, full.schedule))
    setup_s, _ = _median(dev, args.repeats, _setup_only(backend, spec, frames))
    overhead = (gen_s - setup_s) / bare_s

    print(f"\n{seconds:g} s of audio = {frames} frames, {n} steps ({full.scheduler}, shift {full.shift}),", end=" ")
    print(f"median of {args.repeats}")
    print(f"  generate      {gen_s:8.3f} s   RTF {seconds / gen_s:8.1f}x realtime ({full.model_calls} DiT calls)")
    print(f"  + VAE decode  {dec_s:8.3f} s   RTF {seconds / (gen_s + dec_s):8.1f}x realtime end to end")
    print(f"  resume @ {n // 2:<4} {res_s:8.3f} s   ({resumed.model_calls} calls;", end=" ")
    print(f"max |x0 - uninterrupted| = {resume_diff:.3g})")
    print(f"  cover 0.5     {cov_s:8.3f} s   ({n} calls, switch at step {int(n * 0.5)})")
    print(f"  bare DiT x{n:<3} {bare_s:8.3f} s   loop setup {setup_s:.3f} s")
    verdict = "n/a for the tiny model" if args.tiny else ("OK" if overhead <= 1.02 else "ABOVE TARGET")
    print(f"  loop overhead (generate - setup) / bare DiT = {overhead:.3f}x  (target <= 1.02x: {verdict})")
    if dev.type == "cuda":
        print(f"  peak CUDA memory {torch.cuda.max_memory_allocated(dev) / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
