"""Where a checkpoint's parts are, in either layout, found from its files alone (no weights loaded).

A checkpoint directory is either the official release's ``checkpoints/`` folder (see
``official_layout``) or a diffusers-layout folder (one subfolder per module, as diffusers'
converter writes it). Both resolve to one ``CheckpointLayout``: the DiT modules' configs in
diffusers form, the safetensors files their weights are in (with the renames of the official
layout), the shared VAE and text-encoder folders and the silence latent. Identity and loading read
only this, so the two layouts cannot drift apart.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from prefect_acestep.stages.backends.acestep import official_layout as official
from prefect_acestep.stages.backends.acestep.variant import resolve_variant
from prefect_acestep.stages.errors import BackendLoadError
from prefect_acestep.stages.geometry import LATENT_DIM
from prefect_acestep.stages.vocabulary import MODEL_VARIANTS, VARIANT_FAMILY

DIFFUSERS_MODULES = ("transformer", "condition_encoder", "vae", "text_encoder")
"""Required subfolders of a diffusers-layout checkpoint with a config.json (plus ``tokenizer/``)."""
VQ_PARTS = ("audio_tokenizer", "audio_token_detokenizer")
"""Optional as a pair in the diffusers layout: older conversions dropped them; without them cover cannot run."""
ROOT_SILENCE = "silence_latent.pt"
"""Where older conversions left the silence latent ([1, 64, T]) instead of baking it in."""
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
)
"""The files diffusers' converter copies into ``tokenizer/``: what the tokenizer is made of."""

NameMap = Callable[[str], "tuple[str, str] | None"]
"""A file's tensor name -> (module, diffusers parameter name), or None for a non-learned buffer."""


@dataclass(frozen=True)
class TensorFile:
    """A safetensors file holding (some of) the DiT modules' weights, and how its names map."""

    path: Path
    names: NameMap


@dataclass(frozen=True)
class CheckpointLayout:
    """A resolved checkpoint: everything identity and loading need, as paths and plain configs."""

    kind: Literal["official", "diffusers"]
    root: Path
    family: str
    variant: str
    configs: dict[str, dict[str, Any]]
    """Arguments each DiT-side module present is built with (transformer, condition_encoder, the VQ
    pair), as ``official_layout.module_config`` reads them: the same in both layouts."""
    tensor_files: tuple[TensorFile, ...]
    vae_dir: Path
    text_encoder_dir: Path
    tokenizer_dir: Path
    silence_file: Path | None
    """The silence latent as upstream stores it (``[1, 64, T]``), when not baked into the encoder."""

    @property
    def has_vq(self) -> bool:
        return all(part in self.configs for part in VQ_PARTS)


def resolve_layout(checkpoint_dir: str | Path, variant: str | None) -> CheckpointLayout:
    """The layout of ``checkpoint_dir`` for ``variant`` (``None``: the checkpoint's own), or a
    ``BackendLoadError`` that says which files are missing for either layout."""
    root = Path(checkpoint_dir).expanduser()
    if not root.is_dir():
        raise BackendLoadError(f"checkpoint_dir: {root} is not a directory")
    if (root / "model_index.json").is_file() or (root / "transformer").is_dir():
        return _diffusers_layout(root, variant)
    if _dit_folders(root) or (root / official.VAE_DIR).is_dir() or (root / official.TEXT_ENCODER_DIR).is_dir():
        return _official_layout(root, variant)
    hint = ""
    if (root / official.DIT_WEIGHTS).is_file():
        hint = f" ({root.name}/ looks like one DiT folder of the official release: point at its parent checkpoints/ folder)"
    raise BackendLoadError(
        f"checkpoint_dir: {root} is neither an official ACE-Step checkpoints/ folder (missing "
        f"{official.VAE_DIR}/, {official.TEXT_ENCODER_DIR}/ and an {official.DIT_PREFIX}<variant>/ folder) nor a "
        f"diffusers-layout checkpoint (missing {[f'{name}/' for name in (*DIFFUSERS_MODULES, 'tokenizer')]}){hint}"
    )


def _official_layout(root: Path, variant: str | None) -> CheckpointLayout:
    available = _dit_folders(root)
    if variant is None:
        if len(available) != 1:
            raise BackendLoadError(
                f"checkpoint_dir: {root} holds the DiT folders of variants {available}; name the variant to run"
            )
        variant = available[0]
    folder = root / official.dit_folder(variant)
    if variant not in available:
        raise BackendLoadError(
            f"checkpoint_dir: {root} has no {folder.name}/ with {official.DIT_CONFIG} for variant {variant!r}; "
            f"it holds DiT folders for variants {available}"
        )
    missing = [
        str(path.relative_to(root))
        for path in (
            folder / official.DIT_WEIGHTS,
            folder / official.DIT_SILENCE,
            root / official.VAE_DIR / "config.json",
            root / official.TEXT_ENCODER_DIR / "config.json",
        )
        if not path.is_file()
    ]
    if missing:
        raise BackendLoadError(f"checkpoint_dir: {root} is an official ACE-Step checkpoints/ folder missing {missing}")
    config = _read_json(folder / official.DIT_CONFIG)
    variant = resolve_variant(config, variant, str(folder))
    text_encoder = root / official.TEXT_ENCODER_DIR
    return CheckpointLayout(
        kind="official",
        root=root,
        family=VARIANT_FAMILY[variant],
        variant=variant,
        configs=official.module_configs(config, str(folder / official.DIT_CONFIG)),
        tensor_files=(TensorFile(folder / official.DIT_WEIGHTS, official.diffusers_name),),
        vae_dir=root / official.VAE_DIR,
        text_encoder_dir=text_encoder,
        tokenizer_dir=text_encoder,
        silence_file=folder / official.DIT_SILENCE,
    )


