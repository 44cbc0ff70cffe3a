"""Prefect flows of prefect-acestep: pipeline, generate (custom), simple, replay, variations and gc.

The modules that define flows do not use ``from __future__ import annotations``: Prefect may run a
flow pickled by value (a flow served from a script), and there a string annotation cannot be
resolved, since the pickled function's globals hold only the names its body uses; so the flow
signatures are real types.

The flows load on first use (PEP 562), so that importing a submodule (the command line,
``prefect_acestep.flows.cli``) does not import Prefect first: the command line sets its environment
defaults before Prefect reads its settings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prefect_acestep.lazy import lazy_names

_FLOWS: dict[str, str] = {
    "gc_flow": "prefect_acestep.flows.maintenance",
    "generate_flow": "prefect_acestep.flows.generate",
    "pipeline_flow": "prefect_acestep.flows.pipeline",
    "replay_flow": "prefect_acestep.flows.replay",
    "simple_flow": "prefect_acestep.flows.simple",
    "variations_flow": "prefect_acestep.flows.variations",
}

__all__ = sorted(_FLOWS)

if TYPE_CHECKING:
    from prefect_acestep.flows.generate import generate_flow
    from prefect_acestep.flows.maintenance import gc_flow
    from prefect_acestep.flows.pipeline import pipeline_flow
    from prefect_acestep.flows.replay import replay_flow
    from prefect_acestep.flows.simple import simple_flow
    from prefect_acestep.flows.variations import variations_flow


__getattr__, __dir__ = lazy_names(__name__, _FLOWS, globals())
