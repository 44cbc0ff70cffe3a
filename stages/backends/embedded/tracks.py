"""Tracks as the embedded model knows them: each ACE-Step track name is one part of its
arrangement, and each part owns a fixed set of latent channels (a register or a percussion group).

So extract keeps a part's channels, lego and complete generate into them. Several track names share
a part where the model has no separate voice for them (it has four pitched registers):

    bass                                  -> "bass"        register 0 (octave 2)
    guitar, strings                       -> "low"         register 1 (octave 3)
    keyboard, synth, backing_vocals       -> "mid"         register 2 (octave 4)
    vocals, brass, woodwinds              -> "lead"        register 3 (octave 5, the melody)
    drums                                 -> "drums"       kick, snare, hats, claps, toms, ride
    percussion                            -> "percussion"  shaker, conga, clave, cowbell
    fx                                    -> "fx"          bell, zap, burst, blip one-shots
"""

from __future__ import annotations

import torch

from prefect_acestep.stages.backends.embedded.channels import DRUM_KIT, EFFECTS, HAND_PERCUSSION, register_channels
from prefect_acestep.stages.errors import InvalidStageRequest
from prefect_acestep.stages.geometry import LATENT_DIM
from prefect_acestep.stages.vocabulary import TRACK_NAMES

PARTS: tuple[str, ...] = ("bass", "low", "mid", "lead", "drums", "percussion", "fx")
PITCHED_PARTS: tuple[str, ...] = ("bass", "low", "mid", "lead")

PART_CHANNELS: dict[str, tuple[int, ...]] = {
    "bass": register_channels(0),
    "low": register_channels(1),
    "mid": register_channels(2),
    "lead": register_channels(3),
    "drums": DRUM_KIT,
    "percussion": HAND_PERCUSSION,
    "fx": EFFECTS,
}

TRACK_PART: dict[str, str] = {
    "bass": "bass",
    "guitar": "low",
    "strings": "low",
    "keyboard": "mid",
    "synth": "mid",
    "backing_vocals": "mid",
    "vocals": "lead",
    "brass": "lead",
    "woodwinds": "lead",
    "drums": "drums",
    "percussion": "percussion",
    "fx": "fx",
}

if set(TRACK_PART) != set(TRACK_NAMES):
    raise RuntimeError("every ACE-Step track name must map to a part of the embedded model")


def track_parts(track_names: tuple[str, ...]) -> frozenset[str]:
    unknown = [name for name in track_names if name not in TRACK_PART]
    if unknown:
        raise InvalidStageRequest(f"unknown track names {unknown}: expected some of {list(TRACK_NAMES)}")
    return frozenset(TRACK_PART[name] for name in track_names)


def parts_mask(parts: frozenset[str] | set[str], device: torch.device | str = "cpu") -> torch.Tensor:
    """Boolean ``[64]`` mask of the channels of ``parts``."""
    mask = torch.zeros(LATENT_DIM, dtype=torch.bool, device=device)
    for part in parts:
        mask[list(PART_CHANNELS[part])] = True
    return mask


def track_mask(track_names: tuple[str, ...], device: torch.device | str = "cpu") -> torch.Tensor:
    """Boolean ``[64]`` mask of the channels the named tracks live in."""
    return parts_mask(track_parts(track_names), device)
