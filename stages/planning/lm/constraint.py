"""Constrained decoding of the 5 Hz LM as transformers ``LogitsProcessor``s.

Upstream (acestep/constrained_logits_processor.py, ``MetadataConstrainedLogitsProcessor``) drives the
LM through a finite-state machine: the metadata block is written field by field, each value drawn
only from its allowed set (bpm 30..300, duration 10..600, the 70 key/scales, the vocal languages,
time signatures 2/3/4/6), user-given values are forced token by token, the caption is free text
without audio codes or backticks, and the codes section allows audio-code tokens only, with the end
token held back until the requested count and forced at it.

Here the same machine is written as a program of steps over the generated tokens. The processor
keeps no state that the sampled tokens do not determine: every call first replays the tokens
generated since the last one, so it is correct under ``model.generate`` whatever sampling follows.
Three choices are stricter than upstream, so that even a random-weights LM writes a block that
parses: every field is written in order (upstream lets the LM name the field after the caption and
can skip fields), a caption's continuation lines must be indented and its length cap ends it, and
special tokens are kept out of the caption (upstream allows an end token there).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from transformers import LogitsProcessor

from prefect_acestep.stages.planning.lm.vocabulary import LmVocabulary, ValueTrie

FIELD_ORDER = ("bpm", "caption", "duration", "keyscale", "language", "timesignature")
"""Upstream's field order (genres, which upstream skips when planning, is left out)."""
MAX_CAPTION_TOKENS = 512


@dataclass(frozen=True)
class Step:
    """One part of the block: ``forced`` tokens, a ``value`` from a trie (``language`` picks its
    likeliest first token, as upstream does), or the free ``caption``."""

    kind: Literal["forced", "value", "language", "caption"]
    tokens: tuple[int, ...] = ()
    trie: ValueTrie | None = None

    def budget(self) -> int:
        """Most tokens the step can take."""
        if self.kind == "forced":
            return len(self.tokens)
        if self.kind == "caption":
            return MAX_CAPTION_TOKENS + 1
        assert self.trie is not None
        return self.trie.longest + 1


def reasoning_steps(
    vocab: LmVocabulary, given: dict[str, object], caption: bool, language: bool
) -> list[Step]:
    """The phase-1 program: ``<think>``, the fields (``given`` ones forced), ``</think>``; the end
    token follows the last step."""
    steps = [Step("forced", tuple(vocab.encode("<think>\n")))]
    for name in FIELD_ORDER:
        if (name == "caption" and not caption) or (name == "language" and not language):
            continue
        steps.append(Step("forced", tuple(vocab.field_name(name))))
        if name in given:
            steps.append(Step("forced", tuple(vocab.given_value(name, given[name]))))
        elif name == "caption":
            steps.append(Step("caption"))
        else:
            steps.append(Step("language" if name == "language" else "value", trie=vocab.tries[name]))
    steps.append(Step("forced", tuple(vocab.encode("</think>"))))
    return steps


class _Masks:
    """The bool masks over the model's logits, built on first use (size and device come from the scores)."""

    def __init__(self, vocab: LmVocabulary, scores: torch.Tensor) -> None:
        size, device = scores.shape[-1], scores.device
        self.caption = vocab.mask(vocab.caption_ok, size, device)
        self.continuation = self.caption & vocab.mask(vocab.indented, size, device)
        codes = [False] * len(vocab.texts)
        for token in vocab.code_ids:
            codes[token] = True
        self.codes = vocab.mask(codes, size, device)
        self.size, self.device = size, device

    def only(self, tokens: list[int]) -> torch.Tensor:
        out = torch.zeros(self.size, dtype=torch.bool, device=self.device)
        out[tokens] = True
        return out


class ReasoningConstraint(LogitsProcessor):
    """Phase 1: the metadata block, then the end token (see the module docstring)."""

    def __init__(self, vocab: LmVocabulary, steps: list[Step], prompt_length: int) -> None:
        self.vocab, self.steps, self.prompt_length = vocab, steps, prompt_length
        self.index = 0
        self.written: tuple[int, ...] = ()
        self.caption_tokens = 0
        self.after_newline = False
        self.consumed = 0
        self._masks: _Masks | None = None

    @property
    def finished(self) -> bool:
        """Every step written (only the end token may follow)."""
        return self.index == len(self.steps)

    def max_new_tokens(self) -> int:
        return sum(step.budget() for step in self.steps) + 1

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[0] != 1:
            raise ValueError(f"the constraint follows one sequence, got a batch of {input_ids.shape[0]}")
        generated = input_ids[0, self.prompt_length :].tolist()
        for token in generated[self.consumed :]:
            self._advance(token)
        self.consumed = len(generated)
        if self._masks is None:
            self._masks = _Masks(self.vocab, scores)
        return scores.masked_fill(~self._allowed(scores[0], self._masks), float("-inf"))

    def _next_step(self) -> None:
        self.index += 1
        self.written = ()

    def _advance(self, token: int) -> None:
        if self.finished:
            raise RuntimeError(f"token {token} after the block was complete")
        step = self.steps[self.index]
        if step.kind == "forced":
            expected = step.tokens[len(self.written)]
            if token != expected:
                raise RuntimeError(f"constrained decoding broke: expected token {expected}, sampled {token}")
            self.written += (token,)
            if len(self.written) == len(step.tokens):
                self._next_step()
        elif step.kind == "caption":
            self.caption_tokens += 1
            self.after_newline = self.vocab.texts[token].endswith("\n")
        elif token == self.vocab.newline and self.written in step.trie.complete:  # type: ignore[union-attr]
            self._next_step()
        else:
            self.written += (token,)

    def _allowed(self, scores: torch.Tensor, masks: _Masks) -> torch.Tensor:
        if self.finished:
            return masks.only([self.vocab.eos])
        step = self.steps[self.index]
        if step.kind == "caption":
            if not self._caption_goes_on(scores):
                self._next_step()
                return self._allowed(scores, masks)
            if self.caption_tokens >= MAX_CAPTION_TOKENS:
                return masks.only([self.vocab.newline])
            return masks.continuation if self.after_newline else masks.caption
        if step.kind == "forced":
            return masks.only([step.tokens[len(self.written)]])
        assert step.trie is not None
        allowed = step.trie.allowed(self.written, self.vocab.newline)
        if step.kind == "language" and not self.written:
            allowed = [max(allowed, key=lambda token: float(scores[token]))]
        return masks.only(allowed)

    def _caption_goes_on(self, scores: torch.Tensor) -> bool:
        """After a line break the caption ends unless the LM's likeliest token indents a
        continuation line (upstream's test); the length cap ends it at the next line break."""
        if not self.after_newline:
            return True
        if self.caption_tokens >= MAX_CAPTION_TOKENS:
            return False
        return self.vocab.texts[int(torch.argmax(scores))][:1] in (" ", "\t")


class CodesConstraint(LogitsProcessor):
    """Phase 2: exactly ``count`` audio-code tokens, then the end token."""

    def __init__(self, vocab: LmVocabulary, count: int, prompt_length: int) -> None:
        self.vocab, self.count, self.prompt_length = vocab, count, prompt_length
        self._masks: _Masks | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self._masks is None:
            self._masks = _Masks(self.vocab, scores)
        written = input_ids.shape[1] - self.prompt_length
        allowed = self._masks.codes if written < self.count else self._masks.only([self.vocab.eos])
        return scores.masked_fill(~allowed, float("-inf"))
