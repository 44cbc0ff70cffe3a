"""Loading an ACE-Step 1.5 checkpoint from local files, in either layout, onto one device.

``layout.resolve_layout`` says where each part is; here the DiT-side modules (DiT, condition
encoder, VQ pair) are built from their diffusers configs and filled with the layout's tensors under
their diffusers names (so the official release loads exactly as a diffusers conversion does), and
the standard folders (VAE, text encoder, tokenizer) load with ``from_pretrained``. Every load is
local (``local_files_only=True``), so a run never reaches a model hub; a missing file is a
``BackendLoadError`` naming it, not a download. diffusers and transformers are imported only inside
functions, so the package imports (and the default install works) without them.

Parts several variants share (the VAE, the text encoder and its tokenizer) are loaded once per
process per (part digest, device, dtype): a base and a turbo backend on one ``checkpoints/`` folder,
or on two copies of it, hold one VAE and one text encoder in memory.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from prefect_acestep.stages.backends.acestep.layout import CheckpointLayout, silence_latent
from prefect_acestep.stages.backends.acestep.official_layout import SILENCE_BUFFER, module_classes
from prefect_acestep.stages.errors import BackendLoadError
from prefect_acestep.stages.geometry import AUDIO_CHANNELS, HOP_LENGTH, LATENT_DIM, MAX_FRAMES, SAMPLE_RATE, VQ_POOL

EXTRA = "prefect-acestep[acestep]"

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEVICE_ENV = "ACESTEP_DEVICE"
_shared: dict[tuple[str, str, str, torch.dtype], Any] = {}
_shared_lock = threading.Lock()


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


def load_components(
    layout: CheckpointLayout, parts: dict[str, str], device: torch.device, dtype: torch.dtype
) -> Components:
    """Load every module of ``layout`` (``parts``: its identity's part digests), check the geometry."""
    from diffusers import AutoencoderOobleck
    from transformers import AutoModel, AutoTokenizer

    silence = silence_latent(layout)
    if silence.shape[0] < MAX_FRAMES:
        raise BackendLoadError(f"checkpoint_dir: silence latent should be [>= {MAX_FRAMES}, 64], got {tuple(silence.shape)}")
    modules = _dit_modules(layout, silence, device, dtype)

    def shared(part: str, folder: Any, loader: Callable[..., Any], **kwargs: Any) -> Any:
        def load() -> Any:
            try:
                module = loader(str(folder), local_files_only=True, **kwargs)
            except (OSError, ValueError, KeyError, RuntimeError, TypeError) as exc:
                raise BackendLoadError(f"checkpoint_dir: cannot load {part} from {folder}: {exc}") from exc
            return module.to(device).eval() if hasattr(module, "eval") else module

        return _shared_part((part, parts[part], str(device), dtype), load)

    components = Components(
        transformer=modules["transformer"],
        condition_encoder=modules["condition_encoder"],
        vae=shared("vae", layout.vae_dir, AutoencoderOobleck.from_pretrained, torch_dtype=dtype),
        text_encoder=shared("text_encoder", layout.text_encoder_dir, AutoModel.from_pretrained, dtype=dtype),
        tokenizer=_shared_part(("tokenizer", parts["tokenizer"], "", torch.float32),
                               lambda: AutoTokenizer.from_pretrained(str(layout.tokenizer_dir), local_files_only=True)),
        audio_tokenizer=modules.get("audio_tokenizer"),
        audio_token_detokenizer=modules.get("audio_token_detokenizer"),
        silence=silence[:MAX_FRAMES].to(device=device, dtype=dtype),
    )
    _check_geometry(layout, components)
    return components


def _shared_part(key: tuple[str, str, str, torch.dtype], load: Callable[[], Any]) -> Any:
    with _shared_lock:
        if key not in _shared:
            _shared[key] = load()
        return _shared[key]


def _dit_modules(
    layout: CheckpointLayout, silence: torch.Tensor, device: torch.device, dtype: torch.dtype
) -> dict[str, Any]:
    """The DiT-side modules built from their configs and filled with the layout's tensors.

    Weights are assigned, not copied into randomly initialised modules (accelerate's empty
    init), and a tensor the module lacks, or a parameter the files lack, is an error naming it.
    """
    from accelerate import init_empty_weights
    from safetensors.torch import load_file

    state: dict[str, dict[str, torch.Tensor]] = {module: {} for module in layout.configs}
    for source in layout.tensor_files:
        for key, tensor in load_file(str(source.path)).items():
            mapped = source.names(key)
            if mapped is not None:
                state[mapped[0]][mapped[1]] = tensor
    # The encoder's silence buffer (baked in by diffusers' converter) is the effective silence latent.
    state["condition_encoder"][SILENCE_BUFFER] = silence.unsqueeze(0)
    classes = module_classes()
    modules = {}
    for module, config in layout.configs.items():
        with init_empty_weights():
            built = classes[module].from_config(config)
        result = built.load_state_dict(state[module], strict=False, assign=True)
        if result.missing_keys or result.unexpected_keys:
            raise BackendLoadError(
                f"checkpoint_dir: {layout.root} does not fit {module}: missing {result.missing_keys}, "
                f"unexpected {result.unexpected_keys}"
            )
        # nn.Module.to: ModelMixin.to warns about fp32-kept modules these classes do not have.
        modules[module] = torch.nn.Module.to(built, device=device, dtype=dtype).eval()
    return modules


def _check_geometry(layout: CheckpointLayout, parts: Components) -> None:
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
        raise BackendLoadError(f"checkpoint_dir: {layout.root} has the wrong geometry: got {wrong}, expected {expected}")
