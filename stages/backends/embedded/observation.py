"""How each task reads the context (source latents + chunk mask), as ACE-Step's tasks mean it:
which coordinates the prior generates, what they are generated on top of, which coordinates are
kept from the source, and which kept ones tell the prior what the source plays.

- text2music, cover: everything is generated (cover's structure lives in its scenes, not here).
- repaint: the masked frames are generated; the rest is the source and informs key, tempo, chords.
- lego: the named track's channels inside the masked window are generated on top of the source.
- complete: the named tracks' channels are generated on top of the source over the whole piece
  (no names: every part of the default band the source lacks).
- extract: nothing is generated; the result is the source restricted to the named track.
"""

from __future__ import annotations

import torch

from prefect_acestep.stages.backends.embedded.condition import EmbeddedCondition
from prefect_acestep.stages.backends.embedded.prior import Observation
from prefect_acestep.stages.backends.embedded.style import DEFAULT_PARTS, Style
from prefect_acestep.stages.backends.embedded.tracks import PART_CHANNELS, PARTS, parts_mask, track_parts

PRESENT_LEVEL = 0.15
"""A part plays in the source when one of its channels reaches this amplitude somewhere."""


def present_parts(src: torch.Tensor) -> list[frozenset[str]]:
    """Parts each item's source plays."""
    peaks = src.abs().amax(dim=1)  # [B, 64]
    return [
        frozenset(p for p in PARTS if bool((item[list(PART_CHANNELS[p])] >= PRESENT_LEVEL).any())) for item in peaks
    ]


def observe(cond: EmbeddedCondition, src: torch.Tensor, mask: torch.Tensor) -> tuple[Observation, Style]:
    """The observation for ``cond``'s task and the style the prior plays it in (the caption's,
    plus the parts the source already plays and the parts the task adds)."""
    task = cond.spec.task
    batch, frames, dim = src.shape
    zeros = torch.zeros_like(src)
    if task in ("text2music", "cover"):
        everything = torch.ones(batch, frames, dim, dtype=torch.bool, device=src.device)
        return Observation(free=everything, base=zeros, fixed=zeros, evidence=None), cond.style
    if task == "extract":
        keep = parts_mask(track_parts(cond.spec.track_names), src.device)
        nothing = torch.zeros(batch, frames, dim, dtype=torch.bool, device=src.device)
        return Observation(free=nothing, base=zeros, fixed=src * keep, evidence=None), cond.style
    present = present_parts(src)
    union = frozenset().union(*present)
    generate = (mask > 0.5)[:, :, None]
    if task == "repaint":
        free = generate.expand(batch, frames, dim)
        base, added = zeros, frozenset()
    elif task in ("lego", "complete"):
        named = track_parts(cond.spec.track_names)
        added = named if task == "lego" or named else DEFAULT_PARTS - union
        free = generate & parts_mask(added, src.device)
        base = src
    else:
        raise ValueError(f"unknown task {task!r}")
    seen = torch.stack([parts_mask(parts, src.device) for parts in present])[:, None, :]
    evidence = ~free & seen
    observation = Observation(free=free, base=base, fixed=src, evidence=evidence if bool(evidence.any()) else None)
    return observation, cond.style.with_parts(union | added)
