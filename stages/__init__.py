"""Framework-free core of prefect-acestep: stage models, the latent store, the diffusion engine,
model backends and audio I/O. Nothing here imports Prefect."""
