"""A tiny random ACE-Step checkpoint directory, for tests and the CPU smoke run of the benchmark.

Every module is the real diffusers/transformers class with hidden sizes of a few dozen, saved in
the same layout a converted checkpoint has, so the tiny model goes through the very loader, digest
and conditioning code the real one does. Only the latent geometry is full size: ``[B, T, 64]`` at
25 Hz, 48 kHz stereo, a 1920-sample hop. The tokenizer is a byte-level BPE trained here on the
ACE-Step prompt formats, so nothing is downloaded.

The VAE has its own seed: tiny checkpoints of different variants built with one ``vae_seed`` share
a latent space, as the real base/sft/turbo checkpoints share their VAE.
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


def build_tiny_checkpoint(path: str | Path, family: str = "turbo", seed: int = 0, vae_seed: int = 0) -> Path:
    """Write a tiny checkpoint of ``family`` (turbo, base or sft) to the new or empty dir ``path``."""
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
        raise FileExistsError(f"{root} is not empty; a tiny checkpoint is written only into a new or empty dir")
    root.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(vae_seed)
    vae = AutoencoderOobleck(
        encoder_hidden_size=2 * LATENT_DIM,
        downsampling_ratios=VAE_RATIOS,
        channel_multiples=[1, 1, 1, 1, 1],
        decoder_channels=4,
        decoder_input_channels=LATENT_DIM,
        audio_channels=2,
        sampling_rate=SAMPLE_RATE,
    ).eval()
    vae.save_pretrained(root / "vae")

    torch.manual_seed(seed)
    tokenizer = _tokenizer()
    tokenizer.save_pretrained(root / "tokenizer")
    text_config = Qwen3Config(
        vocab_size=len(tokenizer), num_hidden_layers=2, max_position_embeddings=4096, **WIDTH
    )
    Qwen3Model(text_config).save_pretrained(root / "text_encoder")

    is_turbo = family == "turbo"
    AceStepTransformer1DModel(
        num_hidden_layers=2,
        in_channels=3 * LATENT_DIM,
        audio_acoustic_hidden_dim=LATENT_DIM,
        patch_size=2,
        sliding_window=SLIDING_WINDOW,
        is_turbo=is_turbo,
        model_version=family,
        **WIDTH,
    ).save_pretrained(root / "transformer")

    encoder = AceStepConditionEncoder(
        text_hidden_dim=WIDTH["hidden_size"],
        timbre_hidden_dim=LATENT_DIM,
        num_lyric_encoder_hidden_layers=1,
        num_timbre_encoder_hidden_layers=1,
        sliding_window=SLIDING_WINDOW,
        **WIDTH,
    )
    with torch.no_grad():  # the real converter bakes the VAE's latent of silence in here
        frame = vae.encode(torch.zeros(1, 2, HOP_LENGTH)).latent_dist.mode()  # [1, 64, 1]
        encoder.silence_latent.copy_(frame.transpose(1, 2).expand(1, MAX_FRAMES, LATENT_DIM))
    encoder.save_pretrained(root / "condition_encoder")

    vq = dict(audio_acoustic_hidden_dim=LATENT_DIM, pool_window_size=VQ_POOL, num_attention_pooler_hidden_layers=1)
    AceStepAudioTokenizer(fsq_dim=WIDTH["hidden_size"], sliding_window=SLIDING_WINDOW, **vq, **WIDTH).save_pretrained(
        root / "audio_tokenizer"
    )
    AceStepAudioTokenDetokenizer(sliding_window=SLIDING_WINDOW, **vq, **WIDTH).save_pretrained(
        root / "audio_token_detokenizer"
    )
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
