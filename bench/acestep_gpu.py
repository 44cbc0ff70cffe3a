"""The real ACE-Step 1.5 backend through our diffusion loop, as one short run on a GPU.

    python bench/acestep_gpu.py                        # CUDA, a random checkpoint of the real geometry
    python bench/acestep_gpu.py CHECKPOINT_DIR         # CUDA, real weights (official checkpoints/ or diffusers)
    python bench/acestep_gpu.py --tiny                 # CPU smoke run on a tiny random checkpoint

Nothing is downloaded: without a checkpoint it builds one with random weights and the published
geometry of every module (2B-parameter DiT, Qwen3-Embedding-0.6B-shaped text encoder, the 48 kHz
VAE), saved in bf16 as the release is, so times and memory are the real model's. It prints, all
measured in this run:

1. realtime factor of a turbo 8-step generate of ``--seconds`` (30) and of generate + VAE decode;
2. the loop's overhead: its wall time, less its one-off conditioning setup, over the same number
   of bare DiT calls on identical inputs (target at most 1.02x on a GPU with the real geometry);
3. peak GPU memory of a ``--long-seconds`` (240 s) tiled VAE decode, against an untiled decode of
   ``--seconds`` in MiB per second of audio;
4. resume exactness: a run resumed from its middle checkpoint against the uninterrupted run;
5. bf16 vs fp32 drift: the same generate and decode in both dtypes, relative L2 difference.

Times are medians of ``--repeats``. The tiny model's numbers only show the script works: its DiT is
so small that Python overhead dominates, and its decoder is random noise.
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
from vae_memory_bench import peak_during, run_child

from prefect_acestep.stages.backends.acestep import AceStepBackend
from prefect_acestep.stages.backends.acestep.tiny import build_random_checkpoint
from prefect_acestep.stages.backends.protocol import ConditionSpec
from prefect_acestep.stages.engine.loop import LoopRequest, run_loop
from prefect_acestep.stages.geometry import FRAME_RATE, LATENT_DIM

CAPTION = "energetic synth-pop with punchy drums, bright lead synth and a warm bass line"
_MIB = 2**20


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


def _drift(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative L2 difference of ``a`` from the reference ``b``."""
    return float((a.float() - b.float()).norm() / b.float().norm())


def _decode_peaks(backend: AceStepBackend, checkpoint: str, long_frames: int, frames: int) -> tuple[int, int]:
    """Peak working memory of a tiled decode of ``long_frames`` and an untiled one of ``frames``:
    CUDA's allocator statistics in this process; on CPU the resident set of a child process
    (``bench/vae_memory_bench.py``), where the heap cannot hide a peak."""
    from prefect_acestep.stages.backends.acestep.vae_tiling import VaeTiling

    if backend.device.type != "cuda":
        runs = run_child(checkpoint, "cpu", [(long_frames, VaeTiling().decode_frames), (frames, 0)])
        return runs[0]["peak"], runs[1]["peak"]
    latents = torch.randn(1, long_frames, LATENT_DIM, generator=torch.Generator().manual_seed(1)).to(backend.device)
    tiled, _ = peak_during(backend.device, lambda: backend.vae_decode(latents))
    del latents
    tiling, backend.tiling = backend.tiling, VaeTiling(decode_frames=frames, decode_overlap=0)
    short = torch.randn(1, frames, LATENT_DIM, generator=torch.Generator().manual_seed(2)).to(backend.device)
    untiled, _ = peak_during(backend.device, lambda: backend.vae_decode(short))
    backend.tiling = tiling
    return tiled, untiled


