"""The meaning of the embedded model's 64 latent channels.

Channels 0-47 are pitched: 4 registers x 12 pitch classes (channel = 12 * register + pitch class),
so a chord is a set of channels and transposing is a rotation inside each register. Channels 48-63
are one-shot percussion and effect sounds, so a rhythm is a sparse pattern of hits over frames.
Everything else in the model (codec, templates, tracks, VQ) indexes channels through this module.
"""

from __future__ import annotations

from prefect_acestep.stages.geometry import LATENT_DIM

PITCH_CLASSES = 12
REGISTERS: tuple[str, ...] = ("bass", "low", "mid", "high")
REGISTER_OCTAVES: tuple[int, ...] = (2, 3, 4, 5)
"""Octave of each register's C (scientific pitch notation; C2 = 65.4 Hz)."""

PITCHED = len(REGISTERS) * PITCH_CLASSES

PERCUSSION: tuple[str, ...] = (
    "kick", "snare", "closed_hat", "open_hat", "clap", "low_tom", "high_tom", "ride",
    "shaker", "conga", "clave", "cowbell",
    "fx_bell", "fx_zap", "fx_burst", "fx_blip",
)
"""Names of channels 48-63, in channel order."""

if PITCHED + len(PERCUSSION) != LATENT_DIM:
    raise RuntimeError("the embedded channel layout must fill the latent exactly")

DRUM_KIT = tuple(range(PITCHED, PITCHED + 8))
HAND_PERCUSSION = tuple(range(PITCHED + 8, PITCHED + 12))
EFFECTS = tuple(range(PITCHED + 12, LATENT_DIM))


def pitched_channel(register: int, pitch_class: int) -> int:
    return PITCH_CLASSES * register + pitch_class % PITCH_CLASSES


def register_channels(register: int) -> tuple[int, ...]:
    return tuple(range(PITCH_CLASSES * register, PITCH_CLASSES * (register + 1)))


def percussion_channel(name: str) -> int:
    return PITCHED + PERCUSSION.index(name)


def midi_note(register: int, pitch_class: int) -> int:
    """MIDI number of a pitched channel (C4 = 60)."""
    return 12 * (REGISTER_OCTAVES[register] + 1) + pitch_class


def frequency(register: int, pitch_class: int) -> float:
    """Equal-tempered fundamental in Hz (A4 = 440 Hz)."""
    return 440.0 * 2.0 ** ((midi_note(register, pitch_class) - 69) / 12.0)
