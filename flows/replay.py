"""Replay: re-run the exact params a stored latent recorded, or a branch of them with overrides."""

# Flow signatures hold real types, not strings: see the note in ``prefect_acestep.flows``.

from typing import Any

from prefect import flow

from prefect_acestep.flows.generate import run_custom
from prefect_acestep.flows.run_names import replay_run_name
from prefect_acestep.stages.conversions import params_to_custom
from prefect_acestep.stages.errors import InvalidStageRequest
from prefect_acestep.stages.forms import Unsettable
from prefect_acestep.stages.params import StageParams
from prefect_acestep.stages.results import StageResult
from prefect_acestep.tasks.blocks import AceLatentStore


@flow(
    name="acestep-replay",
    description="Re-run a stored latent's recorded params, optionally with overrides.",
    flow_run_name=replay_run_name,
)
def replay_flow(
    latent_id: str,
    overrides: Unsettable[dict[str, Any]] = None,
    store: Unsettable[str] = None,
    out_dir: Unsettable[str] = None,
) -> list[StageResult]:
    """Recompute the stage that made ``latent_id`` (its recorded effective params: drawn seed, source
    latent, schedule settings), bypassing the cache so the run really happens. With ``overrides``
    (e.g. ``{"seed": 7, "infer_method": "sde"}``) the run is a branch of the original.

    Args:
        latent_id: A stored final or checkpoint latent made by a stage.
        overrides: StageParams fields to change; Unset replays exactly.
        store: Name of a saved ACE Latent Store block; Unset uses ACE_LATENT_DIR / ACE_LATENT_TTL_HOURS.
        out_dir: Directory for the audio files; Unset uses ACE_AUDIO_DIR.
    """
    block = AceLatentStore.resolve(store)
    record = block.get_store().record(latent_id)
    if record.stage_type == "import":
        raise InvalidStageRequest(f"latent_id: {latent_id} is imported audio, not the output of a stage")
    params = StageParams.model_validate({**record.params, **(overrides if overrides is not None else {})})
    title = f"ACE-Step replay of {latent_id}" + ("" if not overrides else f" with {sorted(overrides)}")
    return run_custom(params_to_custom(params), store, out_dir, title, refresh_cache=True)
