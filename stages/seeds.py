"""Seeds: one drawn per batch item, derived from the base seed, always recorded.

Item i gets ``base + i``: a single sample can be replayed alone (batch 1, seed ``base + i``) and gives
the same latent, because the loop draws each item's noise from that item's own generator.
"""

from __future__ import annotations

import secrets

from prefect_acestep.stages.params import MAX_SEED


def draw_base_seed(seed: int) -> int:
    """The requested seed, or a fresh random one for ``-1``."""
    return secrets.randbelow(MAX_SEED + 1) if seed == -1 else seed


def item_seeds(base_seed: int, batch_size: int) -> list[int]:
    return [(base_seed + index) % (MAX_SEED + 1) for index in range(batch_size)]
