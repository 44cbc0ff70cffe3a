"""The embedded default model (see backend.py) and its simple-mode planner."""

from prefect_acestep.stages.backends.embedded.backend import EmbeddedBackend
from prefect_acestep.stages.backends.embedded.planner import RulePlanner, SimplePlan, plan

__all__ = ["EmbeddedBackend", "RulePlanner", "SimplePlan", "plan"]
