"""The latent store: safetensors latents with provenance, TTL, pins, lineage and bundles."""

from stages.store.models import GcReport, Lineage, RemovedLatent
from stages.store.store import LatentStore

__all__ = ["GcReport", "LatentStore", "Lineage", "RemovedLatent"]
