"""The 5 Hz LM's prompts, exactly as upstream's ``LLMHandler`` builds them (acestep/llm_inference.py:
``build_formatted_prompt`` and ``build_formatted_prompt_with_cot``), through the LM's own chat template.

Phase 1 (the chain of thought) asks for the metadata block; phase 2 (the codes) gives that block back
as the assistant's turn and lets the LM continue with audio codes. Classifier-free guidance runs the
LM a second time on an unconditional prompt: in phase 1 the caption is dropped (or replaced by the
negative prompt), in phase 2 the thinking block is emptied (and the caption replaced by the negative
prompt when there is one).
"""

from __future__ import annotations

from typing import Any

LM_INSTRUCTION = "Generate audio semantic tokens based on the given conditions:"
"""Upstream's ``DEFAULT_LM_INSTRUCTION`` (acestep/constants.py)."""
NO_NEGATIVE_PROMPT = "NO USER INPUT"
EMPTY_THINKING = "<think>\n</think>"


def has_negative_prompt(negative_prompt: str) -> bool:
    """Upstream treats '', blanks and its default 'NO USER INPUT' as no negative prompt."""
    return negative_prompt.strip() not in ("", NO_NEGATIVE_PROMPT)


def _system() -> dict[str, str]:
    return {"role": "system", "content": f"# Instruction\n{LM_INSTRUCTION}\n\n"}


def _user(caption: str, lyrics: str) -> dict[str, str]:
    return {"role": "user", "content": f"# Caption\n{caption}\n\n# Lyric\n{lyrics}\n"}


def reasoning_prompt(tokenizer: Any, caption: str, lyrics: str) -> str:
    """Phase 1: the LM answers with its ``<think>`` block."""
    return tokenizer.apply_chat_template(
        [_system(), _user(caption, lyrics)], tokenize=False, add_generation_prompt=True
    )


def unconditional_reasoning_prompt(tokenizer: Any, lyrics: str, negative_prompt: str) -> str:
    """Phase 1's CFG branch: the negative prompt as caption, or no caption at all."""
    if has_negative_prompt(negative_prompt):
        user = _user(negative_prompt, lyrics)
    else:
        user = {"role": "user", "content": f"# Lyric\n{lyrics}\n"}
    return tokenizer.apply_chat_template([_system(), user], tokenize=False, add_generation_prompt=True)


def codes_prompt(tokenizer: Any, caption: str, lyrics: str, reasoning: str) -> str:
    """Phase 2: the thinking block as the assistant's turn; the LM continues on the next line."""
    formatted = tokenizer.apply_chat_template(
        [_system(), _user(caption, lyrics), {"role": "assistant", "content": reasoning}],
        tokenize=False,
        add_generation_prompt=False,
    )
    return formatted if formatted.endswith("\n") else formatted + "\n"


def unconditional_codes_prompt(tokenizer: Any, caption: str, lyrics: str, negative_prompt: str) -> str:
    """Phase 2's CFG branch: an empty thinking block, the negative prompt as caption if given."""
    shown = negative_prompt if has_negative_prompt(negative_prompt) else caption
    return codes_prompt(tokenizer, shown, lyrics, EMPTY_THINKING)
