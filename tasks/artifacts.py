"""What a person sees in the Prefect UI: a table per stage, a page per decoded stage to listen and
look (``tasks.listen``), a live progress bar per diffusion, and a markdown summary per flow with the
lineage chain, what changed at each hop (against each stage's source), every decoded stage's player
and picture, and run-form links for every latent (``tasks.run_links``).

Builders (``stage_rows``, ``lineage_markdown``, ``gc_markdown``, ``problems_markdown``) are plain
functions so they can be tested on their output; the ``publish_*`` functions only queue that output
for ``prefect_acestep.tasks.publishing``, which sends it to the API in the background. A stage costs
one table artifact, plus one markdown artifact when it is decoded, published once the stage is
decoded (so the table names its audio).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any
from uuid import UUID

from prefect.artifacts import MarkdownArtifact, TableArtifact

from prefect_acestep.stages.engine.loop import StepInfo
from prefect_acestep.stages.params import StageParams
from prefect_acestep.stages.planning.codes import parse_audio_codes
from prefect_acestep.stages.results import StageResult
from prefect_acestep.stages.store import GcReport
from prefect_acestep.tasks.listen import Links, link_line, listen_section
from prefect_acestep.tasks.previews import Preview
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


def stage_rows(results: Sequence[StageResult], links: Links | None = None) -> list[dict[str, Any]]:
    """One row per sample (latent, seed, steps, checkpoints, timings, backend, audio), flattened
    for the UI's table view, with the run-form links of its final latent and checkpoints."""
    found: Links = {} if links is None else links
    rows = []
    for result in results:
        checkpoints = checkpoint_summary(result)
        from_checkpoints = [
            f"step {c.step}: {link_line(found[(c.latent_id, result.sample_index)])}"
            for c in result.checkpoints
            if found.get((c.latent_id, result.sample_index))
        ]
        rows.append(
            {
                "stage": result.params.stage_type,
                "latent_id": result.latent_id,
                "links": link_line(found.get((result.latent_id, result.sample_index), {})) or "none",
                "sample": result.sample_index,
                "seed": result.seed,
                "checkpoints": "none" if checkpoints is None else checkpoints,
                "checkpoint links": "; ".join(from_checkpoints) if from_checkpoints else "none",
                "audio": "not decoded" if result.audio_path is None else result.audio_path,
                "steps": f"{result.start_step}..{result.total_steps}",
                "t_start": round(result.t_start, 4),
                "diffusion_s": round(result.timings.get("diffusion", 0.0), 3),
                "total_s": round(sum(result.timings.values()), 3),
                "backend": f"{result.backend.name}/{result.backend.variant}",
                **plan_cells(result.lm_metadata),
            }
        )
    return rows


SOURCE_FIELDS = frozenset({"src_latent_id", "src_stage", "src_audio_id"})
MUSIC_FIELDS = ("caption", "keyscale", "bpm", "timesignature", "duration")
"""What a listener hears as "the same song": a resume that changes one of these says so."""


def changed_params(before: StageParams | None, after: StageParams) -> dict[str, Any]:
    """The params that differ from ``before`` (all non-default ones when there is none)."""
    reference = StageParams.model_validate({"stage_type": "generate"}) if before is None else before
    old, new = reference.model_dump(mode="json"), after.model_dump(mode="json")
    changed = {name: value for name, value in new.items() if name not in SOURCE_FIELDS and old.get(name) != value}
    if "audio_code_string" in changed:  # thousands of tokens: the count says enough in a summary
        changed["audio_code_string"] = f"{len(parse_audio_codes(after.audio_code_string))} codes"
    return changed


def source_params(result: StageResult, sources: Mapping[str, StageParams]) -> StageParams | None:
    """The recorded params of the latent this stage read (``sources``: latent ID -> params), or
    None when it started from noise."""
    params = result.params
    source = params.src_latent_id if params.src_latent_id is not None else params.src_audio_id
    return None if source is None else sources.get(source)


def music_differences(before: StageParams, after: StageParams) -> str | None:
    """``caption 'a' (source: 'b'), bpm 100 (source: 96)`` for the music fields a stage changed."""
    changed = [
        f"{name} {getattr(after, name)!r} (source: {getattr(before, name)!r})"
        for name in MUSIC_FIELDS
        if getattr(after, name) != getattr(before, name)
    ]
    return ", ".join(changed) if changed else None


