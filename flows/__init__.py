"""Prefect flows of prefect-acestep: pipeline, generate (custom), simple, replay and gc."""

from flows.generate import generate_flow
from flows.maintenance import gc_flow
from flows.pipeline import pipeline_flow
from flows.replay import replay_flow
from flows.simple import simple_flow
from flows.variations import variations_flow

__all__ = ["gc_flow", "generate_flow", "pipeline_flow", "replay_flow", "simple_flow", "variations_flow"]
