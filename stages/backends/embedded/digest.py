"""The embedded model's "weights digest": a hash of every constant that defines what it generates
and how it decodes, so that a change of the prior or the codec changes the digest (and with it
every cache key that includes the backend identity). Bump MODEL_VERSION when the *logic* of the
model changes in a way its constants do not show."""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache

from prefect_acestep.stages.backends.embedded import channels, codec, condition, harmony, sounds, style, templates, tracks, vq

MODEL_VERSION = "embedded-music-1"


@lru_cache(maxsize=1)
def model_digest() -> str:
    constants = {
        "version": MODEL_VERSION,
        "channels": [channels.REGISTER_OCTAVES, channels.PERCUSSION],
        "sounds": [sounds.PITCHED_GAIN, sounds.PARTIALS, sounds.PERCUSSION_GAIN, sounds.NOISE_SEED, sounds.CROSSFADE],
        "codec": [codec.SLOTS, codec.PAN_ANGLES, codec.RIDGE],
        "harmony": [harmony.SCALES, harmony.CHORD_WEIGHTS, harmony.CADENCE_TONIC_WEIGHT, harmony.PHRASE_BARS,
                    harmony.PHRASE_TONIC_WEIGHT, harmony.DEGREE_WEIGHTS],
        "templates": [templates.PART_AMPLITUDE, templates.REST_WEIGHT, templates.RHYTHM_VARIANT_WEIGHTS,
                      templates.COVER_LEAD_PLAY],
        "condition": [condition.TEMPO_CANDIDATES, condition.METRE_CANDIDATES, condition.SIGMA, condition.GUIDED_BLEND],
        "style": [sorted(style.DEFAULT_PARTS), style.PART_WORDS, style.SUSTAIN_WORDS, style.PULSE_WORDS,
                  style.GROOVE_WORDS],
        "tracks": [tracks.TRACK_PART],
        "vq": [vq.LEVELS, vq.ENERGY_MAX, vq.HIT_MAX, vq.CHORD_LEVEL],
    }
    blob = json.dumps(constants, sort_keys=True, default=list).encode()
    return "sha256:" + hashlib.sha256(blob).hexdigest()
