"""The embedded default model (see backend.py) and its simple-mode planner."""

from prefect_acestep.stages.backends.embedded.backend import EmbeddedBackend
from prefect_acestep.stages.backends.embedded.planner import SimplePlan, plan

__all__ = ["EmbeddedBackend", "SimplePlan", "plan"]
