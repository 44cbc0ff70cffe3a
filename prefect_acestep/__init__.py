"""prefect-acestep: ACE-Step 1.5 music-diffusion stages as Prefect tasks over persisted latent IDs.

The subpackages live at the repository's top level, as the design card lays it out (``stages/``,
``tasks/``, ``flows/``); ``pyproject.toml`` maps them under this one package, so the plugin never
claims a generic import name (``flows``, ``tasks``) in a user's environment:

- ``prefect_acestep.stages``: the framework-free core (never imports Prefect);
- ``prefect_acestep.tasks``: the Prefect tasks, the latent store block, the cache policy;
- ``prefect_acestep.flows``: the flows and the ``prefect-acestep`` command line.

The public names below are loaded on first use (PEP 562), so ``import prefect_acestep`` stays cheap:
torch and Prefect load only when a name that needs them is touched.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prefect_acestep.lazy import lazy_names

__version__ = "0.1.0"

_PUBLIC: dict[str, str] = {
    "pipeline_flow": "prefect_acestep.flows",
    "generate_flow": "prefect_acestep.flows",
    "simple_flow": "prefect_acestep.flows",
    "replay_flow": "prefect_acestep.flows",
    "variations_flow": "prefect_acestep.flows",
    "gc_flow": "prefect_acestep.flows",
    "AceLatentStore": "prefect_acestep.tasks.blocks",
    "LatentStore": "prefect_acestep.stages.store",
    "StageParams": "prefect_acestep.stages.params",
    "PipelineRequest": "prefect_acestep.stages.requests",
    "GenerateRequest": "prefect_acestep.stages.requests",
    "SimpleRequest": "prefect_acestep.stages.requests",
    "StageResult": "prefect_acestep.stages.results",
    "LatentRecord": "prefect_acestep.stages.records",
}
"""Public name -> the module that defines it."""

__all__ = sorted(_PUBLIC)

if TYPE_CHECKING:
    from prefect_acestep.flows import (
        gc_flow,
        generate_flow,
        pipeline_flow,
        replay_flow,
        simple_flow,
        variations_flow,
    )
    from prefect_acestep.stages.params import StageParams
    from prefect_acestep.stages.records import LatentRecord
    from prefect_acestep.stages.requests import GenerateRequest, PipelineRequest, SimpleRequest
    from prefect_acestep.stages.results import StageResult
    from prefect_acestep.stages.store import LatentStore
    from prefect_acestep.tasks.blocks import AceLatentStore


__getattr__, __dir__ = lazy_names(__name__, _PUBLIC, globals())
