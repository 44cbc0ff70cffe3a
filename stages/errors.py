"""Typed errors of the stage layer.

Every error a user can meet names the latent ID (or field) and the reason, so that a Prefect run's
failure message alone tells the user what to regenerate or fix. The task layer decides retries by
type: ``TransientError`` subclasses retry, every other ``StageError`` fails fast.
"""

from __future__ import annotations

from datetime import datetime


class StageError(Exception):
    """Base of every error raised on purpose by this project."""


class InvalidLatentId(StageError, ValueError):
    """A latent ID that is not of our opaque form (path separators, NUL, too long, ...)."""

    def __init__(self, latent_id: object, reason: str) -> None:
        self.latent_id = latent_id
        super().__init__(f"invalid latent id {latent_id!r}: {reason}")


class LatentNotFound(StageError, KeyError):
    """The ID never existed in this store."""

    def __init__(self, latent_id: str) -> None:
        self.latent_id = latent_id
        super().__init__(f"latent {latent_id} not found: no such latent in this store")

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return self.args[0]


class LatentExpired(StageError):
    """The latent existed but its TTL ran out and it was collected (or is due)."""

    def __init__(self, latent_id: str, expired_at: datetime) -> None:
        self.latent_id = latent_id
        self.expired_at = expired_at
        super().__init__(f"latent {latent_id} expired at {expired_at.isoformat()}: regenerate it or pin it next time")


class LatentDeleted(StageError):
    """The latent existed but was deleted explicitly (or evicted for space)."""

    def __init__(self, latent_id: str, deleted_at: datetime, reason: str = "deleted") -> None:
        self.latent_id = latent_id
        self.deleted_at = deleted_at
        self.reason = reason
        super().__init__(f"latent {latent_id} was {reason} at {deleted_at.isoformat()}")


class LatentCorrupt(StageError):
    """The stored bytes do not match the recorded digest, or the file's format is not ours."""

    def __init__(self, latent_id: str, reason: str) -> None:
        self.latent_id = latent_id
        self.reason = reason
        super().__init__(f"latent {latent_id} is corrupt: {reason}")


class IncompatibleLatent(StageError):
    """A stored latent cannot feed the requested run (variant, latent space, shape, dtype, index)."""

    def __init__(self, latent_id: str, what: str, expected: object, actual: object) -> None:
        self.latent_id = latent_id
        self.what = what
        self.expected = expected
        self.actual = actual
        super().__init__(f"latent {latent_id} is incompatible: {what} expected {expected}, got {actual}")


class BundleError(StageError):
    """A bundle file is unreadable, of an unknown format, or fails its digests; nothing was imported."""


class StoreBusy(StageError):
    """The store's lock could not be taken in time (another process holds it)."""


class InvalidStageRequest(StageError, ValueError):
    """A request that is well-formed but cannot run (e.g. a t_start that leaves no step)."""


class DiffusionError(StageError):
    """The diffusion produced NaN/Inf or an all-zero latent."""


class AudioError(StageError):
    """Audio input that is unreadable, empty, too long or not audio; nothing was stored."""


class BackendNotFound(StageError):
    """No backend is registered under the requested name."""


class TransientError(StageError):
    """A failure that may pass on retry (storage I/O hiccup, device out of memory, a backend's
    transient fault). The task layer retries these with backoff; nothing else is retried."""


class BackendLoadError(StageError):
    """A registered backend could not be built: its optional extra is not installed, its
    checkpoint directory is missing or malformed, or its options are invalid. Nothing was loaded,
    and a retry cannot help, so the task layer fails fast."""


class AudioUnavailable(AudioError, TransientError):
    """An audio source that could not be fetched right now (timeout, connection failure, HTTP 408,
    429 or 5xx). It is still an ``AudioError`` (nothing was stored) but, being transient, the task
    layer retries it instead of failing the run on a network blip."""


class StorageError(StageError):
    """Storage failed at ``path`` (a file, directory, object or the store's index) for a reason that
    a retry does not fix by itself. Raised by ``prefect_acestep.stages.storage_errors``, which types
    every operating-system, SQLite and network error where the project touches storage (and by the
    atomic writer for a place that cannot hold files at all), so that the task layer can decide
    retries by type alone."""

    what = "storage failed"
    advice = "a retry will not help until the cause is fixed"

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{self.what} at {path}: {reason}; {self.advice}")

    def __reduce__(self) -> tuple[type[StorageError], tuple[str, str]]:  # Prefect pickles failures
        return type(self), (self.path, self.reason)


class StorageFull(StorageError):
    """No space left (or a quota or file-size limit reached) where the project writes."""

    what = "storage full"
    advice = (
        "free space there (collect the latent store's garbage, lower its max_bytes) or use another "
        "location; a retry will not help"
    )


class StoragePermission(StorageError):
    """This process may not write (or read) there: file permissions, a read-only filesystem, or a
    bucket's credentials and policy."""

    what = "permission denied"
    advice = (
        "give this process access there (file permissions, a read-only mount, or for a bucket its "
        "credentials and policy) or use another location; a retry will not help"
    )


class StorageUnavailable(StorageError, TransientError):
    """The storage did not answer this time: a dropped connection, a timeout, a throttled or failing
    server (HTTP 408, 429, 5xx), an I/O error of a network filesystem. Retried by the task layer."""

    what = "storage unavailable"
    advice = "this may pass, so the task layer retries it"


class PlannerUnavailable(BackendLoadError):
    """A run asked for planning (``thinking``, ``use_cot_*``, simple mode) and the backend's planner
    cannot be built: no planner for that backend, or the 5 Hz LM's folder is unset, missing or
    malformed. The message names the folder; nothing ran without the plan."""


class BudgetExceeded(InvalidStageRequest):
    """A request whose fields are each within bounds but whose product is not: the audio one
    stage makes (frames x batch) or the space its checkpoints take. The message states the
    budget and the setting that raises it; nothing ran."""
