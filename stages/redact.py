"""Secrets kept out of what the project records, logs and names: one scrubbing function for URLs.

A URL can carry a credential in two places: ``user:password@`` before the host, and a signed query
string (S3 and GCS presigned URLs, Azure SAS tokens, ``?token=...``). Every URL a user gives is
scrubbed before it is stored in a latent record, written to a log line or an error message, used
as a run name, or written beside an index: the userinfo is replaced by ``***`` and every query
value by ``***`` (the keys stay, so a reader still sees that the URL was signed). Scheme, host,
port and path stay, so a message still says where.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlsplit, urlunsplit

REDACTED = "***"
_URL_IN_TEXT = re.compile(r"\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>]+")


def scrub_url(url: str) -> str:
    """``url`` without credentials: userinfo and query values replaced by ``***``, fragment
    dropped. Text that is not a URL (a local path) comes back unchanged."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return f"<unparseable URL: {REDACTED}>"
    if not parts.scheme or not parts.netloc:
        return url
    userinfo, at, hostport = parts.netloc.rpartition("@")
    netloc = f"{REDACTED}@{hostport}" if at else hostport
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    query = "&".join(f"{key}={REDACTED}" for key, _ in pairs) if pairs else (REDACTED if parts.query else "")
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def scrub_text(text: str) -> str:
    """``text`` with every URL in it scrubbed (for messages of other libraries, which may quote
    the URL they were given)."""
    return _URL_IN_TEXT.sub(lambda match: scrub_url(match.group(0)), text)
