"""The official ACE-Step 1.5 release, read as the diffusers modules expect it, in memory.

Users download a ``checkpoints/`` folder: one folder per DiT (``acestep-v15-turbo/``,
``acestep-v15-base/``, ...) holding ``config.json``, one ``model.safetensors`` and
``silence_latent.pt``, next to a shared ``vae/`` and ``Qwen3-Embedding-0.6B/`` (text encoder and
tokenizer). The DiT file holds every module of upstream's ``AceStepConditionGenerationModel``
under a prefix: ``decoder.`` (the DiT), ``encoder.`` (the condition encoder), ``tokenizer.`` and
``detokenizer.`` (the cover bottleneck), plus ``null_condition_emb``.

diffusers' converter (``scripts/convert_ace_step_to_diffusers.py``, not in the wheel) splits that
file into one folder per module and renames a few parameters; the renames here are the same, so a
checkpoint loads bit-identically from either layout, and nothing is written next to the user's
weights. ``write_official_layout`` is the inverse (for tests and the GPU benchmark, which build an
official-layout checkpoint from diffusers modules).

The only renames: upstream's attention projections ``q_proj``/``k_proj``/``v_proj``/``o_proj`` and
norms ``q_norm``/``k_norm`` are diffusers' ``to_q``/``to_k``/``to_v``/``to_out.0`` and
``norm_q``/``norm_k``; the DiT's ``proj_in``/``proj_out`` are ``nn.Sequential(Lambda, Conv, Lambda)``
upstream, whose only parameters (index 1) are diffusers' ``proj_in_conv``/``proj_out_conv``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from prefect_acestep.stages.errors import BackendLoadError

DIT_PREFIX = "acestep-v15-"
"""Upstream names each DiT folder ``acestep-v15-<variant>``."""
DIT_CONFIG = "config.json"
DIT_WEIGHTS = "model.safetensors"
DIT_SILENCE = "silence_latent.pt"
VAE_DIR = "vae"
TEXT_ENCODER_DIR = "Qwen3-Embedding-0.6B"

MODULE_PREFIXES: dict[str, str] = {
    "decoder.": "transformer",
    "encoder.": "condition_encoder",
    "tokenizer.": "audio_tokenizer",
    "detokenizer.": "audio_token_detokenizer",
}
"""Upstream state-dict prefix -> the diffusers module that holds those weights."""
NULL_EMBEDDING = "null_condition_emb"
"""Top-level upstream parameter; diffusers keeps it on the condition encoder."""
SILENCE_BUFFER = "silence_latent"
"""The condition encoder's buffer that diffusers' converter fills from ``silence_latent.pt``."""

_ATTENTION_RENAMES = (
    (".q_proj.", ".to_q."),
    (".k_proj.", ".to_k."),
    (".v_proj.", ".to_v."),
    (".o_proj.", ".to_out.0."),
    (".q_norm.", ".norm_q."),
    (".k_norm.", ".norm_k."),
)
_TRANSFORMER_RENAMES = (("proj_in.1.", "proj_in_conv."), ("proj_out.1.", "proj_out_conv."))
_NON_LEARNED_SUFFIX = ".rotary_emb.inv_freq"
"""RoPE frequencies: a buffer recomputed from the config, present in some exports, never a weight."""

_ENCODER_OVERRIDES = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads")
"""The XL checkpoints give the condition encoder and VQ modules a narrower width, as ``encoder_<name>``."""


_ATTENTION_CONFIG = (
    "num_attention_heads", "num_key_value_heads", "head_dim", "rope_theta", "attention_bias",
    "attention_dropout", "rms_norm_eps", "sliding_window", "layer_types",
)  # fmt: skip
MODULE_PARAMETERS: dict[str, tuple[str, ...]] = {
    "transformer": (
        "hidden_size", "intermediate_size", "num_hidden_layers", *_ATTENTION_CONFIG[:3], "in_channels",
        "audio_acoustic_hidden_dim", "patch_size", *_ATTENTION_CONFIG[3:], "encoder_hidden_size", "is_turbo",
        "model_version",
    ),
    "condition_encoder": (
        "hidden_size", "intermediate_size", "text_hidden_dim", "timbre_hidden_dim", "num_lyric_encoder_hidden_layers",
        "num_timbre_encoder_hidden_layers", *_ATTENTION_CONFIG,
    ),
    "audio_tokenizer": (
        "hidden_size", "intermediate_size", "audio_acoustic_hidden_dim", "pool_window_size", "fsq_dim",
        "fsq_input_levels", "fsq_input_num_quantizers", "num_attention_pooler_hidden_layers", *_ATTENTION_CONFIG,
    ),
    "audio_token_detokenizer": (
        "hidden_size", "intermediate_size", "audio_acoustic_hidden_dim", "pool_window_size",
        "num_attention_pooler_hidden_layers", *_ATTENTION_CONFIG,
    ),
}  # fmt: skip
"""The config each DiT-side diffusers module is built from (its ``__init__`` arguments in diffusers
0.42.1; a test keeps the two in step). Written out so that resolving a checkpoint, and computing its
identity, need not import diffusers."""


def module_classes() -> dict[str, Any]:
    """The diffusers class of every module an ACE-Step DiT checkpoint holds."""
    from diffusers import AceStepTransformer1DModel
    from diffusers.pipelines.ace_step import (
        AceStepAudioTokenDetokenizer,
        AceStepAudioTokenizer,
        AceStepConditionEncoder,
    )

    return {
        "transformer": AceStepTransformer1DModel,
        "condition_encoder": AceStepConditionEncoder,
        "audio_tokenizer": AceStepAudioTokenizer,
        "audio_token_detokenizer": AceStepAudioTokenDetokenizer,
    }


def module_config(module: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """The arguments ``module`` is built with from a saved config: its parameters that are set (a
    ``None`` or absent entry leaves the class default)."""
    return {name: config[name] for name in MODULE_PARAMETERS[module] if config.get(name) is not None}


def diffusers_name(key: str) -> tuple[str, str] | None:
    """(module, parameter name) in diffusers for an upstream key; ``None`` for a non-learned buffer.

    An upstream key that matches no module is a ``BackendLoadError``: a weight the model would
    silently run without.
    """
    if key == NULL_EMBEDDING:
        return "condition_encoder", key
    if key.endswith(_NON_LEARNED_SUFFIX):
        return None
    for prefix, module in MODULE_PREFIXES.items():
        if key.startswith(prefix):
            name = key[len(prefix) :]
            if module == "transformer":
                name = _replace_prefix(name, _TRANSFORMER_RENAMES)
            return module, _replace_once(name, _ATTENTION_RENAMES)
    raise BackendLoadError(f"{DIT_WEIGHTS}: key {key!r} belongs to no ACE-Step module ({sorted(MODULE_PREFIXES)})")


def official_name(module: str, name: str) -> str:
    """The upstream key of diffusers parameter ``name`` of ``module`` (inverse of ``diffusers_name``)."""
    if module == "condition_encoder" and name == NULL_EMBEDDING:
        return NULL_EMBEDDING
    inverse = {module_name: prefix for prefix, module_name in MODULE_PREFIXES.items()}
    name = _replace_once(name, tuple((new, old) for old, new in _ATTENTION_RENAMES))
    if module == "transformer":
        name = _replace_prefix(name, tuple((new, old) for old, new in _TRANSFORMER_RENAMES))
    return inverse[module] + name


def _replace_once(name: str, renames: tuple[tuple[str, str], ...]) -> str:
    for old, new in renames:
        if old in name:
            return name.replace(old, new, 1)
    return name


def _replace_prefix(name: str, renames: tuple[tuple[str, str], ...]) -> str:
    for old, new in renames:
        if name.startswith(old):
            return new + name[len(old) :]
    return name


def module_configs(official: Mapping[str, Any], where: str) -> dict[str, dict[str, Any]]:
    """Each diffusers module's config from upstream's one ``AceStepConfig`` ``config.json``.

    Every argument of the diffusers module is taken from the upstream field of the same name
    (absent ones keep the class default); the condition encoder and VQ modules take the
    ``encoder_*`` widths where an XL config gives them, as upstream builds its encoder config.
    """
    if official.get("use_sliding_window") is False:
        raise BackendLoadError(
            f"{where}: use_sliding_window is false; the diffusers modules always band their sliding layers"
        )
    encoder_view = dict(official)
    for name in _ENCODER_OVERRIDES:
        if official.get(f"encoder_{name}") is not None:
            encoder_view[name] = official[f"encoder_{name}"]
    configs = {module: module_config(module, official if module == "transformer" else encoder_view)
               for module in MODULE_PARAMETERS}  # fmt: skip
    transformer = configs["transformer"]
    if transformer.get("encoder_hidden_size") == transformer.get("hidden_size"):
        transformer.pop("encoder_hidden_size")  # same width: diffusers' own default (None)
    return configs


def dit_folder(variant: str) -> str:
    return DIT_PREFIX + variant


def write_official_layout(diffusers_dir: str | Path, checkpoints_dir: str | Path, variant: str) -> Path:
    """Write (or add to) an official ``checkpoints/`` folder from a diffusers-layout checkpoint.

    The DiT folder ``acestep-v15-<variant>/`` gets the four modules' weights under upstream's
    names in one ``model.safetensors``, their configs merged into one ``config.json`` and the
    silence latent as upstream stores it (``[1, 64, T]``); ``vae/`` and the text encoder folder are
    copied once and shared by every variant written into the same ``checkpoints_dir``.
    """
    from safetensors.torch import load_file, save_file

    source, root = Path(diffusers_dir), Path(checkpoints_dir)
    dit = root / dit_folder(variant)
    if dit.exists():
        raise FileExistsError(f"{dit} exists; write each variant once")
    tensors: dict[str, torch.Tensor] = {}
    config: dict[str, Any] = {"model_type": "acestep", "architectures": ["AceStepConditionGenerationModel"]}
    silence = None
    for module in MODULE_PARAMETERS:
        folder = source / module
        weights = load_file(folder / "diffusion_pytorch_model.safetensors")
        silence = weights.pop(SILENCE_BUFFER, silence)
        tensors.update({official_name(module, name): value for name, value in weights.items()})
        module_config = json.loads((folder / "config.json").read_text())
        for name, value in module_config.items():
            if name.startswith("_") or value is None:
                continue
            if name in config and config[name] != value:
                raise ValueError(f"{module}.{name}={value!r} disagrees with {config[name]!r}; one config cannot hold both")
            config[name] = value
    if silence is None:
        raise ValueError(f"{source}/condition_encoder holds no silence latent")
    dit.mkdir(parents=True)
    save_file(tensors, dit / DIT_WEIGHTS)
    (dit / DIT_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True))
    torch.save(silence.transpose(1, 2).contiguous(), dit / DIT_SILENCE)
    if not (root / VAE_DIR).exists():
        shutil.copytree(source / "vae", root / VAE_DIR)
    if not (root / TEXT_ENCODER_DIR).exists():
        shutil.copytree(source / "text_encoder", root / TEXT_ENCODER_DIR)
        for path in (source / "tokenizer").iterdir():
            shutil.copy2(path, root / TEXT_ENCODER_DIR / path.name)
    return dit
