"""A random ACE-Step checkpoint directory: tiny for tests, real-size for the GPU benchmark.

Every module is the real diffusers/transformers class, saved in the same layout a converted
checkpoint has, so a random model goes through the very loader, digest and conditioning code the
real one does. The tiny one has hidden sizes of a few dozen; only its latent geometry is full size:
``[B, T, 64]`` at 25 Hz, 48 kHz stereo, a 1920-sample hop. The real-size one has the published
geometry of every module (2B-parameter DiT, Qwen3-Embedding-0.6B-shaped text encoder, the 48 kHz
Oobleck VAE), so timings and memory on a GPU are the real model's, with no download. The tokenizer
is a byte-level BPE trained here on the ACE-Step prompt formats, so nothing is downloaded.

The VAE has its own seed: checkpoints of different variants built with one ``vae_seed`` share a
latent space, as the real base/sft/turbo checkpoints share their VAE.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from prefect_acestep.stages.backends.acestep.loading import require_extra
from prefect_acestep.stages.backends.acestep.prompt import lyrics_text, prompt_text
from prefect_acestep.stages.backends.protocol import ConditionSpec
from prefect_acestep.stages.geometry import HOP_LENGTH, LATENT_DIM, MAX_FRAMES, SAMPLE_RATE, VQ_POOL
from prefect_acestep.stages.vocabulary import FAMILIES, MODEL_TASKS, TRACK_NAMES

WIDTH = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=8)
SLIDING_WINDOW = 16
"""Smaller than the 64 patches of a 128-frame latent, so the banded attention really bands."""
VAE_RATIOS = [10, 6, 4, 4, 2]
"""Product 1920. The big stride first keeps the tiny encoder cheap: only its first block runs at
48 kHz, and that block's width is fixed at 128 by the 64 latent channels."""
_TOKENIZER_VOCAB = 600

REAL_VAE = dict(
    encoder_hidden_size=128,
    downsampling_ratios=[2, 4, 4, 6, 10],
    channel_multiples=[1, 2, 4, 8, 16],
    decoder_channels=128,
)
"""The released VAE's config (checkpoints/vae/config.json), besides the shared geometry."""
REAL_TEXT = dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                 num_key_value_heads=8, head_dim=128, max_position_embeddings=32768, rope_theta=1_000_000.0)
"""Qwen3-Embedding-0.6B's shape (its vocabulary aside: the tokenizer here is the small one)."""


def build_tiny_checkpoint(path: str | Path, family: str = "turbo", seed: int = 0, vae_seed: int = 0) -> Path:
    """Write a tiny checkpoint of ``family`` (turbo, base or sft) to the new or empty dir ``path``."""
    return build_random_checkpoint(path, family, seed=seed, vae_seed=vae_seed)


