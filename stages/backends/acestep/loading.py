"""Loading an ACE-Step 1.5 checkpoint from a local diffusers-layout directory, and nothing else.

The directory is what diffusers' ``scripts/convert_ace_step_to_diffusers.py`` writes (and what the
``ACE-Step/*-diffusers`` repositories hold): one subfolder per module. Every load passes
``local_files_only=True`` and a local path, so a run never reaches a model hub; a missing file is a
``BackendLoadError`` naming the subfolder, not a download. diffusers and transformers are imported
only here, inside functions, so the package imports (and the default install works) without them.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from prefect_acestep.stages.errors import BackendLoadError
from prefect_acestep.stages.geometry import AUDIO_CHANNELS, HOP_LENGTH, LATENT_DIM, MAX_FRAMES, SAMPLE_RATE, VQ_POOL

EXTRA = "prefect-acestep[acestep]"

MODULES = ("transformer", "condition_encoder", "vae", "text_encoder")
"""Required subfolders with a config.json; ``tokenizer/`` is required too (it has no config.json)."""
VQ_PARTS = ("audio_tokenizer", "audio_token_detokenizer")
"""Optional as a pair: older conversions dropped them; without them cover cannot run."""
ROOT_SILENCE = "silence_latent.pt"
"""Where older conversions left the silence latent ([1, 64, T]) instead of baking it in."""

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEVICE_ENV = "ACESTEP_DEVICE"


@dataclass(frozen=True)
class Components:
    """The loaded modules, on one device in one dtype, in eval mode."""

    transformer: Any
    condition_encoder: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    audio_tokenizer: Any | None
    audio_token_detokenizer: Any | None
    silence: torch.Tensor
    """The model's silence latent ``[MAX_FRAMES, 64]`` in the model dtype."""


def require_extra() -> None:
    """Fail with the install line when the optional dependencies are absent or too old."""
    try:
        import diffusers
        import transformers  # noqa: F401
    except ImportError as exc:
        raise BackendLoadError(
            f"the acestep backend needs the optional extra: pip install '{EXTRA}' (import failed: {exc})"
        ) from exc
    if not hasattr(diffusers, "AceStepTransformer1DModel"):
        raise BackendLoadError(
            f"diffusers {diffusers.__version__} has no ACE-Step 1.5 port (needs >= 0.42); pip install '{EXTRA}'"
        )


