"""Audio I/O of the framework-free layer: load, convert, write with embedded params, import.

Everything the rest of the project calls is re-exported here; the submodules each do one job.
"""

from prefect_acestep.stages.audio.convert import clamp, peak_guard, peak_normalize, to_stereo
from prefect_acestep.stages.audio.fetch import (
    DEFAULT_MAX_BYTES,
    DEFAULT_TIMEOUT_S,
    DEFAULT_TOTAL_TIMEOUT_S,
    fetch_audio,
    import_audio,
)
from prefect_acestep.stages.audio.io import WRITE_FORMATS, load_audio, write_audio
from prefect_acestep.stages.audio.network import FetchPolicy
from prefect_acestep.stages.audio.metadata import read_audio_metadata

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_TIMEOUT_S",
    "DEFAULT_TOTAL_TIMEOUT_S",
    "WRITE_FORMATS",
    "FetchPolicy",
    "clamp",
    "fetch_audio",
    "import_audio",
    "load_audio",
    "peak_guard",
    "peak_normalize",
    "read_audio_metadata",
    "to_stereo",
    "write_audio",
]
