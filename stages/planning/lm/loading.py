"""Loading a 5 Hz LM folder (``acestep-5Hz-lm-0.6B``, ``-1.7B``, ``-4B`` of the official
``checkpoints/``) from local disk, and nothing else.

The folder is a Hugging Face Qwen3 causal LM whose tokenizer adds ``<think>``/``</think>`` and one
token per audio code, ``<|audio_code_0|>`` .. ``<|audio_code_63999|>``. Every load is
``local_files_only``; a missing or malformed folder is a ``PlannerUnavailable`` that names it. The
model runs on the worker's device in the backend's dtype (bf16 on CUDA, fp32 elsewhere, as upstream
initialises its LM). The checkpoint's own ``generation_config.json`` sampling defaults are dropped:
the plan's settings come from the request alone, so a folder cannot change them behind its back.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from prefect_acestep.stages.backends.acestep.identity import model_folder_digest
from prefect_acestep.stages.backends.acestep.loading import require_extra, resolve_device, resolve_dtype
from prefect_acestep.stages.errors import BackendLoadError, PlannerUnavailable
from prefect_acestep.stages.planning.codes import CODEBOOK_SIZE, code_token
from prefect_acestep.stages.planning.protocol import PlannerIdentity

LM_DIR_ENV = "ACESTEP_LM_DIR"
NAME = "acestep-5hz-lm"
THINK_TAGS = ("<think>", "</think>")


@dataclass(frozen=True)
class LanguageModel:
    """The loaded LM: a transformers causal LM in eval mode and its tokenizer."""

    model: Any
    tokenizer: Any
    identity: PlannerIdentity
    device: torch.device


def resolve_lm_dir(lm_dir: str | None) -> Path:
    """``lm_dir``, else ``ACESTEP_LM_DIR``; a typed error naming the folder when there is none."""
    if lm_dir is None:
        lm_dir = os.environ.get(LM_DIR_ENV, "")
        if lm_dir == "":
            raise PlannerUnavailable(
                f"the 5 Hz LM folder is not set: point {LM_DIR_ENV} (or the planner's lm_dir) at an "
                "acestep-5Hz-lm-* folder, e.g. checkpoints/acestep-5Hz-lm-1.7B; without it, turn thinking "
                "and use_cot_* off to run the DiT alone"
            )
    root = Path(lm_dir).expanduser()
    if not root.is_dir():
        raise PlannerUnavailable(f"the 5 Hz LM folder {root} does not exist (from {LM_DIR_ENV} or lm_dir)")
    return root


def load_lm(root: Path, device: str | None, dtype: str | None) -> LanguageModel:
    """The LM in ``root`` on ``device`` (see the module docstring)."""
    try:
        require_extra()
        where = resolve_device(device)
        precision = resolve_dtype(where, dtype)
    except BackendLoadError as exc:
        raise PlannerUnavailable(f"the 5 Hz LM in {root} cannot load: {exc}") from exc
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    _check_config(root)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(root), local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(str(root), local_files_only=True, dtype=precision)
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as exc:
        raise PlannerUnavailable(f"the 5 Hz LM in {root} cannot load: {exc}") from exc
    _check_tokenizer(root, tokenizer)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=_pad_id(tokenizer), bos_token_id=tokenizer.bos_token_id
    )
    return LanguageModel(model=model.to(where).eval(), tokenizer=tokenizer, identity=lm_identity(root), device=where)


def lm_identity(root: Path) -> PlannerIdentity:
    """The LM's identity from its folder's files alone (no transformers import, no weights loaded):
    the folder name as variant (the official names say the size), its weights and tokenizer by value."""
    _check_config(root)
    return PlannerIdentity(name=NAME, variant=root.name, weights_digest=model_folder_digest(root))


def _pad_id(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _check_config(root: Path) -> None:
    path = root / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise PlannerUnavailable(f"the 5 Hz LM folder {root} has no readable config.json ({exc})") from exc
    if not isinstance(config, dict) or config.get("model_type") not in ("qwen3",):
        found = config.get("model_type") if isinstance(config, dict) else config
        raise PlannerUnavailable(f"the 5 Hz LM folder {root} holds a {found!r} model, not a Qwen3 causal LM")


def _check_tokenizer(root: Path, tokenizer: Any) -> None:
    """The LM's vocabulary must have the think tags, an end token and every audio code token."""
    vocab = tokenizer.get_vocab()
    missing = [tag for tag in THINK_TAGS if tag not in vocab]
    codes = [code for code in range(CODEBOOK_SIZE) if code_token(code) not in vocab]
    if codes:
        missing.append(f"{len(codes)} audio code tokens (first {code_token(codes[0])})")
    if tokenizer.eos_token_id is None:
        missing.append("an eos token")
    if missing:
        raise PlannerUnavailable(f"the 5 Hz LM folder {root} is not an ACE-Step LM: its tokenizer lacks {missing}")
