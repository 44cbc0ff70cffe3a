"""Prefect flows of prefect-acestep: pipeline, generate (custom), simple, replay and gc.

The modules that define flows do not use ``from __future__ import annotations``: Prefect may run a
flow pickled by value (a flow served from a script), and there a string annotation cannot be
resolved, since the pickled function's globals hold only the names its body uses; so the flow
signatures are real types.
"""

from prefect_acestep.flows.generate import generate_flow
from prefect_acestep.flows.maintenance import gc_flow
from prefect_acestep.flows.pipeline import pipeline_flow
from prefect_acestep.flows.replay import replay_flow
from prefect_acestep.flows.simple import simple_flow
from prefect_acestep.flows.variations import variations_flow

__all__ = ["gc_flow", "generate_flow", "pipeline_flow", "replay_flow", "simple_flow", "variations_flow"]
