"""The latent store: safetensors latents with provenance, TTL, pins, lineage and bundles."""

from prefect_acestep.stages.store.models import GcReport, Lineage, RemovedLatent
from prefect_acestep.stages.store.store import LatentStore

__all__ = ["GcReport", "LatentStore", "Lineage", "RemovedLatent"]
