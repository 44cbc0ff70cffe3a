"""The latent store as a Prefect block, so a deployment names its store by block document.

This module is what the ``prefect.collections`` entry point imports: the server registers the block
type without a ``prefect block register`` call. It stays light (no torch at import) because Prefect
imports every collection on startup.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field

from prefect.blocks.core import Block

from prefect_acestep.tasks.open_stores import open_store

if TYPE_CHECKING:
    from prefect_acestep.stages.store import LatentStore

LATENT_DIR_ENV = "ACE_LATENT_DIR"
LATENT_TTL_ENV = "ACE_LATENT_TTL_HOURS"
DEFAULT_LATENT_DIR = Path("~/.prefect-acestep/latents")
DEFAULT_TTL_HOURS = 24.0
PROJECT_URL = "https://github.com/prefect-acestep/prefect-acestep"
RAW_URL = "https://raw.githubusercontent.com/prefect-acestep/prefect-acestep/main"
LOGO_FILE = "ace-latent-store.png"
"""The block's logo, beside this module in the repository (the UI loads it from ``_logo_url``)."""


class AceLatentStore(Block):
    """Where stage latents live: a directory or a remote URL (``s3://bucket/prefix``) with
    safetensors files, an index, TTL and pins.

    Every flow takes the name of a saved block of this type; with none, the local default store
    from ``ACE_LATENT_DIR`` / ``ACE_LATENT_TTL_HOURS`` is used.
    """

    _block_type_name: ClassVar[str] = "ACE Latent Store"
    _block_type_slug: ClassVar[str] = "ace-latent-store"
    _description: ClassVar[str] = (
        "Persisted ACE-Step latents with provenance, TTL and pins, shared by the stage tasks."
    )
    _documentation_url: ClassVar[str] = f"{PROJECT_URL}#the-latent-store"
    _logo_url: ClassVar[str] = f"{RAW_URL}/tasks/{LOGO_FILE}"
    _code_example: ClassVar[str] = """
        ```python
        from prefect_acestep import AceLatentStore

        block = AceLatentStore.load("BLOCK_NAME")
        store = block.get_store()
        record = store.record("LATENT_ID")
        ```
    """

    root: str = Field(
        default=str(DEFAULT_LATENT_DIR),
        title="Root",
        description=(
            "Directory that holds the latents (created if missing), or a remote URL such as "
            "s3://bucket/prefix shared by several machines."
        ),
    )
    storage_options: dict[str, Any] = Field(
        default_factory=dict,
        title="Storage options",
        description=(
            "For a URL root only: fsspec options such as endpoint_url or profile. Stored in plain "
            "text, so no credentials here: give them through the environment or a profile."
        ),
    )
    ttl_hours: float = Field(
        default=DEFAULT_TTL_HOURS,
        gt=0,
        title="TTL (hours)",
        description="Unpinned latents expire this many hours after creation.",
    )
    max_bytes: int | None = Field(
        default=None,
        gt=0,
        title="Byte budget",
        description="Optional size budget; gc evicts expired, then checkpoints, then finals (LRU) to fit.",
    )

    @classmethod
    def from_env(cls) -> "AceLatentStore":
        """The local default store: ``ACE_LATENT_DIR`` (default ``~/.prefect-acestep/latents``) and
        ``ACE_LATENT_TTL_HOURS`` (default 24)."""
        root = os.environ.get(LATENT_DIR_ENV, str(DEFAULT_LATENT_DIR))
        ttl = float(os.environ.get(LATENT_TTL_ENV, DEFAULT_TTL_HOURS))
        return cls(root=root, ttl_hours=ttl)

    @classmethod
    def resolve(cls, name: str | None) -> "AceLatentStore":
        """The saved block ``name``, or the environment's default store when ``name`` is None."""
        return cls.from_env() if name is None else cls.load(name)

    def get_store(self) -> "LatentStore":
        """The store this block configures, opened once per process and shared by its tasks and
        threads (``prefect_acestep.tasks.open_stores``)."""
        return open_store(self.root, self.ttl_hours, self.max_bytes, self.storage_options)
