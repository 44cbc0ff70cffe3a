"""Reading request files (JSON or YAML) into the request models."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel

from prefect_acestep.stages.errors import InvalidStageRequest

Model = TypeVar("Model", bound=BaseModel)


MAX_REQUEST_BYTES = 1024 * 1024
"""A request file is a few KB (64 stages of lyrics and all take well under this)."""


def read_request_file(path: Path) -> dict[str, Any]:
    """A mapping from a JSON or YAML file (JSON is YAML), or a typed error naming the file. Only a
    regular file of at most ``MAX_REQUEST_BYTES`` is read (``/dev/zero`` would never end), as UTF-8
    text, and nesting too deep for the parser is refused rather than overflowing the stack."""
    try:
        if not stat.S_ISREG(path.stat().st_mode):  # before opening: opening a FIFO waits for a writer
            raise InvalidStageRequest(f"{path}: a request file must be a regular file")
        with path.open("rb") as f:
            raw = f.read(MAX_REQUEST_BYTES + 1)
    except OSError as error:
        raise InvalidStageRequest(f"{path}: cannot read the request file ({error.strerror})") from error
    if len(raw) > MAX_REQUEST_BYTES:
        raise InvalidStageRequest(f"{path}: a request file holds at most {MAX_REQUEST_BYTES} bytes")
    try:
        data = yaml.safe_load(raw.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise InvalidStageRequest(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from error
    except RecursionError:
        raise InvalidStageRequest(f"{path}: nested too deeply to be a request") from None
    except yaml.YAMLError as error:
        raise InvalidStageRequest(f"{path}: not valid JSON or YAML ({error})") from error
    if not isinstance(data, dict):
        raise InvalidStageRequest(f"{path}: a request file holds a mapping, got {type(data).__name__}")
    return data


def build_request(model: type[Model], path: Path | None, overrides: dict[str, Any]) -> Model:
    """``model`` from the file (if any) with the command line's flags on top (unset flags skipped)."""
    data = read_request_file(path) if path is not None else {}
    data.update({name: value for name, value in overrides.items() if value is not None})
    return model.model_validate(data)
