"""5 Hz LM planning benchmark (issue 12): time and memory of planning a 60 s song.

Default: the tiny random LM on CPU (for information: it shows the planner's own overhead, not
a real LM's speed). ``--lm-dir`` plans with a real ``acestep-5Hz-lm-*`` folder; ``--geometry 1.7B``
builds a random-weights LM of Qwen3-1.7B's shape (bf16, our 64.7k-token vocabulary rather than
the real 217k) for a GPU tokens-per-second figure.

Measured in one run:
1. Load time of the LM folder.
2. Phase 1 (the metadata block, caption and language included) and phase 2 (300 codes = 60 s),
   with upstream's default sampling (temperature 0.85, top-p 0.9, LM CFG 2.0); tokens per second.
3. Baseline: the bare ``model.generate`` of the same 301 tokens from the same prompt, no constraint
   and no CFG; the ratio phase 2 / baseline is the cost of the constraint and of CFG (which runs
   the model twice per token, so about 2x is expected).
4. Peak memory: process RSS (CPU) or peak CUDA allocation.

Run: .venv/bin/python bench/lm_bench.py [--lm-dir DIR | --geometry 1.7B] [--device cuda]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import torch

from prefect_acestep.stages.planning.lm import prompts
from prefect_acestep.stages.planning.lm.planner import AceStepLmPlanner
from prefect_acestep.stages.planning.lm.tiny import GEOMETRY_1_7B, build_tiny_lm
from prefect_acestep.stages.planning.protocol import PlanRequest

SECONDS = 60.0
CAPTION = "An upbeat pop song with bright piano, punchy drums and a warm bass line."
LYRICS = "[verse]\nCity lights are calling me\n[chorus]\nWe run, we run tonight"


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn):  # noqa: ANN001, ANN201
    start = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lm-dir", help="a real acestep-5Hz-lm-* folder")
    parser.add_argument("--geometry", choices=["tiny", "1.7B"], default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (default 1: a tiny model only loses to thread contention)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    before_mb = peak_memory_mb(torch.device(args.device))

    lm_dir = args.lm_dir
    if lm_dir is None:
        scratch = Path(tempfile.mkdtemp(prefix="lm-bench-"))
        geometry = None if args.geometry == "tiny" else GEOMETRY_1_7B
        lm_dir = str(build_tiny_lm(scratch, newline_scale=400.0, geometry=geometry))
    planner, load_s = timed(lambda: AceStepLmPlanner(lm_dir=lm_dir, device=args.device))
    device = planner.model.device
    params = sum(p.numel() for p in planner.model.parameters())
    print(f"LM {planner.identity.variant}: {params / 1e6:.1f} M params on {device} ({planner.model.dtype}), "
          f"load {load_s:.2f} s, torch threads {torch.get_num_threads()}")  # fmt: skip

    base = dict(caption=CAPTION, lyrics=LYRICS, seed=1, duration=SECONDS)
    reasoning = PlanRequest(**base, metas=True, caption_rewrite=True, language=True, codes=False)
    plan, reason_s = timed(lambda: planner.plan(reasoning))
    reason_tokens = len(planner.tokenizer.encode(plan.reasoning)) + 1
    given = dict(bpm=120, keyscale="C major", timesignature="4", vocal_language="en")
    codes_only = PlanRequest(**base, **given, metas=True, caption_rewrite=False, language=False, codes=True)
    plan, codes_s = timed(lambda: planner.plan(codes_only))
    code_tokens = len(plan.audio_codes) + 1
    full = PlanRequest(**base, metas=True, caption_rewrite=True, language=True, codes=True)
    _, full_s = timed(lambda: planner.plan(full))

    prompt = prompts.codes_prompt(planner.tokenizer, CAPTION, LYRICS, "<think>\nbpm: 120\n</think>")
    ids = planner.tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids.to(device)

    def bare() -> object:
        with torch.inference_mode():
            torch.manual_seed(1)
            return planner.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=code_tokens,
                                          min_new_tokens=code_tokens, do_sample=True, temperature=0.85, top_p=0.9)  # fmt: skip

    _, bare_s = timed(bare)
    print(f"phase 1 (metadata block, {reason_tokens} tokens): {reason_s:.2f} s, {reason_tokens / reason_s:.0f} tok/s")
    print(f"phase 2 ({code_tokens - 1} codes = {SECONDS:g} s): {codes_s:.2f} s, {code_tokens / codes_s:.0f} tok/s")
    print(f"bare generate of {code_tokens} tokens, no constraint, no CFG: {bare_s:.2f} s, {code_tokens / bare_s:.0f} tok/s")
    print(f"ratio phase 2 / bare: {codes_s / bare_s:.2f}x (CFG runs the model twice per token)")
    print(f"full plan of a {SECONDS:g} s song (both phases): {full_s:.2f} s")
    kind = "CUDA allocated" if device.type == "cuda" else "process RSS"
    print(f"peak memory: {peak_memory_mb(device):.0f} MiB {kind} ({before_mb:.0f} MiB before the LM was built and loaded)")


if __name__ == "__main__":
    main()
