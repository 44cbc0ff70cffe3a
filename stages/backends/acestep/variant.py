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

from prefect_acestep.stages.errors import BackendLoadError, InvalidStageRequest
from prefect_acestep.stages.vocabulary import FAMILIES, is_guided, refusal


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


def resolve_variant(config: Mapping[str, Any], requested: str | None, where: str) -> str:
    """The config's default variant, or ``requested`` if it fits the config's family."""
    family = family_of(config, where)
    allowed = FAMILIES[family].variants
    if requested is None:
        return allowed[0]
    if requested not in allowed:
        raise BackendLoadError(
            f"{where}: variant {requested!r} does not fit this {family} checkpoint; it can run as {list(allowed)}"
        )
    return requested


def check_task(variant: str, task: str) -> None:
    """Refuse a task the checkpoint was not trained for (upstream silently runs it badly)."""
    refused = refusal(variant, task)
    if refused is not None:
        raise InvalidStageRequest(f"task: {refused}")


def check_guidance(variant: str) -> None:
    """Refuse classifier-free guidance on a guidance-distilled checkpoint."""
    if not is_guided(variant):
        guided = " and ".join(name for name, family in FAMILIES.items() if family.guided)
        raise InvalidStageRequest(
            f"guidance: variant {variant!r} is guidance-distilled (no CFG); only {guided} checkpoints are guided"
        )
