"""The audio of a stored latent as a listener gets it, and the window of a repaint/lego stage.

Decoding is the VAE's, except for a repaint or lego result made with seams that splice (upstream's
balanced and conservative modes, see ``engine.repaint``): outside its window, the decoded audio is
replaced by the source's audio, crossfaded over a few milliseconds at each edge. Upstream splices
the user's original waveform; the store keeps latents, not waveforms, so the source's audio here is
the source latent's own audio (itself spliced when it is a repaint result, so a chain of repaints
keeps what was heard at each step). The same audio feeds files (``decode``) and the decode-encode
round trip that audio tasks make of a stored latent (``runner``).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from prefect_acestep.stages.backends.protocol import Backend
from prefect_acestep.stages.engine.context import window_geometry
from prefect_acestep.stages.engine.repaint import RepaintSeams, splice_waveform
from prefect_acestep.stages.errors import IncompatibleLatent
from prefect_acestep.stages.geometry import FRAME_RATE, HOP_LENGTH, SAMPLE_RATE
from prefect_acestep.stages.params import StageParams
from prefect_acestep.stages.records import LatentRecord
from prefect_acestep.stages.sources import as_float32
from prefect_acestep.stages.store import LatentStore
from prefect_acestep.stages.vocabulary import STAGES


def stage_window(params: StageParams, source_frames: int) -> tuple[float, float] | None:
    """A repaint/lego stage's window in seconds over a source of ``source_frames`` (``None``:
    the stage takes no window). An unset end is the source's end."""
    if STAGES[params.stage_type].window == "none":
        return None
    end = params.repainting_end if params.repainting_end is not None else source_frames / FRAME_RATE
    return (params.repainting_start, end)


def record_seams(record: LatentRecord) -> RepaintSeams | None:
    """The seams a final repaint/lego latent was made with (``None`` for other latents).

    Records from before seams were a stage param hold no ``repaint_mode``: they were made strict.
    """
    if record.stage_type not in STAGES or STAGES[record.stage_type].window == "none" or record.is_checkpoint:
        return None
    if "repaint_mode" not in record.params:
        return RepaintSeams("strict")
    params = StageParams.model_validate(record.params)
    return RepaintSeams(params.repaint_mode, params.repaint_strength)


def latent_audio(
    store: LatentStore, model: Backend, record: LatentRecord, latents: torch.Tensor, sample_indices: list[int]
) -> torch.Tensor:
    """``[B, 2, T * 1920]`` audio of ``latents`` (samples ``sample_indices`` of ``record``)."""
    return torch.stack(list(latent_audio_items(store, model, record, latents, sample_indices)))


def latent_audio_items(
    store: LatentStore, model: Backend, record: LatentRecord, latents: torch.Tensor, sample_indices: list[int]
) -> Iterator[torch.Tensor]:
    """The ``[2, T * 1920]`` audio of each of ``latents``' items in turn (samples
    ``sample_indices`` of ``record``), decoded one at a time, so that memory holds one item's audio
    whatever the batch (a batch of 64 at 600 s is about 15 GB of float32 audio at once)."""
    seams = record_seams(record)
    if seams is None or not seams.splices_waveform:
        for position in range(latents.shape[0]):
            yield model.vae_decode(latents[position : position + 1].to(model.device))[0]
        return
    source_record, source_index = _task_source(store, record)
    source = as_float32(source_record.id, store.get(source_record.id))[source_index : source_index + 1]
    source_audio = latent_audio(store, model, source_record, source, [source_index])[0]
    params = StageParams.model_validate(record.params)
    window = stage_window(params, source.shape[1])
    assert window is not None
    geo = window_geometry(source.shape[1], window)
    if geo.frames != latents.shape[1]:
        raise IncompatibleLatent(record.id, "frames of its repaint window", geo.frames, latents.shape[1])
    placed = source_audio.new_zeros(source_audio.shape[0], geo.frames * HOP_LENGTH)
    placed[:, geo.pad_left * HOP_LENGTH : geo.pad_left * HOP_LENGTH + source_audio.shape[-1]] = source_audio
    crossfade = int(seams.crossfade_seconds * SAMPLE_RATE)
    inside = (geo.start * HOP_LENGTH, geo.end * HOP_LENGTH)
    for position in range(latents.shape[0]):
        audio = model.vae_decode(latents[position : position + 1].to(model.device))[0]
        yield splice_waveform(audio, placed, inside, crossfade)


def _task_source(store: LatentStore, record: LatentRecord) -> tuple[LatentRecord, int]:
    """The source latent a repaint/lego result was made from, and which of its samples: a resumed
    run's parent is its checkpoint, whose own parent is the source."""
    if not record.parent_ids:
        raise IncompatibleLatent(record.id, "source of the repaint", "a parent latent", "none")
    parent = store.record(record.parent_ids[0])
    index = StageParams.model_validate(record.params).resume_sample_index
    if parent.is_checkpoint:
        if not parent.parent_ids:
            raise IncompatibleLatent(parent.id, "source of the checkpointed repaint", "a parent latent", "none")
        index = StageParams.model_validate(parent.params).resume_sample_index
        parent = store.record(parent.parent_ids[0])
    return parent, index
