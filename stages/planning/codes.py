"""The 5 Hz LM's audio codes as text: ``<|audio_code_N|>`` tokens, one per 5 latent frames.

Upstream passes codes around as this string (``GenerationParams.audio_codes``, the LM's output,
the per-audio params it returns), so it is also how a stage takes codes by hand
(``StageParams.audio_code_string``) and how a latent records the codes that conditioned it.
Upstream clamps out-of-range values and skips anything between the tokens; here a string that is
not purely code tokens (whitespace between them allowed) is an error, since a typo would
otherwise silently change the song.
"""

from __future__ import annotations

import re

CODES_PER_SECOND = 5
"""The LM writes one code per 5 latent frames (25 Hz / 5)."""
CODEBOOK_SIZE = 64_000
"""ACE-Step 1.5's FSQ codebook (levels 8, 8, 8, 5, 5, 5): codes are 0..63999."""
MAX_CODES = 3_000
"""600 s, the longest song upstream plans (DURATION_MAX) and the model runs (15000 frames)."""
MAX_CODE_STRING = MAX_CODES * len(f"<|audio_code_{CODEBOOK_SIZE - 1}|>") * 2
"""Bound on the text form (twice the densest string of MAX_CODES codes, leaving room for spaces)."""

_TOKEN = re.compile(r"<\|audio_code_(\d+)\|>")
_SEPARATOR = re.compile(r"\s*")


def code_token(code: int) -> str:
    return f"<|audio_code_{code}|>"


def format_audio_codes(codes: list[int]) -> str:
    """The upstream string form of ``codes``."""
    return "".join(code_token(code) for code in codes)


def parse_audio_codes(text: str) -> list[int]:
    """The codes in ``text``; raises ``ValueError`` naming the first thing that is not a code token."""
    codes: list[int] = []
    position = _SEPARATOR.match(text, 0).end()
    while position < len(text):
        token = _TOKEN.match(text, position)
        if token is None:
            raise ValueError(f"not an <|audio_code_N|> token at character {position}: {text[position:position + 30]!r}")
        code = int(token.group(1))
        if code >= CODEBOOK_SIZE:
            raise ValueError(f"audio code {code} at character {position} is outside 0..{CODEBOOK_SIZE - 1}")
        codes.append(code)
        position = _SEPARATOR.match(text, token.end()).end()
    if len(codes) > MAX_CODES:
        raise ValueError(f"{len(codes)} audio codes; at most {MAX_CODES} ({MAX_CODES // CODES_PER_SECOND} s)")
    return codes


def code_count(duration_s: float) -> int:
    """Codes the LM writes for ``duration_s`` seconds: upstream's ``int(duration * 5)``."""
    return int(duration_s * CODES_PER_SECOND)
