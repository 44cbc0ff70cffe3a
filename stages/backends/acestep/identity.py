"""A checkpoint's identity from its weights and geometry alone: a pure function of its files.

Each part that shapes outputs gets a digest of its config (the arguments the model is built with,
as ``official_layout.module_config`` reads them for the DiT-side modules; the saver's private
entries such as ``_name_or_path``, which holds the absolute path a converter ran in, and
storage-only entries such as the dtype left out) and of its tensors by value (see ``digest``),
under the diffusers names in both layouts. Nothing here imports diffusers or transformers: the
registry computes an identity for a cache lookup on a worker that has not loaded the model. So one checkpoint,
copied anywhere, in the official or the diffusers layout, has one latent space and one weights
digest; changing any weight or any geometry changes them.

The latent space is named after the VAE alone: base, sft and turbo ship one shared VAE, so their
latents interchange, while a checkpoint with another VAE (a tiny test one) never mixes in.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect_acestep.stages.backends.acestep import official_layout as official
from prefect_acestep.stages.backends.acestep.digest import (
    combined_digest,
    json_digest,
    safetensors_tensor_digests,
    tensor_digest,
)
from prefect_acestep.stages.backends.acestep.layout import (
    TOKENIZER_FILES,
    CheckpointLayout,
    resolve_layout,
    silence_latent,
)
from prefect_acestep.stages.backends.identity import BackendIdentity
from prefect_acestep.stages.errors import BackendLoadError

NAME = "acestep"
LATENT_SPACE = "acestep-v15"
_STORAGE_ONLY = frozenset({"transformers_version", "torch_dtype", "dtype", "name_or_path"})
"""Config entries that say how or where a part was saved, not what it computes."""


@dataclass(frozen=True)
class CheckpointIdentity:
    identity: BackendIdentity
    parts: dict[str, str]
    """Digest per part (DiT modules, vae, text_encoder, tokenizer, silence); shared parts are
    loaded once per process under their digest."""


def identity_of(checkpoint_dir: str | Path, variant: str | None = None) -> BackendIdentity:
    """The identity of the ``acestep`` backend on ``checkpoint_dir`` without loading any weights."""
    return checkpoint_identity(resolve_layout(checkpoint_dir, variant)).identity


def checkpoint_identity(layout: CheckpointLayout) -> CheckpointIdentity:
    tensors = _module_tensor_digests(layout)
    parts: dict[str, str] = {}
    for module, config in layout.configs.items():
        if not tensors.get(module):
            raise BackendLoadError(f"checkpoint_dir: {layout.root} has a {module} config but no {module} weights")
        parts[module] = _part_digest(config, tensors[module])
    stray = sorted(set(tensors) - set(layout.configs))
    if stray:
        raise BackendLoadError(f"checkpoint_dir: {layout.root} has weights of {stray} but no config for them")
    parts["vae"] = _folder_digest(layout.vae_dir)
    parts["text_encoder"] = _folder_digest(layout.text_encoder_dir)
    parts["tokenizer"] = _tokenizer_digest(layout.tokenizer_dir)
    parts["silence"] = tensor_digest(silence_latent(layout))
    identity = BackendIdentity(
        name=NAME,
        variant=layout.variant,
        latent_space=f"{LATENT_SPACE}-vae-{parts['vae'][:16]}",
        weights_digest=combined_digest(parts),
    )
    return CheckpointIdentity(identity, parts)


def model_folder_digest(folder: Path) -> str:
    """A transformers model folder (config, safetensors weights, tokenizer files) by value, on the
    same terms as a checkpoint's parts: the 5 Hz LM's weights digest."""
    return combined_digest({"model": _folder_digest(folder), "tokenizer": _tokenizer_digest(folder)})


def _module_tensor_digests(layout: CheckpointLayout) -> dict[str, dict[str, str]]:
    tensors: dict[str, dict[str, str]] = defaultdict(dict)
    for source in layout.tensor_files:
        for key, digest in safetensors_tensor_digests(source.path):
            mapped = source.names(key)
            if mapped is None or mapped == ("condition_encoder", official.SILENCE_BUFFER):
                continue  # a non-learned buffer; the silence latent is its own part
            module, name = mapped
            tensors[module][name] = digest
    return tensors


def _without_storage_entries(config: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in config.items() if not name.startswith("_") and name not in _STORAGE_ONLY}


def _part_digest(config: dict[str, Any], tensors: dict[str, str]) -> str:
    return combined_digest({"config": json_digest(config), "tensors": combined_digest(tensors)})


def _folder_digest(folder: Path) -> str:
    """A standard model folder (``config.json`` + safetensors weights, as vae/ and the text encoder)."""
    config = _without_storage_entries(json.loads((folder / "config.json").read_text()))
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise BackendLoadError(f"checkpoint_dir: {folder} has no .safetensors weights")
    tensors = {name: digest for path in files for name, digest in safetensors_tensor_digests(path)}
    return _part_digest(config, tensors)


def _tokenizer_digest(folder: Path) -> str:
    """The tokenizer's own files (the text encoder's folder holds them too in the official layout)."""
    entries = {}
    for name in TOKENIZER_FILES:
        path = folder / name
        if not path.is_file():
            continue
        if name.endswith("_config.json") or name == "special_tokens_map.json":
            entries[name] = json_digest(_without_storage_entries(json.loads(path.read_text())))
        else:
            entries[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    if "tokenizer.json" not in entries and "vocab.json" not in entries:
        raise BackendLoadError(f"checkpoint_dir: {folder} holds no tokenizer (tokenizer.json or vocab.json)")
    return combined_digest(entries)
