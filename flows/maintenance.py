"""Maintenance: the store's TTL and byte-budget collection, run on a schedule by a deployment."""

# Flow signatures hold real types, not strings: see the note in ``prefect_acestep.flows``.

from prefect import flow

from prefect_acestep.flows.run_names import gc_run_name
from prefect_acestep.stages.forms import Unsettable
from prefect_acestep.stages.store import GcReport
from prefect_acestep.tasks.blocks import AceLatentStore
from prefect_acestep.tasks.publishing import sending_artifacts
from prefect_acestep.tasks.store_tasks import gc_task


@flow(
    name="acestep-gc",
    description="Collect expired latents and evict to the byte budget (pins are kept).",
    flow_run_name=gc_run_name,
)
def gc_flow(store: Unsettable[str] = None) -> GcReport:
    """Remove expired latents (and, with a byte budget, evict checkpoints then finals, least recently
    used first); pinned latents and their ancestors are kept.

    Args:
        store: Name of a saved ACE Latent Store block; Unset uses ACE_LATENT_DIR / ACE_LATENT_TTL_HOURS.
    """
    with sending_artifacts():
        return gc_task(AceLatentStore.resolve(store))