def _checkpoint(args: argparse.Namespace, tmp: str, device: str) -> str:
    if args.checkpoint_dir is not None:
        return args.checkpoint_dir
    real = not args.tiny
    print("building a", "real-geometry" if real else "tiny", "random turbo checkpoint (no download)...", flush=True)
    built = build_random_checkpoint(
        Path(tmp) / "random", "turbo", real_size=real, device=device, dtype=torch.bfloat16 if real else torch.float32
    )
    return str(built)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint_dir", nargs="?", help="ACE-Step checkpoint: official checkpoints/ or diffusers layout")
    parser.add_argument("--tiny", action="store_true", help="a tiny random checkpoint on CPU (smoke run)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--variant", default="turbo", help="variant to run (default turbo: 8 steps)")
    parser.add_argument("--seconds", type=float, default=None, help="generated audio (default 30; 2 with --tiny)")
    parser.add_argument("--long-seconds", type=float, default=None, help="tiled decode length (default 240; 60 with --tiny)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.tiny and args.checkpoint_dir is not None:
        parser.error("give a checkpoint_dir or --tiny, not both")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.tiny:  # a tiny model's matmuls lose more to thread hand-offs than they gain
        torch.set_num_threads(1)
    seconds = args.seconds if args.seconds is not None else (2.0 if args.tiny else 30.0)
    long_seconds = args.long_seconds if args.long_seconds is not None else (60.0 if args.tiny else 240.0)
    frames = round(seconds * FRAME_RATE)

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = _checkpoint(args, tmp, device)
        load_s, backend = _timed(torch.device(device), lambda: AceStepBackend(checkpoint, args.variant, device))
        other_dtype = "float32" if backend.dtype != torch.float32 else "bfloat16"
        reference = AceStepBackend(checkpoint, args.variant, device, dtype=other_dtype)
        dev, ident = backend.device, backend.identity
        print(f"checkpoint {checkpoint} ({backend.layout.kind} layout) -> variant {ident.variant}, {backend.dtype}, {dev}")
        print(f"weights {ident.weights_digest[:16]}, latent space {ident.latent_space}; load {load_s:.2f} s")

        spec = ConditionSpec(task="text2music", caption=CAPTION, bpm=120, keyscale="C major", duration_s=seconds)
        probe = run_loop(backend, LoopRequest(cond=spec, seeds=[0], frames=frames, variant=ident.variant))
        n = len(probe.schedule) - 1
        generate = LoopRequest(cond=spec, seeds=[0], frames=frames, variant=ident.variant, checkpoint_steps=(n // 2,))
        gen_s, full = _median(dev, args.repeats, lambda: run_loop(backend, generate))
        dec_s, audio = _median(dev, args.repeats, lambda: backend.vae_decode(full.x0))

        resume = LoopRequest(cond=spec, seeds=[0], frames=frames, variant=ident.variant, resume=full.checkpoints[0])
        res_s, resumed = _median(dev, args.repeats, lambda: run_loop(backend, resume))
        resume_diff = float((resumed.x0 - full.x0).abs().max())

        bare_s, _ = _median(dev, args.repeats, _bare_decoder(backend, spec, frames, full.schedule))
        setup_s, _ = _median(dev, args.repeats, _setup_only(backend, spec, frames))
        overhead = (gen_s - setup_s) / bare_s

        long_frames = round(long_seconds * FRAME_RATE)
        tiled_peak, untiled_peak = _decode_peaks(backend, checkpoint, long_frames, frames)

    other = run_loop(reference, generate)
    by_dtype = {backend.dtype: (full.x0, audio), reference.dtype: (other.x0, reference.vae_decode(other.x0))}
    (x_half, audio_half), (x_full, audio_full) = by_dtype[torch.bfloat16], by_dtype[torch.float32]
    drift_x0, drift_audio = _drift(x_half, x_full), _drift(audio_half, audio_full)

    memory = "CUDA allocated" if dev.type == "cuda" else "resident set of a child process"
    print(f"\n{seconds:g} s of audio = {frames} frames, {n} steps ({full.scheduler}, shift {full.shift}),", end=" ")
    print(f"median of {args.repeats}")
    print(f"  1. generate     {gen_s:8.3f} s   RTF {seconds / gen_s:8.1f}x realtime ({full.model_calls} DiT calls)")
    print(f"     + decode     {dec_s:8.3f} s   RTF {seconds / (gen_s + dec_s):8.1f}x realtime end to end")
    verdict = "n/a for the tiny model" if args.tiny else ("OK" if overhead <= 1.02 else "ABOVE TARGET")
    print(f"  2. loop overhead (generate {gen_s:.3f} - setup {setup_s:.3f}) / bare DiT x{n} {bare_s:.3f}", end=" ")
    print(f"= {overhead:.3f}x  (target <= 1.02x: {verdict})")
    print(f"  3. peak decode memory ({memory}):")
    print(f"     tiled   {long_seconds:5.0f} s: {tiled_peak / _MIB:9.1f} MiB = {tiled_peak / _MIB / long_seconds:7.2f} MiB/s")
    print(f"     untiled {seconds:5.0f} s: {untiled_peak / _MIB:9.1f} MiB = {untiled_peak / _MIB / seconds:7.2f} MiB/s")
    print(f"  4. resume @ step {n // 2}: {res_s:.3f} s ({resumed.model_calls} calls); max |x0 - uninterrupted| =", end=" ")
    print(f"{resume_diff:.3g} ({'bit-exact' if resume_diff == 0 else 'NOT bit-exact'})")
    print(f"  5. bf16 vs fp32: relative L2 drift of x0 {drift_x0:.3g}, of decoded audio {drift_audio:.3g}")


if __name__ == "__main__":
    main()
