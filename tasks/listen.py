"""The markdown a person reads, hears and clicks for a decoded stage: players, spectrograms, where the
full-length audio is and how to make it again, and the run-form links of its latents.

Plain builders (no Prefect calls): the flows hand their output to ``tasks.artifacts``.

- ``stage_listen_markdown``: one stage, every previewed sample (the first ``PREVIEW_SAMPLES`` of a
  batch) with its player, picture and links;
- ``listen_section``: the pipeline summary's part: sample 0 of every decoded stage, one under the
  other, so their spectrograms share a time axis and can be compared stage to stage.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from pathlib import PurePath

from prefect_acestep.stages.results import StageResult
from prefect_acestep.tasks.previews import Preview

PREVIEW_SAMPLES = 4
"""Samples of a batch that get a player (batches go up to 64; the rest are listed by file)."""

Links = Mapping[tuple[str, int], Mapping[str, str]]
"""Run-form links per (latent ID, sample index): ``{label: url}`` (``tasks.run_links``)."""


def link_line(links: Mapping[str, str]) -> str:
    """``[resume](...) · [branch](...) · ...``, or "" when no form is deployed."""
    return " · ".join(f"[{label}]({url})" for label, url in links.items())


def decode_command(latent_id: str, sample_index: int, audio_path: str, store: str | None) -> str:
    """The ``prefect-acestep decode`` command that writes this sample's audio again."""
    parts = ["prefect-acestep", "decode", latent_id, "--sample", str(sample_index), "-o", PurePath(audio_path).name]
    if store is not None:
        parts += ["--store", store]
    return shlex.join(parts)


def _player(preview: Preview, label: str) -> list[str]:
    cut = "" if preview.previewed_s >= preview.duration_s else f" (first {preview.previewed_s:g} s)"
    return [
        f'<audio controls preload="metadata" title="{label}" src="{preview.audio_uri}"></audio>',
        "",
        f"![Spectrogram and waveform of {label}{cut}]({preview.picture_uri})",
    ]


def _where(result: StageResult, store_root: str, store: str | None) -> str:
    """Where the full-length file is, and the command that makes it again anywhere the store is
    reachable. A remote store's latent is named by its object URL (the audio file itself stays on
    the worker that decoded it)."""
    assert result.audio_path is not None
    where = f"Full length: `{result.audio_path}` on the worker"
    if "://" in store_root:
        where += f"; the latent is `{store_root}/latents/{result.latent_id}.safetensors`"
    command = decode_command(result.latent_id, result.sample_index, result.audio_path, store)
    return f"{where}. To write it again wherever the store is reachable: `{command}`"


def stage_title(index: int | None, result: StageResult) -> str:
    where = "" if index is None else f"Stage {index} · "
    return f"{where}{result.params.stage_type} · `{result.latent_id}`"


def stage_listen_markdown(
    index: int | None,
    results: Sequence[StageResult],
    previews: Mapping[int, Preview],
    links: Links,
    store_root: str,
    store: str | None,
) -> str:
    """A decoded stage's page: per previewed sample its player, picture, file and links; the other
    samples of a large batch by file; then the links of its checkpoints."""
    first = results[0]
    lines = [f"## {stage_title(index, first)}", ""]
    for result in results:
        sample = f"sample {result.sample_index} (seed {result.seed})"
        lines += [f"**{sample}**", ""]
        preview = previews.get(result.sample_index)
        if preview is not None:
            lines += [*_player(preview, f"{first.params.stage_type} {sample}"), ""]
        if result.audio_path is not None:
            lines += [_where(result, store_root, store), ""]
        line = link_line(links.get((result.latent_id, result.sample_index), {}))
        if line:
            lines += [line, ""]
    for checkpoint in first.checkpoints:
        line = link_line(links.get((checkpoint.latent_id, first.sample_index), {}))
        if line:
            lines += [f"Checkpoint at step {checkpoint.step} `{checkpoint.latent_id}`: {line}", ""]
    return "\n".join(lines).rstrip() + "\n"


def listen_section(
    hops: Sequence[Sequence[StageResult]], previews: Mapping[int, Mapping[int, Preview]], links: Links
) -> str:
    """Sample 0 of every decoded stage, one under the other, with its links (``previews``: stage ->
    sample -> preview)."""
    lines = ["## Listen", ""]
    for index, results in enumerate(hops):
        first = results[0]
        preview = previews.get(index, {}).get(first.sample_index)
        if preview is None:
            continue
        line = link_line(links.get((first.latent_id, first.sample_index), {}))
        lines += [f"**{stage_title(index, first)}**" + (f" · {line}" if line else ""), ""]
        lines += [*_player(preview, f"stage {index}"), ""]
    return "\n".join(lines).rstrip() + "\n" if len(lines) > 2 else ""
