"""The audio and latent geometry every model of the ACE-Step 1.5 latent space shares.

Audio is stereo at 48 kHz; the VAE turns each 1920-sample hop into one 64-channel latent frame (25
frames a second); the VQ bottleneck pools 5 frames into one code (5 Hz). Audio I/O, the loop and
every backend read these numbers from here; the real backend checks a checkpoint against them on
load. The module imports nothing else of the project.
"""

from __future__ import annotations

SAMPLE_RATE = 48_000
AUDIO_CHANNELS = 2
HOP_LENGTH = 1920
"""Audio samples per latent frame."""
FRAME_RATE = SAMPLE_RATE // HOP_LENGTH
"""Latent frames per second (25)."""
LATENT_DIM = 64
VQ_POOL = 5
"""Latent frames pooled into one VQ code (25 Hz -> 5 Hz)."""
MAX_FRAMES = 15_000
"""Longest latent upstream ACE-Step's handler accepts; also the length of the model's silence latent."""
MAX_DURATION_S = MAX_FRAMES / FRAME_RATE
"""Longest audio a stage makes or reads (600 s)."""
