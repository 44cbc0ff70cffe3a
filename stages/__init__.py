"""Framework-free core of prefect-acestep: stage models, the latent store, the diffusion engine,
model backends and audio I/O. Nothing here imports Prefect."""

from stages.params import StageParams
from stages.records import LatentRecord
from stages.requests import GenerateRequest, PipelineRequest, PipelineStage, SimpleRequest, StageSource
from stages.results import StageResult
from stages.store import LatentStore

__all__ = [
    "GenerateRequest",
    "LatentRecord",
    "LatentStore",
    "PipelineRequest",
    "PipelineStage",
    "SimpleRequest",
    "StageParams",
    "StageResult",
    "StageSource",
]
