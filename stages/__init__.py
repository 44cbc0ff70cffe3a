"""Framework-free core of prefect-acestep: stage models, the latent store, the diffusion engine,
model backends and audio I/O. Nothing here imports Prefect.

This module re-exports nothing, so that importing one light submodule (``stages.errors``) does not
load torch; the public names are on the top-level ``prefect_acestep`` package.
"""
