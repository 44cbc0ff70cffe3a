"""The latent store as a Prefect block, so a deployment names its store by block document, and the
block the stage cache keeps its results in beside a remote store.

This module is what the ``prefect.collections`` entry point imports: the server registers the block
types without a ``prefect block register`` call (and a process reading a cached result finds the
cache's block class). It stays light (no torch at import) because Prefect imports every collection
on startup.

Storage options may hold credentials (an ``endpoint_url`` with ``user:password``, a ``secret``, an
SSE-C key deep in ``s3_additional_kwargs``), so both blocks keep them as Prefect's ``SecretDict``:
the Prefect server stores block documents encrypted and shows every value of a secret field as
``********`` in the UI and the API. Where no block needs them, credentials are still best given
through the environment, a profile or an instance role.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from urllib.parse import urlsplit

import fsspec
from pydantic import Field

from prefect.blocks.core import Block
from prefect.filesystems import RemoteFileSystem
from prefect.types import SecretDict

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
    storage_options: SecretDict = Field(
        default_factory=lambda: SecretDict({}),
        title="Storage options",
        description=(
            "For a URL root only: fsspec options such as endpoint_url or profile. Kept as a secret "
            "(the UI and API show its values as ********); credentials are still best given through "
            "the environment, a profile or an instance role."
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
        return open_store(self.root, self.ttl_hours, self.max_bytes, self.storage_options.get_secret_value())


class AceCacheStorage(RemoteFileSystem):
    """Prefect's ``RemoteFileSystem`` with its fsspec settings kept as a secret: where the stage
    cache writes its records and results beside a remote latent store (``s3://.../.prefect-cache``).

    The settings are the latent store's storage options, which may hold credentials; Prefect's own
    ``RemoteFileSystem`` keeps its settings in plain view. The cache saves one of these per store
    (``prefect_acestep.tasks.cache_storage``); nobody needs to create one by hand.
    """

    _block_type_name: ClassVar[str] = "ACE Cache Storage"
    _block_type_slug: ClassVar[str] = "ace-cache-storage"
    _description: ClassVar[str] = (
        "Where the ACE-Step stage cache keeps its records and results beside a remote latent store."
    )
    _documentation_url: ClassVar[str] = f"{PROJECT_URL}#the-stage-cache-beside-a-remote-store"
    _logo_url: ClassVar[str] = f"{RAW_URL}/tasks/{LOGO_FILE}"
    _code_example: ClassVar[str] = """
        ```python
        from prefect_acestep.tasks.blocks import AceCacheStorage

        storage = AceCacheStorage.load("BLOCK_NAME")
        data = storage.read_path("stage-0123-0")
        ```
    """

    settings: SecretDict = Field(  # type: ignore[assignment]
        default_factory=lambda: SecretDict({}),
        description="fsspec settings (the latent store's storage options), kept as a secret.",
    )

    @property
    def filesystem(self) -> fsspec.AbstractFileSystem:
        if not self._filesystem:
            self._filesystem = fsspec.filesystem(urlsplit(self.basepath).scheme, **self.settings.get_secret_value())
        return self._filesystem