def resolve_device(device: str | None) -> torch.device:
    """``device``, else ``ACESTEP_DEVICE``, else cuda when available, else cpu: stages name only the
    backend, so a worker's environment says where its models run (the DiT and the 5 Hz LM alike)."""
    if device is None:
        device = os.environ.get(DEVICE_ENV, "cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise BackendLoadError(f"device: {device!r} is not a torch device ({exc})") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise BackendLoadError(f"device: {device!r} asked for, but this torch sees no CUDA device")
    return resolved


def resolve_dtype(device: torch.device, dtype: str | None) -> torch.dtype:
    """bf16 on CUDA and fp32 elsewhere (upstream's choice), unless named explicitly."""
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise BackendLoadError(f"dtype: unknown {dtype!r}; use one of {sorted(_DTYPES)} or None (auto)")
    return _DTYPES[dtype]


def check_layout(root: Path) -> bool:
    """Raise unless ``root`` holds the required subfolders; True if it also holds the VQ pair."""
    if not root.is_dir():
        raise BackendLoadError(f"checkpoint_dir: {root} is not a directory")
    index = root / "model_index.json"
    if index.is_file():
        try:
            pipeline = json.loads(index.read_text()).get("_class_name")
        except (ValueError, AttributeError) as exc:
            raise BackendLoadError(f"checkpoint_dir: {index} is not a JSON object ({exc})") from exc
        if pipeline != "AceStepPipeline":
            raise BackendLoadError(f"checkpoint_dir: {root} holds a {pipeline!r} pipeline, not AceStepPipeline")
    missing = [name for name in MODULES if not (root / name / "config.json").is_file()]
    if not (root / "tokenizer").is_dir():
        missing.append("tokenizer")
    if missing:
        hint = ""
        if (root / "model.safetensors").is_file() or any(root.glob("acestep-v15-*")):
            hint = " (this looks like an upstream ACE-Step checkpoint: convert it with diffusers' "
            hint += "scripts/convert_ace_step_to_diffusers.py first)"
        raise BackendLoadError(
            f"checkpoint_dir: {root} lacks {missing}; expected a diffusers-layout ACE-Step dir{hint}"
        )
    present = [(root / name / "config.json").is_file() for name in VQ_PARTS]
    if any(present) and not all(present):
        raise BackendLoadError(f"checkpoint_dir: {root} has only one of {list(VQ_PARTS)}; both or neither")
    return all(present)


def read_transformer_config(root: Path) -> dict[str, Any]:
    """The DiT's config.json, read before any weights so a wrong variant fails fast."""
    path = root / "transformer" / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BackendLoadError(f"checkpoint_dir: cannot read {path}: {exc}") from exc
    if not isinstance(config, dict):
        raise BackendLoadError(f"checkpoint_dir: {path} is not a JSON object")
    return config


def load_components(root: Path, has_vq: bool, device: torch.device, dtype: torch.dtype) -> Components:
    """Load every module from ``root`` (local files only), check the geometry, move to ``device``.

    ``root`` must have passed ``check_layout`` (which says ``has_vq``) and ``require_extra``.
    """
    from diffusers import AceStepTransformer1DModel, AutoencoderOobleck
    from diffusers.pipelines.ace_step import (
        AceStepAudioTokenDetokenizer,
        AceStepAudioTokenizer,
        AceStepConditionEncoder,
    )
    from transformers import AutoModel, AutoTokenizer

    def load(sub: str, loader: Any, **kwargs: Any) -> Any:
        try:
            module = loader(str(root / sub), local_files_only=True, **kwargs)
        except (OSError, ValueError, KeyError, RuntimeError, TypeError) as exc:
            raise BackendLoadError(f"checkpoint_dir: cannot load {sub}/ from {root}: {exc}") from exc
        return module.to(device).eval() if hasattr(module, "eval") else module

    def diffusers_module(sub: str, cls: Any) -> Any:
        return load(sub, cls.from_pretrained, torch_dtype=dtype)

    condition_encoder = diffusers_module("condition_encoder", AceStepConditionEncoder)
    parts = Components(
        transformer=diffusers_module("transformer", AceStepTransformer1DModel),
        condition_encoder=condition_encoder,
        vae=diffusers_module("vae", AutoencoderOobleck),
        text_encoder=load("text_encoder", AutoModel.from_pretrained, dtype=dtype),
        tokenizer=load("tokenizer", AutoTokenizer.from_pretrained),
        audio_tokenizer=diffusers_module("audio_tokenizer", AceStepAudioTokenizer) if has_vq else None,
        audio_token_detokenizer=diffusers_module("audio_token_detokenizer", AceStepAudioTokenDetokenizer)
        if has_vq
        else None,
        silence=_silence_latent(root, condition_encoder).to(device=device, dtype=dtype),
    )
    _check_geometry(root, parts)
    return parts


def _silence_latent(root: Path, condition_encoder: Any) -> torch.Tensor:
    """``[MAX_FRAMES, 64]``: the baked buffer, else the root file older conversions left.

    An all-zero buffer is the converter's placeholder, not silence: fed to the timbre encoder it
    gives drone-like audio (diffusers' own note), so it is never used as if it were real.
    """
    baked = condition_encoder.silence_latent.detach()
    if bool((baked != 0).any()):
        latent = baked[0]
    elif (root / ROOT_SILENCE).is_file():
        raw = torch.load(root / ROOT_SILENCE, map_location="cpu", weights_only=True)
        if raw.dim() != 3 or raw.shape[1] != LATENT_DIM:
            raise BackendLoadError(
                f"checkpoint_dir: {root / ROOT_SILENCE} should be [1, 64, T], got {tuple(raw.shape)}"
            )
        latent = raw[0].transpose(0, 1)
    else:
        raise BackendLoadError(
            f"checkpoint_dir: {root} has no silence latent (condition_encoder's buffer is the all-zero placeholder "
            f"and there is no {ROOT_SILENCE}); re-convert the checkpoint with a current diffusers converter"
        )
    if latent.shape[0] < MAX_FRAMES or latent.shape[1] != LATENT_DIM:
        raise BackendLoadError(
            f"checkpoint_dir: silence latent should be [>= {MAX_FRAMES}, 64], got {tuple(latent.shape)}"
        )
    return latent[:MAX_FRAMES].contiguous()


def _check_geometry(root: Path, parts: Components) -> None:
    """The latent geometry every stage relies on: 64 channels, 25 Hz, 48 kHz, 1920-sample hop."""
    vae = parts.vae.config
    tr = parts.transformer.config
    ce = parts.condition_encoder.config
    facts = {
        "vae.sampling_rate": (vae.sampling_rate, SAMPLE_RATE),
        "vae hop (prod downsampling_ratios)": (math.prod(vae.downsampling_ratios), HOP_LENGTH),
        "vae latent channels (encoder_hidden_size / 2)": (vae.encoder_hidden_size // 2, LATENT_DIM),
        "vae.decoder_input_channels": (vae.decoder_input_channels, LATENT_DIM),
        "vae.audio_channels": (vae.audio_channels, AUDIO_CHANNELS),
        "transformer.audio_acoustic_hidden_dim": (tr.audio_acoustic_hidden_dim, LATENT_DIM),
        "transformer.in_channels (x + src + mask)": (tr.in_channels, 3 * LATENT_DIM),
        "condition_encoder.timbre_hidden_dim": (ce.timbre_hidden_dim, LATENT_DIM),
        "condition_encoder.text_hidden_dim": (ce.text_hidden_dim, parts.text_encoder.config.hidden_size),
        "transformer encoder width": (tr.encoder_hidden_size or tr.hidden_size, ce.hidden_size),
    }
    if parts.audio_tokenizer is not None:
        tok, detok = parts.audio_tokenizer.config, parts.audio_token_detokenizer.config
        facts["audio_tokenizer.pool_window_size"] = (tok.pool_window_size, VQ_POOL)
        facts["audio_token_detokenizer.pool_window_size"] = (detok.pool_window_size, VQ_POOL)
        facts["audio_tokenizer.audio_acoustic_hidden_dim"] = (tok.audio_acoustic_hidden_dim, LATENT_DIM)
        facts["audio_token_detokenizer.audio_acoustic_hidden_dim"] = (detok.audio_acoustic_hidden_dim, LATENT_DIM)
        facts["audio_tokenizer.fsq_dim vs detokenizer width"] = (tok.fsq_dim, detok.hidden_size)
    wrong = {name: got for name, (got, want) in facts.items() if got != want}
    if wrong:
        expected = {name: want for name, (got, want) in facts.items() if name in wrong}
        raise BackendLoadError(f"checkpoint_dir: {root} has the wrong geometry: got {wrong}, expected {expected}")
