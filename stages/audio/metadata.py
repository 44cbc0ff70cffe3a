"""The stage params travel inside every written audio file, so a file alone can be restored.

They are stored as compact JSON in the file's ``comment`` tag (RIFF INFO ``ICMT`` in WAV, a Vorbis
comment in FLAC/OGG, ID3 in MP3), wrapped in an envelope ``{"prefect-acestep": {...}}`` so that a
foreign comment is never mistaken for ours. libsndfile reads WAV INFO strings only up to about
2 KB (longer ones come back empty although they were written whole), and lyrics easily exceed that,
so WAV comments are read from the RIFF chunks directly.

Measured with libsndfile 1.2.2, the largest comment each container keeps intact: WAV ~50 KB (beyond
that libsndfile writes a malformed INFO chunk), Opus ~50 KB, CAF ~16 KB, AIFF ~8 KB, W64 none;
FLAC, OGG/Vorbis and MP3 keep 100 KB and more. ``write_audio`` reads every comment back before
publishing the file, so these limits surface as errors, never as files missing their params.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import soundfile as sf

from prefect_acestep.stages.errors import AudioError

ENVELOPE_KEY = "prefect-acestep"
SOFTWARE = "prefect-acestep"
_ENVELOPE_PREFIX = '{"' + ENVELOPE_KEY + '":'


def encode_comment(metadata: Mapping[str, Any]) -> str:
    """Compact, ASCII-only, key-sorted JSON: deterministic bytes, and no encoding ambiguity in
    formats whose text tags have no declared charset."""
    try:
        return json.dumps(
            {ENVELOPE_KEY: dict(metadata)}, separators=(",", ":"), sort_keys=True, ensure_ascii=True, allow_nan=False
        )
    except (TypeError, ValueError) as exc:
        raise AudioError(f"audio metadata is not JSON-serialisable: {exc}") from exc


def decode_comment(comment: str, *, source: str) -> dict[str, Any]:
    """Our params from a comment; ``{}`` when the comment is absent or not ours.

    A comment that starts like our envelope but does not parse is damage, not a foreign tag.
    """
    if not comment.startswith(_ENVELOPE_PREFIX):
        return {}
    try:
        payload = json.loads(comment)[ENVELOPE_KEY]
    except (ValueError, KeyError, TypeError) as exc:
        raise AudioError(f"{source}: its prefect-acestep metadata is damaged: {exc}") from exc
    if not isinstance(payload, dict):
        raise AudioError(f"{source}: its prefect-acestep metadata is not a JSON object")
    return payload


def read_audio_metadata(path: str | Path) -> dict[str, Any]:
    """The params embedded by ``write_audio``; ``{}`` for files that carry none."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            is_riff_wave = fh.read(12)[8:12] == b"WAVE"
            if is_riff_wave:
                fh.seek(0)
                return decode_comment(_riff_info_comment(fh), source=str(path))
        with sf.SoundFile(path) as f:
            return decode_comment(f.comment, source=str(path))
    except (OSError, sf.LibsndfileError) as exc:
        raise AudioError(f"{path}: cannot read audio metadata: {exc}") from exc


def _riff_info_comment(fh: BinaryIO) -> str:
    """The ``ICMT`` string of a RIFF/WAVE file's ``LIST/INFO`` chunk, or ``""``.

    Walks chunk headers with seeks, so the (possibly huge) ``data`` chunk is never read.
    """
    header = fh.read(12)
    if len(header) < 12 or header[:4] != b"RIFF":
        return ""
    while True:
        chunk = fh.read(8)
        if len(chunk) < 8:
            return ""
        chunk_id, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
        body_start = fh.tell()
        if chunk_id == b"LIST" and size >= 4 and fh.read(4) == b"INFO":
            comment = _info_subchunk(fh.read(size - 4), b"ICMT")
            if comment is not None:
                return comment
        fh.seek(body_start + size + (size & 1))


def _info_subchunk(body: bytes, wanted: bytes) -> str | None:
    """One NUL-terminated text sub-chunk of an INFO list, decoded."""
    pos = 0
    while pos + 8 <= len(body):
        sub_id, size = body[pos : pos + 4], struct.unpack("<I", body[pos + 4 : pos + 8])[0]
        if sub_id == wanted:
            return body[pos + 8 : pos + 8 + size].rstrip(b"\x00").decode("utf-8", errors="replace")
        pos += 8 + size + (size & 1)
    return None
