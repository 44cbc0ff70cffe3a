"""Reading request files (JSON or YAML) into the request models."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel

from prefect_acestep.stages.errors import InvalidStageRequest

Model = TypeVar("Model", bound=BaseModel)


def read_request_file(path: Path) -> dict[str, Any]:
    """A mapping from a JSON or YAML file (JSON is YAML), or a typed error naming the file."""
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as error:
        raise InvalidStageRequest(f"{path}: cannot read the request file ({error.strerror})") from error
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
