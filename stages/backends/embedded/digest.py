"""The embedded model's "weights digest": a digest of its code.

The embedded model has no weight files: what it generates and how it decodes is fixed by its code
(the prior, the codec, the VQ bottleneck, the conditioning, the constants they use). So its digest
hashes the source of every module of this package and of every project module those import (the
shared geometry, vocabulary, protocol and errors), found by reading their import statements rather
than kept in a list: a change to any of them changes the backend identity, and with it every cache
key, so a cached latent of the old code is never returned for the new one.

Whole files are hashed, comments included: a change that leaves the outputs alone costs one
recomputation, where a missed change would return a stale latent. The diffusion loop is not part
of the digest: it is shared by every backend (the real model's weights digest cannot see it
either), and what it did is recorded with each latent (schedule, steps, seeds).

Module names, not paths, enter the hash, so an installed copy and a source checkout agree.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
from functools import lru_cache
from pathlib import Path

PROJECT = "prefect_acestep"
PACKAGE = __name__.rpartition(".")[0]


def model_modules() -> dict[str, Path]:
    """Module name -> source file of every module whose code shapes the model's outputs."""
    package_dir = Path(__file__).parent
    found: dict[str, Path] = {}
    pending = [
        ".".join((PACKAGE, *path.relative_to(package_dir).with_suffix("").parts)).removesuffix(".__init__")
        for path in sorted(package_dir.rglob("*.py"))
    ]
    while pending:
        name = pending.pop()
        if name in found:
            continue
        path = _source(name)
        if path is None:
            continue
        found[name] = path
        pending.extend(_project_imports(name, path))
    return dict(sorted(found.items()))


def code_digest(modules: dict[str, Path]) -> str:
    """sha256 over the name and source bytes of each module."""
    h = hashlib.sha256()
    for name in sorted(modules):
        source = modules[name].read_bytes()
        h.update(f"{name}\0{len(source)}\0".encode())
        h.update(source)
    return "sha256:" + h.hexdigest()


@lru_cache(maxsize=1)
def model_digest() -> str:
    return code_digest(model_modules())


def _source(name: str) -> Path | None:
    """The source file of module ``name``; None when ``name`` is not a module (an imported class)."""
    try:
        spec = importlib.util.find_spec(name)
    except ModuleNotFoundError:  # ``name`` is an attribute of a plain module
        return None
    if spec is None or spec.origin is None:
        return None
    if not spec.origin.endswith(".py"):
        raise RuntimeError(f"module {name} has no Python source ({spec.origin}): the embedded digest needs it")
    return Path(spec.origin)


def _project_imports(name: str, path: Path) -> list[str]:
    """Names of the project modules (and of their imported attributes) that module ``name`` imports."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_bytes(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = importlib.util.resolve_name("." * node.level + (node.module or ""), package)
            names.append(module)
            names.extend(f"{module}.{alias.name}" for alias in node.names)
    return [imported for imported in names if imported == PROJECT or imported.startswith(PROJECT + ".")]
