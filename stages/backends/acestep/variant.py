"""Which variant a checkpoint is, and which tasks and guidance that variant allows.

A checkpoint's transformer config says ``model_version`` ("turbo", "base" or "sft") and
``is_turbo``. The turbo sampling flavours (turbo-shift1, turbo-shift3, turbo-continuous) ship with
the same ``model_version: turbo``, so the config alone cannot name them: a caller may name one
explicitly, and it must belong to the config's family. A config that says neither version nor
turbo is refused rather than guessed, since base and sft are sampled differently.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prefect_acestep.stages.backends.protocol import TaskKind
from prefect_acestep.stages.errors import BackendLoadError, InvalidStageRequest

FAMILIES: dict[str, tuple[str, ...]] = {
    "turbo": ("turbo", "turbo-shift1", "turbo-shift3", "turbo-continuous"),
    "base": ("base",),
    "sft": ("sft",),
}
"""Config ``model_version`` -> the variants such a checkpoint can be sampled as (first = default)."""

BASE_ONLY_TASKS: frozenset[TaskKind] = frozenset({"extract", "lego", "complete"})
"""Tasks only the base model was trained on (upstream ``TASK_TYPES_BASE`` minus ``TASK_TYPES_TURBO``,
offered for ``acestep-v15-base`` checkpoints only)."""

GUIDED_FAMILIES = frozenset({"base", "sft"})
"""Turbo checkpoints are guidance-distilled: they have no unconditional branch to guide with."""


def family_of(config: Mapping[str, Any], where: str) -> str:
    """The checkpoint family ("turbo", "base", "sft") from a transformer config."""
    version = config.get("model_version")
    if version is None:
        if config.get("is_turbo") is True:
            return "turbo"
        raise BackendLoadError(
            f"{where}: the transformer config has no model_version and is not turbo; "
            "cannot tell base from sft, so the variant cannot be derived"
        )
    if version not in FAMILIES:
        raise BackendLoadError(f"{where}: unknown model_version {version!r}; known: {sorted(FAMILIES)}")
    if (version == "turbo") != bool(config.get("is_turbo", version == "turbo")):
        raise BackendLoadError(f"{where}: model_version {version!r} contradicts is_turbo={config.get('is_turbo')!r}")
    return version


def resolve_variant(config: Mapping[str, Any], requested: str | None, where: str) -> tuple[str, str]:
    """(family, variant): the config's default variant, or ``requested`` if it fits the family."""
    family = family_of(config, where)
    allowed = FAMILIES[family]
    if requested is None:
        return family, allowed[0]
    if requested not in allowed:
        raise BackendLoadError(
            f"{where}: variant {requested!r} does not fit this {family} checkpoint; it can run as {list(allowed)}"
        )
    return family, requested


def check_task(family: str, variant: str, task: TaskKind) -> None:
    """Refuse a task the checkpoint was not trained for (upstream silently runs it badly)."""
    if task in BASE_ONLY_TASKS and family != "base":
        raise InvalidStageRequest(
            f"task: {task} needs the base model; this checkpoint is variant {variant!r} "
            f"(it supports {sorted({'text2music', 'repaint', 'cover'})})"
        )


def check_guidance(family: str, variant: str) -> None:
    """Refuse classifier-free guidance on a guidance-distilled checkpoint."""
    if family not in GUIDED_FAMILIES:
        raise InvalidStageRequest(
            f"guidance: variant {variant!r} is guidance-distilled (no CFG); only base and sft checkpoints are guided"
        )
