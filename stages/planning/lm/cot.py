"""The LM's chain-of-thought block: the song's metadata as YAML between ``<think>`` tags.

Written as upstream's ``_format_metadata_as_cot`` writes it (yaml, sorted keys, digits as numbers,
a ``4/4`` time signature as ``4``) and read as its ``parse_lm_output`` reads it: ``key: value``
lines, a value continued on indented lines, the caption's continuation lines joined by spaces.
"""

from __future__ import annotations

from typing import Any

import yaml

COT_FIELDS = ("bpm", "caption", "duration", "keyscale", "language", "timesignature")
"""Fields the block carries into phase 2 (upstream leaves ``genres`` out)."""
INTEGER_FIELDS = frozenset({"bpm", "duration"})
OPEN, CLOSE = "<think>", "</think>"


def format_cot(metadata: dict[str, Any]) -> str:
    """``<think>\\n{yaml}\\n</think>`` of the known fields that are set."""
    items: dict[str, Any] = {}
    for name in COT_FIELDS:
        value = metadata.get(name)
        if value is None:
            continue
        if name == "timesignature" and isinstance(value, str) and value.endswith("/4"):
            value = value.split("/")[0]
        if isinstance(value, str) and value.isdigit():
            value = int(value)
        items[name] = value
    body = yaml.dump(items, allow_unicode=True, sort_keys=True).strip() if items else ""
    return f"{OPEN}\n{body}\n{CLOSE}"


def parse_cot(text: str) -> dict[str, Any]:
    """The fields of the first ``<think>`` block in ``text`` (up to its last ``</think>``)."""
    start, end = text.find(OPEN), text.rfind(CLOSE)
    body = text[start + len(OPEN) : end] if 0 <= start < end else text
    fields: dict[str, list[str]] = {}
    current: str | None = None
    for line in body.split("\n"):
        if line.strip().startswith("<"):
            continue
        if line and not line[0].isspace() and ":" in line:
            key, value = line.split(":", 1)
            current = key.strip().lower()
            fields[current] = [value] if value.strip() else []
        elif line[:1] in (" ", "\t") and current is not None:
            fields[current].append(line)
    return {name: _value(name, lines) for name, lines in fields.items() if lines}


def _value(name: str, lines: list[str]) -> Any:
    if name == "caption":
        return " ".join(line.strip() for line in lines if line.strip())
    value = "\n".join(lines).strip()
    if name in INTEGER_FIELDS and value.isdigit():
        return int(value)
    return value