def lineage_markdown(
    title: str,
    hops: Sequence[Sequence[StageResult]],
    audio_dir: str | None,
    sources: Mapping[str, StageParams] | None = None,
    links: Links | None = None,
    previews: Mapping[int, Mapping[int, Preview]] | None = None,
) -> str:
    """The flow summary: one row per hop (its latent, seeds, run-form links), the latent chain, where
    each hop started and what it changed against its source (the latent it read: ``sources`` maps latent
    IDs to their recorded params; from noise, against the defaults), a note when a stage changes the
    music of its source latent, and every decoded stage's player and picture."""
    known: Mapping[str, StageParams] = {} if sources is None else sources
    found: Links = {} if links is None else links
    lines = [f"# {title}", "", "| # | stage | latent | seed | links |", "|---|---|---|---|---|"]
    changes, notes = [], []
    for index, results in enumerate(hops):
        first = results[0]
        params = first.params
        source = params.src_latent_id if params.src_latent_id is not None else params.src_audio_id
        seeds = ", ".join(str(r.seed) for r in results)
        line = link_line(found.get((first.latent_id, first.sample_index), {})) or "-"
        lines.append(f"| {index} | {params.stage_type} | `{first.latent_id}` | {seeds} | {line} |")
        before = source_params(first, known)
        origin = f"from `{source}`" if source is not None else "from noise"
        changed = key_values(changed_params(before, params), empty="nothing")
        changes.append(f"- {index} {params.stage_type} {origin}: {changed}")
        differences = None if before is None else music_differences(before, params)
        if differences is not None:
            notes.append(f"- Stage {index} changes the music of its source `{source}`: {differences}")
    chain = " → ".join(f"`{results[0].latent_id}`" for results in hops)
    lines += ["", f"**Lineage:** {chain}", "", "**Changed at each hop** (against its source):", "", *changes]
    if notes:
        lines += ["", "**Differs from its source:**", "", *notes]
    if audio_dir is not None:
        audio = [f"- {i}: `{r.audio_path}`" for i, hop in enumerate(hops) for r in hop if r.audio_path is not None]
        lines += ["", f"**Audio files** (in `{audio_dir}` on the worker):", "", *audio]
    listen = listen_section(hops, {} if previews is None else previews, found)
    if listen:
        lines += ["", listen]
    return "\n".join(lines)


def gc_markdown(report: GcReport, root: str) -> str:
    """What a gc removed and why, latent by latent, then the totals."""
    why = {"expired": "expired (its TTL ran out)", "evicted": "evicted (the store was over its byte budget)"}
    title = f"# Latent store gc: {len(report.removed)} removed, {report.bytes_freed} bytes freed"
    lines = [title, "", f"Store: `{root}`"]
    if report.removed:
        counts = {reason: sum(item.reason == reason for item in report.removed) for reason in why}
        lines += ["", ", ".join(f"{count} {reason}" for reason, count in counts.items() if count)]
        lines += ["", "| latent | why | when | size (bytes) |", "|---|---|---|---|"]
        lines += [
            f"| `{item.id}` | {why[item.reason]} | {item.at.isoformat(timespec='seconds')} | {item.size_bytes} |"
            for item in report.removed
        ]
    if report.orphans_removed:
        lines += ["", "Leftover files removed (temp files of crashed writers, files of deleted latents):", ""]
        lines += [f"- `{name}`" for name in report.orphans_removed]
    lines += ["", f"In use after gc: {report.bytes_in_use} bytes."]
    if report.over_budget:
        lines += ["", "Still over the byte budget: everything left is pinned or an ancestor of a pinned latent."]
    return "\n".join(lines)


def problems_markdown(title: str, lines: Sequence[str]) -> str:
    """A rejected request, one line per problem, as the run's artifact."""
    return "\n".join([f"# {title}: {len(lines)} problem(s), nothing ran", "", *(f"- {line}" for line in lines)])


def stage_log_line(index: int | None, results: Sequence[StageResult]) -> str:
    """What a stage made, in one log line: its latent IDs, checkpoint IDs and audio files."""
    first = results[0]
    where = f"stage {index} " if index is not None else ""
    checkpoints = checkpoint_summary(first)
    audio = ", ".join(r.audio_path for r in results if r.audio_path is not None)
    return (
        f"{where}{first.params.stage_type}: latent {first.latent_id} ({len(results)} sample(s), seeds "
        f"{', '.join(str(r.seed) for r in results)}); checkpoints: {'none' if checkpoints is None else checkpoints}; "
        f"audio: {audio if audio else 'not decoded'}"
    )


def publish_stage(
    results: Sequence[StageResult], task_run_id: UUID | None, links: Links, listen: str | None, key: str
) -> None:
    """A finished stage's table and, when it was decoded, its listen page (``key``), both shown with
    the stage's task run."""
    first = results[0]
    stage = first.params.stage_type
    publish(
        TableArtifact(
            table=stage_rows(results, links),
            description=f"{stage} stage: latents, seeds, steps, checkpoints, run-form links, timings and the plan (LM metadata)",
            task_run_id=task_run_id,
        )
    )
    if listen is not None:
        publish(
            MarkdownArtifact(
                markdown=listen,
                key=key,
                description=f"Listen: {stage} {first.latent_id} (player and spectrogram)",
                task_run_id=task_run_id,
            )
        )


def publish_markdown(markdown: str, key: str, description: str) -> None:
    publish(MarkdownArtifact(markdown=markdown, key=key, description=description))


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
