"""Latent IDs: how the store makes them and how it checks one before building any path from it.

IDs are opaque to callers, but they end up as file names, so every ID that comes from outside
(``get``, ``pin``, parent IDs, bundles) is checked against a strict charset and length first. That
rules out ``../x``, absolute paths, NUL, separators and over-long names by construction instead of by
listing bad cases.
"""

from __future__ import annotations

import re
import secrets
import time

from prefect_acestep.stages.errors import InvalidLatentId

MAX_ID_LENGTH = 64
_ID_PATTERN = re.compile(r"[0-9a-z][0-9a-z_-]*")
# Crockford base32, lower case: no i, l, o, u, so IDs read back unambiguously.
_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"


def _base32(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        value, digit = divmod(value, 32)
        chars.append(_ALPHABET[digit])
    return "".join(reversed(chars))


def new_latent_id() -> str:
    """A fresh 26-character ID: 48-bit millisecond time, then 80 random bits.

    The time prefix makes file listings sort by creation, which keeps directory scans and debugging
    readable; the random part makes collisions between processes practically impossible without any
    coordination.
    """
    return _base32(time.time_ns() // 1_000_000, 10) + _base32(secrets.randbits(80), 16)


def validate_latent_id(latent_id: object) -> str:
    """Return ``latent_id`` if it is a well-formed ID, else raise ``InvalidLatentId`` naming why."""
    if not isinstance(latent_id, str):
        raise InvalidLatentId(latent_id, f"must be a string, got {type(latent_id).__name__}")
    if not latent_id:
        raise InvalidLatentId(latent_id, "empty")
    if len(latent_id) > MAX_ID_LENGTH:
        raise InvalidLatentId(latent_id[:80], f"longer than {MAX_ID_LENGTH} characters ({len(latent_id)})")
    if _ID_PATTERN.fullmatch(latent_id) is None:
        raise InvalidLatentId(
            latent_id, "only lower-case letters, digits, '-' and '_' are allowed, starting with a letter or digit"
        )
    return latent_id
