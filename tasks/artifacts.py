"""What a person sees in the Prefect UI: a table per stage, a live progress bar per diffusion, and a
markdown summary per flow with the lineage chain, what changed at each hop, and where the audio is.

Builders (``stage_rows``, ``lineage_markdown``) are plain functions so they can be tested on their
output; the ``publish_*`` functions only queue that output for ``prefect_acestep.tasks.publishing``,
which sends it to the API in the background.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from prefect.artifacts import MarkdownArtifact, TableArtifact

from prefect_acestep.stages.engine.loop import StepInfo
from prefect_acestep.stages.params import StageParams
from prefect_acestep.stages.planning.codes import parse_audio_codes
from prefect_acestep.stages.results import StageResult
from prefect_acestep.tasks.publishing import Progress, publish, publisher

def key_values(values: Mapping[str, Any], empty: str) -> str:
    """``name=value, ...``, or ``empty`` when there are none."""
    return ", ".join(f"{name}={value}" for name, value in values.items()) if values else empty


def checkpoint_summary(result: StageResult) -> str | None:
    """``step: latent ID`` of each stored checkpoint, or None when the run stored none."""
    return ", ".join(f"{c.step}: {c.latent_id}" for c in result.checkpoints) if result.checkpoints else None


PLANNED_FIELDS = ("bpm", "keyscale", "timesignature", "duration", "language")
PLAN_CAPTION_CHARS = 120


def plan_cells(lm_metadata: dict[str, Any] | None) -> dict[str, str]:
    """The plan a latent was made from, as two table cells: who planned it, and what it decided."""
    if lm_metadata is None or "planner" not in lm_metadata:
        return {"planner": "none", "plan": "none"}
    planner, decided = lm_metadata["planner"], lm_metadata.get("metadata", {})
    parts = [f"{name}={decided[name]}" for name in PLANNED_FIELDS if name in decided]
    parts.append(f"codes={lm_metadata.get('audio_code_count', 0)}")
    if "caption" in decided:
        caption = str(decided["caption"])
        cut = caption if len(caption) <= PLAN_CAPTION_CHARS else caption[:PLAN_CAPTION_CHARS] + "…"
        parts.append(f"caption={cut!r}")
    return {"planner": f"{planner['name']}/{planner['variant']}", "plan": ", ".join(parts)}


def stage_rows(results: Sequence[StageResult]) -> list[dict[str, Any]]:
    """One row per sample (latent, seed, steps, checkpoints, timings, backend, audio), flattened
    for the UI's table view."""
    rows = []
    for result in results:
        checkpoints = checkpoint_summary(result)
        rows.append(
            {
                "stage": result.params.stage_type,
                "latent_id": result.latent_id,
                "sample": result.sample_index,
                "seed": result.seed,
                "steps": f"{result.start_step}..{result.total_steps}",
                "t_start": round(result.t_start, 4),
                "checkpoints": "none" if checkpoints is None else checkpoints,
                "diffusion_s": round(result.timings.get("diffusion", 0.0), 3),
                "total_s": round(sum(result.timings.values()), 3),
                "backend": f"{result.backend.name}/{result.backend.variant}",
                **plan_cells(result.lm_metadata),
                "audio": "not decoded" if result.audio_path is None else result.audio_path,
            }
        )
    return rows


def changed_params(before: StageParams | None, after: StageParams) -> dict[str, Any]:
    """The params that differ from the previous hop (all non-default ones for the first)."""
    reference = StageParams.model_validate({"stage_type": "generate"}) if before is None else before
    old, new = reference.model_dump(mode="json"), after.model_dump(mode="json")
    skip = {"src_latent_id", "src_stage", "src_audio_id"}
    changed = {name: value for name, value in new.items() if name not in skip and old.get(name) != value}
    if "audio_code_string" in changed:  # thousands of tokens: the count says enough in a summary
        changed["audio_code_string"] = f"{len(parse_audio_codes(after.audio_code_string))} codes"
    return changed


def lineage_markdown(title: str, hops: Sequence[Sequence[StageResult]], audio_dir: str | None) -> str:
    """The flow summary: one line per hop, the latent chain, the changed params, the audio files."""
    lines = [f"# {title}", "", "| # | stage | latent | from | seed | changed params | audio |", "|---|---|---|---|---|---|---|"]
    previous: StageParams | None = None
    for index, results in enumerate(hops):
        first = results[0]
        params = first.params
        source = params.src_latent_id if params.src_latent_id is not None else params.src_audio_id
        changes = key_values(changed_params(previous, params), empty="-")
        audio = "<br>".join(r.audio_path for r in results if r.audio_path is not None) or "-"
        seeds = ", ".join(str(r.seed) for r in results)
        lines.append(
            f"| {index} | {params.stage_type} | `{first.latent_id}` | {f'`{source}`' if source else 'noise'} "
            f"| {seeds} | {changes} | {audio} |"
        )
        previous = params
    chain = " → ".join(f"`{results[0].latent_id}`" for results in hops)
    lines += ["", f"**Lineage:** {chain}"]
    if audio_dir is not None:
        lines += ["", f"**Audio files:** `{audio_dir}`"]
    return "\n".join(lines)


def publish_stage_table(results: Sequence[StageResult]) -> None:
    stage = results[0].params.stage_type
    publish(
        TableArtifact(
            table=stage_rows(results),
            description=f"{stage} stage: latents, seeds, steps, checkpoints, timings and the plan (LM metadata)",
        )
    )


def publish_summary(title: str, hops: Sequence[Sequence[StageResult]], audio_dir: str | None, key: str) -> None:
    publish(MarkdownArtifact(markdown=lineage_markdown(title, hops, audio_dir), key=key, description=title))


PROGRESS_INTERVAL_S = 0.5
"""Least time between two progress writes of one run (the last step is always written)."""


class DiffusionProgress:
    """A progress artifact that follows the diffusion steps of one stage run.

    Each write is an API call, and a fast backend finishes a step in milliseconds, so steps are
    handed to the publisher at most every ``PROGRESS_INTERVAL_S`` (faster than a person reads a
    progress bar), which sends only the newest of those still waiting; the first and the last step
    are always handed over, so a finished run shows 100%.
    """

    def __init__(self, description: str) -> None:
        self.description = description
        self.bar: Progress | None = None
        self._written_at = 0.0

    def __call__(self, info: StepInfo) -> None:
        now = time.monotonic()
        last = info.step + 1 == info.total_steps
        if self.bar is not None and not last and now - self._written_at < PROGRESS_INTERVAL_S:
            return
        percent = 100.0 * (info.step + 1) / info.total_steps
        text = f"{self.description}: step {info.step + 1}/{info.total_steps} (t={info.t:.3f})"
        if self.bar is None:
            self.bar = publisher().progress(percent, text)
        else:
            self.bar.update(percent, text)
        self._written_at = now
