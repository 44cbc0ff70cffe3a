"""How the command line talks: tables and sentences for people, the same as JSON for scripts
(``--json``), JSON documents from the commands whose output is a record or a request, and one line
per typed error with a non-zero exit."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import typer
from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.table import Table

from prefect_acestep.stages.errors import StageError
from prefect_acestep.stages.results import StageResult
from prefect_acestep.tasks.artifacts import checkpoint_summary

console = Console(stderr=True)
EXIT_ERROR = 2


def to_jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list | tuple):
        return [to_jsonable(item) for item in value]
    if isinstance(value, dict):
        return {key: to_jsonable(item) for key, item in value.items()}
    return value


def document(value: Any) -> None:
    """Print ``value`` as JSON on stdout."""
    typer.echo(json.dumps(to_jsonable(value), indent=2, default=str))


def emit(value: Any, as_json: bool, human: Callable[[Any], None]) -> None:
    """Print ``value`` as JSON on stdout, or let ``human`` render it for a person."""
    if as_json:
        document(value)
    else:
        human(value)


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    view = Table(title=title)
    for column in columns:
        view.add_column(column, overflow="fold")
    for row in rows:
        view.add_row(*("-" if cell is None else str(cell) for cell in row))
    # A pipe or CI log has no width: rich would assume 80 columns and fold every latent ID.
    Console(width=None if sys.stdout.isatty() else 220).print(view)


RESULT_COLUMNS = ["#", "stage", "latent", "sample", "seed", "checkpoints", "audio"]


def result_rows(hops: Sequence[Sequence[StageResult]]) -> list[list[Any]]:
    """One ``RESULT_COLUMNS`` row per sample of each stage."""
    return [
        [index, result.params.stage_type, result.latent_id, result.sample_index, result.seed,
         checkpoint_summary(result), result.audio_path]
        for index, results in enumerate(hops)
        for result in results
    ]  # fmt: skip


def _first_line(error: BaseException) -> str:
    if isinstance(error, ValidationError):
        details = "; ".join(
            f"{'.'.join(str(part) for part in item['loc'])}: {item['msg']}" for item in error.errors()
        )
        return f"invalid request: {details}"
    return str(error).splitlines()[0] if str(error) else type(error).__name__


@contextmanager
def typed_errors() -> Iterator[None]:
    """A typed error (ours, or a request that fails validation) exits 2 with one line naming it."""
    try:
        yield
    except (StageError, ValidationError) as error:
        print(f"error: {type(error).__name__}: {_first_line(error)}", file=sys.stderr)
        raise typer.Exit(EXIT_ERROR) from None
