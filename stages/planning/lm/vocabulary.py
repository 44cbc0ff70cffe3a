"""What the constrained decoding needs to know about the LM's tokenizer, computed once per LM.

Values are matched as token sequences, never as strings: the tokenizer may fold the space after
``bpm:`` into the value's first token (``' 120'``), so each allowed value is tokenized in context
(``bpm: 120``) and the field name's own tokens are cut off, as upstream builds its prefix trees
(acestep/constrained_logits_processor.py, ``_build_numeric_prefix_tree`` and friends).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch

from prefect_acestep.stages.params import TIME_SIGNATURES, VOCAL_LANGUAGES
from prefect_acestep.stages.planning.codes import CODEBOOK_SIZE, code_token
from prefect_acestep.stages.vocabulary import ACESTEP_KEYSCALES

BPM_RANGE = (30, 300)
DURATION_RANGE = (10, 600)
"""Upstream's BPM_MIN/MAX and DURATION_MIN/MAX (acestep/constants.py)."""
_NEWLINE_THEN_TEXT = re.compile(r"\n\S")


@dataclass(frozen=True)
class ValueTrie:
    """The allowed values of one field as token paths: ``following[prefix]`` are the tokens that may
    come next, and a prefix in ``complete`` is a whole value (the field's newline may follow)."""

    following: dict[tuple[int, ...], frozenset[int]]
    complete: frozenset[tuple[int, ...]]
    longest: int

    def allowed(self, prefix: tuple[int, ...], newline: int) -> list[int]:
        tokens = list(self.following.get(prefix, ()))
        return tokens + [newline] if prefix in self.complete else tokens


@dataclass
class LmVocabulary:
    """Token facts of one tokenizer (see the module docstring)."""

    tokenizer: Any
    newline: int = field(init=False)
    eos: int = field(init=False)
    texts: list[str] = field(init=False)
    code_ids: list[int] = field(init=False)
    """Token id of audio code ``c`` at index ``c``."""
    code_of: dict[int, int] = field(init=False)
    caption_ok: list[bool] = field(init=False)
    """Tokens a caption may use: no special or added token (codes, think tags, end tokens), no
    backtick, and no newline directly followed by text (an unindented line would end the YAML value)."""
    indented: list[bool] = field(init=False)
    """Tokens that start with a space or a tab: how a caption's continuation line must begin."""
    tries: dict[str, ValueTrie] = field(init=False)

    def __post_init__(self) -> None:
        tok = self.tokenizer
        self.newline = self.encode("\n")[-1]
        self.eos = tok.eos_token_id
        self.texts = [tok.decode([token]) for token in range(len(tok))]
        vocab = tok.get_vocab()
        self.code_ids = [vocab[code_token(code)] for code in range(CODEBOOK_SIZE)]
        self.code_of = {token: code for code, token in enumerate(self.code_ids)}
        added = set(tok.all_special_ids) | set(tok.get_added_vocab().values())
        self.caption_ok = [
            token not in added and "`" not in text and _NEWLINE_THEN_TEXT.search(text) is None
            for token, text in enumerate(self.texts)
        ]
        self.indented = [text[:1] in (" ", "\t") for text in self.texts]
        numbers = {name: [str(v) for v in range(low, high + 1)] for name, (low, high) in
                   {"bpm": BPM_RANGE, "duration": DURATION_RANGE}.items()}  # fmt: skip
        self.tries = {
            **{name: self._trie(name, values) for name, values in numbers.items()},
            "keyscale": self._trie("keyscale", list(ACESTEP_KEYSCALES)),
            "language": self._trie("language", list(VOCAL_LANGUAGES)),
            "timesignature": self._trie("timesignature", list(TIME_SIGNATURES)),
        }

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def field_name(self, name: str) -> list[int]:
        """Tokens of ``name:`` as the constrained block writes it."""
        return self.encode(f"{name}:")

    def given_value(self, name: str, value: object) -> list[int]:
        """Tokens of a user-given value and its newline, as they follow ``name:`` in context."""
        head = self.field_name(name)
        full = self.encode(f"{name}: {value}\n")
        return full[len(head) :] if full[: len(head)] == head else self.encode(f" {value}\n")

    def _trie(self, name: str, values: list[str]) -> ValueTrie:
        head = self.field_name(name)
        following: dict[tuple[int, ...], set[int]] = {}
        complete: set[tuple[int, ...]] = set()
        longest = 0
        for value in values:
            full = self.encode(f"{name}: {value}")
            if full[: len(head)] != head or len(full) == len(head):
                continue  # the name's tokens merge with the value's: not writable after `name:`
            path = tuple(full[len(head) :])
            for length in range(len(path)):
                following.setdefault(path[:length], set()).add(path[length])
            complete.add(path)
            longest = max(longest, len(path))
        return ValueTrie({k: frozenset(v) for k, v in following.items()}, frozenset(complete), longest)

    def mask(self, allowed: list[bool], size: int, device: torch.device) -> torch.Tensor:
        """``allowed`` as a bool tensor over the model's ``size`` logits (ids past the tokenizer's
        vocabulary, the model's padding rows, are never allowed)."""
        out = torch.zeros(size, dtype=torch.bool)
        out[: len(allowed)] = torch.tensor(allowed, dtype=torch.bool)[:size]
        return out.to(device)
