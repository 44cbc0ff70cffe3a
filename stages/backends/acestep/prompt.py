"""ACE-Step 1.5's text conditioning: the prompt (instruction, caption, metas) and the lyrics block.

The formats follow upstream exactly, since the model was trained on them and detects some tasks
(cover) from the instruction alone. Each task has one instruction, with and without the track names
it may carry; a new task adds its line here.
"""

from __future__ import annotations

from prefect_acestep.stages.backends.protocol import ConditionSpec

INSTRUCTIONS: dict[str, tuple[str, str]] = {
    "text2music": ("Fill the audio semantic mask based on the given conditions:",) * 2,
    "repaint": ("Repaint the mask area based on the given conditions:",) * 2,
    "cover": ("Generate audio semantic tokens based on the given conditions:",) * 2,
    "extract": ("Extract the {tracks} track from the audio:", "Extract the track from the audio:"),
    "lego": ("Generate the {tracks} track based on the audio context:", "Generate the track based on the audio context:"),
    "complete": ("Complete the input track with {tracks}:", "Complete the input track:"),
}  # fmt: skip
"""Task -> (instruction naming ``{tracks}``, instruction when no track is named)."""


def instruction(spec: ConditionSpec) -> str:
    """The task's instruction; named tracks are upper-cased and joined by `` | `` as upstream does."""
    if spec.task not in INSTRUCTIONS:
        raise ValueError(f"unknown task {spec.task!r}")
    with_tracks, without = INSTRUCTIONS[spec.task]
    tracks = " | ".join(name.upper() for name in spec.track_names)
    return with_tracks.format(tracks=tracks) if tracks else without


def metas_text(spec: ConditionSpec) -> str:
    """The metas block; unset values (None or "") are written ``N/A``."""

    def show(value: object) -> str:
        return "N/A" if value is None or value == "" else str(value)

    # Upstream (_dict_to_meta_string) writes whole seconds and ends the metas with a newline.
    duration = "N/A" if spec.duration_s is None else f"{int(spec.duration_s)} seconds"
    return (
        f"- bpm: {show(spec.bpm)}\n- timesignature: {show(spec.timesignature)}\n"
        f"- keyscale: {show(spec.keyscale)}\n- duration: {duration}\n"
    )


def prompt_text(spec: ConditionSpec) -> str:
    """What the text encoder reads: instruction, caption and metas."""
    return f"# Instruction\n{instruction(spec)}\n\n# Caption\n{spec.caption}\n\n# Metas\n{metas_text(spec)}<|endoftext|>\n"


def lyrics_text(spec: ConditionSpec) -> str:
    """What the lyric encoder reads: the language and the lyrics (``[Instrumental]`` for instrumentals)."""
    lyrics = "[Instrumental]" if spec.instrumental else spec.lyrics
    return f"# Languages\n{spec.vocal_language}\n\n# Lyric\n{lyrics}<|endoftext|>"