def _dit_folders(root: Path) -> list[str]:
    """Variants whose official DiT folder (with its config) is in ``root``."""
    return [variant for variant in MODEL_VARIANTS if (root / official.dit_folder(variant) / official.DIT_CONFIG).is_file()]


def _diffusers_layout(root: Path, variant: str | None) -> CheckpointLayout:
    index = root / "model_index.json"
    if index.is_file():
        pipeline = _read_json(index).get("_class_name")
        if pipeline != "AceStepPipeline":
            raise BackendLoadError(f"checkpoint_dir: {root} holds a {pipeline!r} pipeline, not AceStepPipeline")
    missing = [f"{name}/config.json" for name in DIFFUSERS_MODULES if not (root / name / "config.json").is_file()]
    if not (root / "tokenizer").is_dir():
        missing.append("tokenizer/")
    if missing:
        raise BackendLoadError(f"checkpoint_dir: {root} is a diffusers-layout checkpoint missing {missing}")
    present = [(root / name / "config.json").is_file() for name in VQ_PARTS]
    if any(present) and not all(present):
        raise BackendLoadError(f"checkpoint_dir: {root} has only one of {list(VQ_PARTS)}; both or neither")
    modules = ["transformer", "condition_encoder", *(VQ_PARTS if all(present) else ())]
    saved = {name: _read_json(root / name / "config.json") for name in modules}
    variant = resolve_variant(saved["transformer"], variant, str(root))
    files = tuple(TensorFile(path, _module_names(name)) for name in modules for path in _weight_files(root / name))
    return CheckpointLayout(
        kind="diffusers",
        root=root,
        family=VARIANT_FAMILY[variant],
        variant=variant,
        configs={name: official.module_config(name, config) for name, config in saved.items()},
        tensor_files=files,
        vae_dir=root / "vae",
        text_encoder_dir=root / "text_encoder",
        tokenizer_dir=root / "tokenizer",
        silence_file=root / ROOT_SILENCE if (root / ROOT_SILENCE).is_file() else None,
    )


def _module_names(module: str) -> NameMap:
    return lambda name: (module, name)


def _weight_files(folder: Path) -> list[Path]:
    """A module's safetensors files (one, or the shards of one); other precisions are refused."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise BackendLoadError(f"checkpoint_dir: {folder} has no .safetensors weights")
    stems = {path.name.split("-0")[0].removesuffix(".safetensors") for path in files}
    if len(stems) != 1:
        raise BackendLoadError(f"checkpoint_dir: {folder} holds several weight sets {sorted(stems)}; keep one")
    return files


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BackendLoadError(f"checkpoint_dir: cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise BackendLoadError(f"checkpoint_dir: {path} is not a JSON object")
    return data


def silence_latent(layout: CheckpointLayout) -> torch.Tensor:
    """The model's silence latent ``[T, 64]`` in its stored dtype.

    Baked into the condition encoder by current diffusers conversions; an all-zero baked buffer is
    the converter's placeholder, not silence (fed to the timbre encoder it gives drone-like audio,
    diffusers' own note), so then the upstream file (``[1, 64, T]``) must be there instead.
    """
    from safetensors import safe_open

    for source in layout.tensor_files:
        with safe_open(str(source.path), "pt") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                if source.names(key) == ("condition_encoder", official.SILENCE_BUFFER):
                    baked = f.get_tensor(key)
                    if bool((baked != 0).any()):
                        return _checked_silence(baked[0], f"{source.path}:{key}")
    if layout.silence_file is None:
        raise BackendLoadError(
            f"checkpoint_dir: {layout.root} has no silence latent (condition_encoder's buffer is the all-zero "
            f"placeholder and there is no {ROOT_SILENCE}); re-convert the checkpoint with a current diffusers converter"
        )
    raw = torch.load(layout.silence_file, map_location="cpu", weights_only=True)
    if raw.dim() != 3 or raw.shape[0] != 1:
        raise BackendLoadError(f"checkpoint_dir: {layout.silence_file} should be [1, 64, T], got {tuple(raw.shape)}")
    return _checked_silence(raw[0].transpose(0, 1), str(layout.silence_file))


def _checked_silence(latent: torch.Tensor, where: str) -> torch.Tensor:
    if latent.dim() != 2 or latent.shape[1] != LATENT_DIM:
        raise BackendLoadError(f"checkpoint_dir: silence latent {where} should be [T, {LATENT_DIM}], got {tuple(latent.shape)}")
    return latent.contiguous()
