"""Who made a latent: the fields that decide whether a latent may feed a model."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from prefect_acestep.stages.vocabulary import MODEL_VARIANTS


class BackendIdentity(BaseModel):
    """Identity of a model backend, recorded on every latent and part of every cache key."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(description="Backend name as registered in the 'prefect_acestep.backends' entry point group.")
    variant: str = Field(description=f"Model variant: {', '.join(MODEL_VARIANTS)}.")
    latent_space: str = Field(
        description="Identifier of the latent space. Latents only feed models of the same latent space."
    )
    weights_digest: str = Field(description="Digest of the weights (cheap: sizes and header hashes).")