def build_random_checkpoint(
    path: str | Path,
    family: str = "turbo",
    *,
    real_size: bool = False,
    seed: int = 0,
    vae_seed: int = 0,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write a random checkpoint of ``family`` to the new or empty dir ``path``: tiny, or with
    ``real_size`` the published geometry (initialised on ``device``, saved in ``dtype``)."""
    require_extra()
    from diffusers import AceStepTransformer1DModel, AutoencoderOobleck
    from diffusers.pipelines.ace_step import (
        AceStepAudioTokenDetokenizer,
        AceStepAudioTokenizer,
        AceStepConditionEncoder,
    )
    from transformers import Qwen3Config, Qwen3Model

    if family not in FAMILIES:
        raise ValueError(f"family: one of {sorted(FAMILIES)}, got {family!r}")
    root = Path(path)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} is not empty; a random checkpoint is written only into a new or empty dir")
    root.mkdir(parents=True, exist_ok=True)

    def save(module: torch.nn.Module, sub: str) -> None:
        torch.nn.Module.to(module, dtype=dtype).save_pretrained(root / sub)  # ModelMixin.to warns needlessly

    # The diffusers classes' defaults are the released DiT-side geometry; the tiny one overrides them.
    width: dict[str, int] = {} if real_size else WIDTH
    attention = {} if real_size else dict(sliding_window=SLIDING_WINDOW, **width)
    with torch.device(device):
        torch.manual_seed(vae_seed)
        vae_shape = REAL_VAE if real_size else dict(
            encoder_hidden_size=2 * LATENT_DIM, downsampling_ratios=VAE_RATIOS, channel_multiples=[1] * 5, decoder_channels=4
        )
        vae = AutoencoderOobleck(
            decoder_input_channels=LATENT_DIM, audio_channels=2, sampling_rate=SAMPLE_RATE, **vae_shape
        ).eval()
        with torch.no_grad():  # the real converter bakes the VAE's latent of silence into the encoder
            frame = vae.encode(torch.zeros(1, 2, HOP_LENGTH)).latent_dist.mode()  # [1, 64, 1]
        save(vae, "vae")

        torch.manual_seed(seed)
        tokenizer = _tokenizer()
        tokenizer.save_pretrained(root / "tokenizer")
        text_shape = REAL_TEXT if real_size else dict(num_hidden_layers=2, max_position_embeddings=4096, **width)
        text_config = Qwen3Config(vocab_size=len(tokenizer), **text_shape)
        save(Qwen3Model(text_config), "text_encoder")

        layers = {} if real_size else dict(num_hidden_layers=2)
        save(
            AceStepTransformer1DModel(
                in_channels=3 * LATENT_DIM, audio_acoustic_hidden_dim=LATENT_DIM, patch_size=2,
                is_turbo=family == "turbo", model_version=family, **layers, **attention,
            ),
            "transformer",
        )  # fmt: skip
        encoder_layers = {} if real_size else dict(num_lyric_encoder_hidden_layers=1, num_timbre_encoder_hidden_layers=1)
        encoder = AceStepConditionEncoder(
            text_hidden_dim=text_config.hidden_size, timbre_hidden_dim=LATENT_DIM, **encoder_layers, **attention
        )
        with torch.no_grad():
            encoder.silence_latent.copy_(frame.transpose(1, 2).expand(1, MAX_FRAMES, LATENT_DIM))
        save(encoder, "condition_encoder")

        vq = dict(audio_acoustic_hidden_dim=LATENT_DIM, pool_window_size=VQ_POOL)
        if not real_size:
            vq.update(num_attention_pooler_hidden_layers=1, **attention)
        fsq = {} if real_size else dict(fsq_dim=WIDTH["hidden_size"])
        save(AceStepAudioTokenizer(**fsq, **vq), "audio_tokenizer")
        save(AceStepAudioTokenDetokenizer(**vq), "audio_token_detokenizer")
    (root / "model_index.json").write_text(json.dumps(_model_index(type(tokenizer).__name__), indent=2))
    return root


def _model_index(tokenizer_class: str) -> dict[str, object]:
    return {
        "_class_name": "AceStepPipeline",
        "audio_token_detokenizer": ["diffusers", "AceStepAudioTokenDetokenizer"],
        "audio_tokenizer": ["diffusers", "AceStepAudioTokenizer"],
        "condition_encoder": ["diffusers", "AceStepConditionEncoder"],
        "text_encoder": ["transformers", "Qwen3Model"],
        "tokenizer": ["transformers", tokenizer_class],
        "transformer": ["diffusers", "AceStepTransformer1DModel"],
        "vae": ["diffusers", "AutoencoderOobleck"],
    }


def _tokenizer():  # noqa: ANN202 - a transformers fast tokenizer
    """Byte-level BPE (every string encodes, and decodes back exactly) with ``<|endoftext|>`` as a
    special token like Qwen's, trained on the prompt formats so that prompts stay short."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [
        prompt_text(ConditionSpec(task=task, caption="piano and drums, upbeat pop", bpm=120, keyscale="C major",
                                  timesignature="4", duration_s=30.0, track_names=TRACK_NAMES[:2]))
        for task in MODEL_TASKS
    ]
    corpus += [lyrics_text(ConditionSpec(task="text2music", lyrics="[verse]\nla la la")), " ".join(TRACK_NAMES)]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_TOKENIZER_VOCAB,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
