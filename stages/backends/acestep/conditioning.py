"""Conditioning exactly as upstream ACE-Step 1.5 builds it, on the diffusers modules.

Text: the prompt (instruction, caption, metas) goes through the whole Qwen3 encoder; the lyrics
only through its token embedding table (the condition encoder's lyric encoder contextualises them).
Timbre: with no reference audio, upstream feeds the first 30 s (750 frames) of the model's
silence latent to the timbre encoder; zeros instead put it out of distribution. The three are
packed by ``AceStepConditionEncoder`` into the one sequence the DiT cross-attends to.

Length limits: upstream runs at least 128 frames (padding shorter latents with the silence
latent) and at most 15000. Padding here happens per velocity call, and the padded tail of ``x_t``
sits on a fixed path from a fixed noise to silence; that keeps the velocity a pure function of
``(x_t, t, cond, context)``, which exact checkpoint resume needs (upstream lets the tail drift
with the run, which would make it part of the state).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prefect_acestep.stages.backends.acestep.loading import Components
from prefect_acestep.stages.backends.acestep.prompt import lyrics_text, prompt_text
from prefect_acestep.stages.backends.protocol import ConditionSpec
from prefect_acestep.stages.errors import InvalidStageRequest
from prefect_acestep.stages.geometry import LATENT_DIM, MAX_FRAMES

MIN_FRAMES = 128
TIMBRE_FRAMES = 750
"""30 s at 25 Hz: the silence slice upstream feeds the timbre encoder."""
MAX_PROMPT_TOKENS = 256
MAX_LYRIC_TOKENS = 2048
"""Upstream tokenizes with these limits and truncates silently; here going over is an error."""


@dataclass(frozen=True)
class AceStepCondition:
    """One encoded condition. ``hidden_states`` ``[B, L, H]`` is what the DiT cross-attends to.

    The texts and token ids are kept so that a caller (and the tests) can see exactly what the
    tokenizer was given; they are ``None`` for the null condition, which has no text.
    """

    hidden_states: torch.Tensor
    prompt_text: str | None
    lyrics_text: str | None
    prompt_ids: torch.Tensor | None
    lyric_ids: torch.Tensor | None

    def expand(self, batch_size: int) -> AceStepCondition:
        """The same condition for ``batch_size`` items (a view: one encoding serves the batch)."""
        hidden = self.hidden_states.expand(batch_size, -1, -1)
        return AceStepCondition(hidden, self.prompt_text, self.lyrics_text, self.prompt_ids, self.lyric_ids)


def check_frames(frames: int, what: str) -> None:
    if not 1 <= frames <= MAX_FRAMES:
        raise InvalidStageRequest(f"{what}: ACE-Step runs 1..{MAX_FRAMES} latent frames (10 min), got {frames}")


def _token_ids(parts: Components, text: str, limit: int, field: str) -> torch.Tensor:
    ids = parts.tokenizer(text, return_tensors="pt").input_ids
    if ids.shape[1] > limit:
        raise InvalidStageRequest(
            f"{field}: {ids.shape[1]} tokens, the model reads at most {limit} (upstream would cut the rest)"
        )
    return ids


def encode_spec(parts: Components, spec: ConditionSpec, device: torch.device) -> AceStepCondition:
    """The batch-1 condition for ``spec``, with upstream's prompt and lyrics formats."""
    prompt, lyrics = prompt_text(spec), lyrics_text(spec)
    prompt_ids = _token_ids(parts, prompt, MAX_PROMPT_TOKENS, "caption")
    lyric_ids = _token_ids(parts, lyrics, MAX_LYRIC_TOKENS, "lyrics")
    text_hidden = parts.text_encoder(input_ids=prompt_ids.to(device)).last_hidden_state
    lyric_hidden = parts.text_encoder.get_input_embeddings()(lyric_ids.to(device))
    timbre = parts.silence[:TIMBRE_FRAMES].unsqueeze(0)
    hidden, _mask = parts.condition_encoder(
        text_hidden_states=text_hidden,
        text_attention_mask=torch.ones(prompt_ids.shape, dtype=torch.bool, device=device),
        lyric_hidden_states=lyric_hidden,
        lyric_attention_mask=torch.ones(lyric_ids.shape, dtype=torch.bool, device=device),
        refer_audio_acoustic_hidden_states_packed=timbre,
        refer_audio_order_mask=torch.zeros(1, dtype=torch.long, device=device),
    )
    return AceStepCondition(hidden, prompt, lyrics, prompt_ids[0], lyric_ids[0])


def null_of(parts: Components, cond: AceStepCondition) -> AceStepCondition:
    """The learned null embedding broadcast over ``cond``'s sequence (upstream's CFG branch;
    re-encoding empty strings instead is out of distribution)."""
    null = parts.condition_encoder.null_condition_emb.to(cond.hidden_states.dtype)
    return AceStepCondition(null.expand_as(cond.hidden_states), None, None, None, None)


def context_of(src_latents: torch.Tensor, chunk_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``context_latents`` ``[B, T, 128]``: the source, then the 0/1 mask repeated over 64 channels."""
    if src_latents.dim() != 3 or src_latents.shape[2] != LATENT_DIM:
        raise InvalidStageRequest(f"src_latents: expected [B, T, {LATENT_DIM}], got {tuple(src_latents.shape)}")
    if tuple(chunk_mask.shape) != tuple(src_latents.shape[:2]):
        raise InvalidStageRequest(f"chunk_mask: expected {tuple(src_latents.shape[:2])}, got {tuple(chunk_mask.shape)}")
    check_frames(src_latents.shape[1], "context")
    mask = chunk_mask.to(src_latents.dtype).unsqueeze(-1).expand(-1, -1, LATENT_DIM)
    return torch.cat([src_latents, mask], dim=-1).to(dtype)


def pad_to_min_frames(
    x: torch.Tensor, context: torch.Tensor, t: torch.Tensor, silence: torch.Tensor, pad_noise: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Extend ``x`` ``[B, T, 64]`` and ``context`` to ``MIN_FRAMES`` (see the module docstring).

    The tail is the silence latent's start (as upstream pads), given as kept source (mask 0),
    with ``x`` there at ``t * pad_noise + (1 - t) * silence``.
    """
    pad = MIN_FRAMES - x.shape[1]
    if pad <= 0:
        return x, context
    batch = x.shape[0]
    fill = silence[:pad].to(x.dtype)
    level = t.to(x.dtype).view(-1, 1, 1)
    x_tail = level * pad_noise[:pad].to(x.dtype) + (1 - level) * fill
    ctx_tail = torch.cat([fill, torch.zeros_like(fill)], dim=-1).to(context.dtype).expand(batch, -1, -1)
    return torch.cat([x, x_tail], dim=1), torch.cat([context, ctx_tail], dim=1)
