"""The embedded backend's planner (entry point ``embedded`` of ``prefect_acestep.planners``): the
embedded model's rule reader of a description behind the same ``Planner`` protocol as the 5 Hz LM.

It reads the caption as the description and decides the metas and a cleaned caption; it neither
detects a language nor writes audio codes, so a request for those is refused before any work. It
draws nothing at random: the seed does not change its plan.
"""

from __future__ import annotations

from typing import Any

from prefect_acestep.stages.backends.embedded.planner import PLANNER, plan
from prefect_acestep.stages.planning.protocol import Capability, Plan, PlannerIdentity, PlanRequest


class RulePlanner:
    """See the module docstring."""

    identity = PlannerIdentity(name="embedded-rules", variant=PLANNER, weights_digest="")
    capabilities: frozenset[Capability] = frozenset({"metas", "caption"})

    @classmethod
    def identity_for(cls, **options: Any) -> PlannerIdentity:
        """Its identity, which needs nothing built (the registry asks before building)."""
        return cls.identity

    def plan(self, request: PlanRequest) -> Plan:
        planned = plan(request.caption)
        metadata = {name: value for name, value in planned.lm_metadata.items() if name != "planner"}
        return Plan(planner=self.identity, request=request, metadata=metadata)
