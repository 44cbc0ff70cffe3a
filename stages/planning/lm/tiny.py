"""A tiny random 5 Hz LM folder, for tests and the CPU benchmark.

It has the real one's shape where it matters and nothing else: a transformers ``Qwen3ForCausalLM``
(two layers of width 32), a byte-level BPE tokenizer with Qwen's chat tokens, the ``<think>`` tags
and all 64000 ``<|audio_code_N|>`` tokens, and a ChatML chat template, saved as a local folder that
goes through the very loader the real LM does. The BPE is trained here, on the prompt formats and
metadata values, so nothing is downloaded. Random weights write nonsense; the constrained decoding
still has to make it a well-formed plan.
"""

from __future__ import annotations

from pathlib import Path

import torch

from prefect_acestep.stages.planning.lm.cot import format_cot
from prefect_acestep.stages.planning.lm.prompts import LM_INSTRUCTION
from prefect_acestep.stages.backends.acestep.loading import require_extra
from prefect_acestep.stages.params import TIME_SIGNATURES, VOCAL_LANGUAGES
from prefect_acestep.stages.planning.codes import CODEBOOK_SIZE, code_token
from prefect_acestep.stages.vocabulary import ACESTEP_KEYSCALES

WIDTH = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=8)
GEOMETRY_1_7B = dict(hidden_size=2048, intermediate_size=6144, num_attention_heads=16, num_key_value_heads=8,
                     head_dim=128, num_hidden_layers=28)  # fmt: skip
"""Qwen3-1.7B's shape (acestep-5Hz-lm-1.7B's base), for a random-weights GPU benchmark."""
CHAT_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""ChatML, the format of Qwen's template for plain system/user/assistant turns."""
_BPE_VOCAB = 700


def build_tiny_lm(
    path: str | Path,
    seed: int = 0,
    name: str = "acestep-5Hz-lm-tiny",
    newline_scale: float = 1.0,
    geometry: dict[str, int] | None = None,
) -> Path:
    """Write a tiny LM folder ``path / name`` (new or empty) and return it.

    Random logits of width 32 are nearly uniform over the 64k-token vocabulary, so a random LM's
    caption runs to the 512-token cap. ``newline_scale`` scales the newline token's (tied)
    embedding: at a few hundred the LM ends lines within a few tokens, as a trained one ends its
    captions, which keeps a random-weights caption within what the DiT reads. ``geometry`` replaces
    the tiny shape (e.g. ``GEOMETRY_1_7B``, saved in bf16) with the same tokenizer.
    """
    require_extra()
    from transformers import Qwen3Config, Qwen3ForCausalLM

    root = Path(path) / name
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} is not empty; a tiny LM is written only into a new or empty dir")
    root.mkdir(parents=True, exist_ok=True)
    tokenizer = _tokenizer()
    tokenizer.save_pretrained(root)
    torch.manual_seed(seed)
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        max_position_embeddings=8192,
        tie_word_embeddings=geometry is None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **({**WIDTH, "num_hidden_layers": 2} if geometry is None else geometry),
    )
    model = Qwen3ForCausalLM(config)
    if geometry is not None:
        model = model.to(torch.bfloat16)
    with torch.no_grad():
        model.get_input_embeddings().weight[tokenizer.encode("\n")[-1]] *= newline_scale
    model.save_pretrained(root)
    return root


def _corpus() -> list[str]:
    metas = {"bpm": 120, "caption": "A calm piano ballad.", "duration": 60, "keyscale": "C major",
             "language": "en", "timesignature": "4"}  # fmt: skip
    text = [
        f"# Instruction\n{LM_INSTRUCTION}\n\n# Caption\nupbeat pop with piano and drums\n\n# Lyric\n[verse]\nla la\n",
        format_cot(metas),
        " ".join(str(value) for value in range(10, 601)),
        " ".join(ACESTEP_KEYSCALES),
        " ".join(VOCAL_LANGUAGES),
        " ".join(TIME_SIGNATURES),
    ]
    return text * 3


def _tokenizer():  # noqa: ANN202 - a transformers fast tokenizer
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_BPE_VOCAB,
        special_tokens=list(CHAT_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_corpus(), trainer)
    bpe.add_tokens([AddedToken(tag, special=False, normalized=False) for tag in ("<think>", "</think>")])
    bpe.add_special_tokens([AddedToken(code_token(code), special=True, normalized=False) for code in range(CODEBOOK_SIZE)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token=None
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
