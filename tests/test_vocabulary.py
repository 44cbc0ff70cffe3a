"""The stage vocabulary: its table says what upstream ACE-Step 1.5 does, everything that names a stage,
task or variant reads it, and the imports inside ``stages`` point down to it."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import get_args

import pytest

from prefect_acestep.stages.backends.acestep.prompt import INSTRUCTIONS
from prefect_acestep.stages.engine.variants import VARIANTS
from prefect_acestep.stages.vocabulary import (
    FAMILIES,
    MODEL_TASKS,
    MODEL_VARIANTS,
    STAGE_KINDS,
    STAGES,
    TASKS,
    StageKind,
    TaskKind,
    is_guided,
    refusal,
    runs,
)

STAGES_DIR = Path(__file__).resolve().parents[1] / "stages"
ALL = {"base", "sft", "turbo"}

EXPECTED = {
    # kind: (task, needs_source, context, window, tracks, families)
    "generate": ("text2music", False, "silence", "none", "none", ALL),
    "refine": ("text2music", True, "silence", "none", "none", ALL),
    "cover": ("cover", True, "codes", "none", "none", ALL),
    "repaint": ("repaint", True, "source", "required", "none", ALL),
    "extract": ("extract", True, "source", "none", "one", {"base"}),
    "lego": ("lego", True, "source", "optional", "one", {"base"}),
    "complete": ("complete", True, "source", "none", "any", {"base"}),
}
"""Upstream: extract, lego and complete are offered for the base checkpoint only
(``TASK_TYPES_BASE`` minus ``TASK_TYPES_TURBO``); cover conditions on the source's VQ codes."""


def test_the_stage_table() -> None:
    got = {
        kind: (s.task, s.needs_source, s.context, s.window, s.tracks, set(s.families)) for kind, s in STAGES.items()
    }
    assert got == EXPECTED
    assert STAGE_KINDS == tuple(EXPECTED)  # the order the run forms list them in


def test_the_variant_families() -> None:
    assert {name: family.variants for name, family in FAMILIES.items()} == {
        "base": ("base",),
        "sft": ("sft",),
        "turbo": ("turbo", "turbo-shift1", "turbo-shift3", "turbo-continuous"),
    }
    assert [v for v in MODEL_VARIANTS if is_guided(v)] == ["base", "sft"]
    assert tuple(VARIANTS) == MODEL_VARIANTS


def test_every_task_has_its_ace_step_instruction() -> None:
    assert set(INSTRUCTIONS) == set(MODEL_TASKS)


def test_derived_names() -> None:
    assert get_args(StageKind) == STAGE_KINDS
    assert get_args(TaskKind) == MODEL_TASKS == ("text2music", "cover", "repaint", "extract", "lego", "complete")
    assert set(TASKS) == {stage.task for stage in STAGES.values()}


@pytest.mark.parametrize("variant", MODEL_VARIANTS)
def test_refusal_names_the_variant_and_what_it_runs(variant: str) -> None:
    for task in MODEL_TASKS:
        message = refusal(variant, task)
        assert (message is None) == runs(variant, task)
        if message is not None:
            assert f"variant {variant!r}" in message and "text2music" in message
    assert refusal(variant, "remix") == f"unknown task 'remix'; known: {list(MODEL_TASKS)}"


def _project_imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module is not None:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {name.removeprefix("prefect_acestep.stages.") for name in names if name.startswith("prefect_acestep.")}


BOTTOM = ("errors", "vocabulary", "geometry", "processes", "redact", "storage_errors", "atomic")
ALLOWED: dict[str, tuple[str, ...]] = {
    # package (a folder of stages/): the stages modules its modules may import
    "vocabulary.py": (),
    "geometry.py": (),
    "errors.py": (),
    "processes.py": (),
    "redact.py": (),
    "storage_errors.py": ("errors", "redact"),
    "atomic.py": ("errors", "processes", "storage_errors"),
    "audio": (*BOTTOM, "audio."),
    "backends": (*BOTTOM, "backends."),
    "engine": (*BOTTOM, "backends.protocol", "backends.identity", "engine."),
    "records.py": (*BOTTOM, "backends.identity"),
}
"""Imports point down: the bottom imports nothing of the project; backends and audio import only
the bottom and themselves; the engine may import the backend protocol, never a backend; a latent's
record (which the store keeps) only names a backend identity."""


@pytest.mark.parametrize("part", sorted(ALLOWED))
def test_imports_point_down(part: str) -> None:
    root = STAGES_DIR / part
    files = [root] if root.is_file() else sorted(root.rglob("*.py"))
    assert files
    for path in files:
        for name in _project_imports(path):
            allowed = any(name == prefix or name.startswith(prefix if prefix.endswith(".") else prefix + ".")
                          for prefix in ALLOWED[part])
            assert allowed, f"{path.relative_to(STAGES_DIR)} imports {name}"
