"""Can this stored latent feed this run? Latent space, variant, shape, sample index and dtype.

Checked before any model work, each failure an ``IncompatibleLatent`` naming what was expected and
what was found. The variant check may be waived explicitly (``allow_cross_variant``: a latent of
another variant of the same latent space works, at an unpredictable quality) but never the latent
space: latents of different spaces are different coordinates, not a quality risk.
"""

from __future__ import annotations

import torch
from loguru import logger

from prefect_acestep.stages.backends.identity import BackendIdentity
from prefect_acestep.stages.errors import IncompatibleLatent
from prefect_acestep.stages.geometry import LATENT_DIM
from prefect_acestep.stages.records import LatentRecord
from prefect_acestep.stages.vocabulary import IMPORT_STAGE

SAFE_CASTS = frozenset({torch.float16, torch.bfloat16, torch.float64})


def check_source(record: LatentRecord, model: BackendIdentity, *, sample_index: int, allow_cross_variant: bool) -> None:
    """Raise if ``record`` cannot feed a run of ``model`` at ``sample_index``."""
    if record.backend.latent_space != model.latent_space:
        raise IncompatibleLatent(record.id, "latent space", model.latent_space, record.backend.latent_space)
    # Imported audio was only VAE-encoded, which every variant of a latent space shares.
    if record.stage_type != IMPORT_STAGE and record.backend.variant != model.variant and not allow_cross_variant:
        raise IncompatibleLatent(
            record.id,
            "model variant (set allow_cross_variant to use it anyway)",
            model.variant,
            record.backend.variant,
        )
    if len(record.shape) != 3 or record.shape[2] != LATENT_DIM:
        raise IncompatibleLatent(record.id, "shape [batch, T, D]", f"[*, *, {LATENT_DIM}]", record.shape)
    if not 0 <= sample_index < record.shape[0]:
        raise IncompatibleLatent(
            record.id, "sample index", f"0..{record.shape[0] - 1} (batch has {record.shape[0]} items)", sample_index
        )


def as_float32(latent_id: str, tensor: torch.Tensor) -> torch.Tensor:
    """The loop runs in float32: cast other float dtypes with a warning, refuse the rest."""
    if tensor.dtype == torch.float32:
        return tensor
    if tensor.dtype in SAFE_CASTS:
        logger.warning("latent {} is {}; cast to float32", latent_id, tensor.dtype)
        return tensor.to(torch.float32)
    raise IncompatibleLatent(latent_id, "dtype", "a float dtype", str(tensor.dtype))
