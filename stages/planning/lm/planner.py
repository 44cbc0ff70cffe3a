"""The acestep backend's planner (entry point ``acestep`` of ``prefect_acestep.planners``): the
5 Hz LM plans a song in upstream's two phases (``LLMHandler.generate_with_stop_condition``).

1. Reasoning: for the fields the request lets the LM decide, it writes the metadata block (the
   user's metas are forced into it as given); parsed, that is the plan's metadata.
2. Codes: given that block as its own thinking, it writes ``int(duration * 5)`` audio codes.

Sampling is transformers' own ``generate`` (temperature, top-k, top-p, and classifier-free guidance
against the unconditional prompt via ``negative_prompt_ids``), in upstream's order: guidance, then
the constraint, then temperature, top-k, top-p (nano-vllm's sampler, upstream's default engine). The
whole plan draws from one generator seeded with the request's seed, forked so nothing else's
randomness moves: the same request gives the same plan.

Where this differs from upstream, on purpose: phase 1 also runs when only the caption or the
language is asked for (upstream skips it unless ``use_cot_metas`` and some meta is unset, so those
switches can silently do nothing); the user's vocal language is forced into the block like the other
user metas; the codes' count follows the user's duration, else the planned one, else 30 s (upstream
leaves the count free without a user duration, so the codes can disagree with the planned length);
and one plan serves a whole batch (upstream samples codes per batch item).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from prefect_acestep.stages.planning.lm import prompts
from prefect_acestep.stages.planning.lm.constraint import CodesConstraint, ReasoningConstraint, reasoning_steps
from prefect_acestep.stages.planning.lm.cot import format_cot, parse_cot
from prefect_acestep.stages.planning.lm.loading import LanguageModel, lm_identity, load_lm, resolve_lm_dir
from prefect_acestep.stages.planning.lm.vocabulary import LmVocabulary
from prefect_acestep.stages.params import DEFAULT_DURATION_S
from prefect_acestep.stages.planning.codes import code_count
from prefect_acestep.stages.planning.protocol import Capability, Plan, PlannerIdentity, PlanRequest

METAS = ("bpm", "keyscale", "timesignature", "duration")


class AceStepLmPlanner:
    """The 5 Hz LM in ``lm_dir`` (default ``ACESTEP_LM_DIR``) on ``device`` (default
    ``ACESTEP_DEVICE``, else cuda when available) in ``dtype`` (default bf16 on CUDA, else fp32)."""

    capabilities: frozenset[Capability] = frozenset({"metas", "caption", "language", "codes"})

    @classmethod
    def identity_for(cls, lm_dir: str | None = None, device: str | None = None, dtype: str | None = None) -> PlannerIdentity:
        """The identity a planner built with these options has, from the folder's files alone
        (``device`` and ``dtype`` do not enter it)."""
        del device, dtype
        return lm_identity(resolve_lm_dir(lm_dir))

    def __init__(self, lm_dir: str | None = None, device: str | None = None, dtype: str | None = None) -> None:
        self._lm: LanguageModel = load_lm(resolve_lm_dir(lm_dir), device, dtype)
        self.identity = self._lm.identity
        self._vocab = LmVocabulary(self._lm.tokenizer)
        self.calls = 0
        """Plans made by this instance (tests count LM runs with it)."""

    @property
    def model(self) -> Any:
        """The loaded causal LM (benchmarks read its size)."""
        return self._lm.model

    @property
    def tokenizer(self) -> Any:
        return self._lm.tokenizer

    def plan(self, request: PlanRequest) -> Plan:
        self.calls += 1
        given = _given_metas(request)
        devices = [self._lm.device] if self._lm.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.inference_mode():
            torch.manual_seed(request.seed)
            reasoning = ""
            metadata: dict[str, Any] = dict(given)
            if (request.metas and not all(name in given for name in METAS)) or request.caption_rewrite or request.language:
                reasoning = self._reason(request, given)
                metadata = parse_cot(reasoning)
            codes = self._codes(request, metadata) if request.codes else []
        return Plan(planner=self.identity, request=request, metadata=metadata, audio_codes=codes, reasoning=reasoning)

    def _reason(self, request: PlanRequest, given: dict[str, Any]) -> str:
        tok = self._lm.tokenizer
        prompt = prompts.reasoning_prompt(tok, request.caption, request.lyrics)
        negative = prompts.unconditional_reasoning_prompt(tok, request.lyrics, request.lm_negative_prompt)
        ids = self._ids(prompt)
        steps = reasoning_steps(self._vocab, given, caption=request.caption_rewrite, language=request.language)
        constraint = ReasoningConstraint(self._vocab, steps, ids.shape[1])
        written = self._generate(ids, negative, constraint, constraint.max_new_tokens(), request)
        if not constraint.finished or written[-1:] != [self._vocab.eos]:
            raise RuntimeError(f"the 5 Hz LM's reasoning did not finish in {len(written)} tokens")
        return tok.decode(written[:-1], skip_special_tokens=False)

    def _codes(self, request: PlanRequest, metadata: dict[str, Any]) -> list[int]:
        tok = self._lm.tokenizer
        duration = request.duration if request.duration is not None else metadata.get("duration", DEFAULT_DURATION_S)
        count = code_count(float(duration))
        reasoning = format_cot(metadata)
        ids = self._ids(prompts.codes_prompt(tok, request.caption, request.lyrics, reasoning))
        negative = prompts.unconditional_codes_prompt(tok, request.caption, request.lyrics, request.lm_negative_prompt)
        written = self._generate(ids, negative, CodesConstraint(self._vocab, count, ids.shape[1]), count + 1, request)
        codes = [self._vocab.code_of[token] for token in written if token != self._vocab.eos]
        if len(codes) != count or written[-1:] != [self._vocab.eos]:
            raise RuntimeError(f"the 5 Hz LM wrote {len(codes)} audio codes, {count} were constrained")
        return codes

    def _ids(self, text: str) -> torch.Tensor:
        return self._lm.tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids.to(self._lm.device)

    def _generate(
        self, ids: torch.Tensor, negative: str, constraint: LogitsProcessor, limit: int, request: PlanRequest
    ) -> list[int]:
        """Tokens the LM writes after ``ids`` under ``constraint`` with the request's sampling."""
        sampling = request.lm_temperature > 0
        config = GenerationConfig(
            max_new_tokens=limit,
            do_sample=sampling,
            temperature=request.lm_temperature if sampling else 1.0,
            top_k=request.lm_top_k if sampling else None,  # None: greedy has no warpers
            top_p=request.lm_top_p if sampling else None,
            eos_token_id=self._vocab.eos,
            pad_token_id=self._lm.model.generation_config.pad_token_id,
            guidance_scale=request.lm_cfg_scale if request.lm_cfg_scale > 1 else None,
        )
        extra: dict[str, Any] = {}
        if request.lm_cfg_scale > 1:
            extra["negative_prompt_ids"] = self._ids(negative)
        out = self._lm.model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            generation_config=config,
            logits_processor=LogitsProcessorList([constraint]),
            **extra,
        )
        return out[0, ids.shape[1] :].tolist()


def _given_metas(request: PlanRequest) -> dict[str, Any]:
    """The metas the user fixed, written as upstream's ``user_metadata`` (duration in whole
    seconds), plus a known vocal language."""
    given: dict[str, Any] = {}
    if request.bpm is not None:
        given["bpm"] = request.bpm
    if request.keyscale is not None:
        given["keyscale"] = request.keyscale
    if request.timesignature is not None:
        given["timesignature"] = request.timesignature
    if request.duration is not None:
        given["duration"] = int(request.duration)
    if request.vocal_language != "unknown":
        given["language"] = request.vocal_language
    return given
