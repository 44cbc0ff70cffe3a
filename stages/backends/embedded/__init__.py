"""The embedded default model (see backend.py) and its simple-mode planner."""

from stages.backends.embedded.backend import EmbeddedBackend
from stages.backends.embedded.planner import SimplePlan, plan

__all__ = ["EmbeddedBackend", "SimplePlan", "plan"]
