"""What a planner is: the spec's "LLM phase 1", one question asked of every backend the same way.

A planner reads what the user wrote (caption, lyrics, the metas they set) and answers with the
song's plan: the metas it filled in, maybe a rewritten caption and a vocal language, and, for the
real model, the 5 Hz LM's audio codes that condition the DiT. The acestep backend's planner is the
5 Hz LM; the embedded backend's is a rule reader of the description. Both take a ``PlanRequest``
and give a ``Plan``, so simple mode and the stages need not know which one answered.

A plan is data, not a side effect: it is stored on every latent made from it, so resume, refine
and replay use the stored plan and never plan again, and the same request (seed included) to the
same planner gives the same plan, which is what lets Prefect cache the planning task.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from prefect_acestep.stages.params import MAX_SEED, LmSampling

Capability = Literal["metas", "caption", "language", "codes"]
"""What a planner can decide: the metas, a rewritten caption, the vocal language, audio codes."""


class PlannerIdentity(BaseModel):
    """Which planner made a plan: part of the plan, of every cache key over it, and of the record."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(description="Planner name, e.g. 'acestep-5hz-lm' or 'embedded-rules'.")
    variant: str = Field(description="Which model of that planner, e.g. the LM folder 'acestep-5Hz-lm-1.7B'.")
    weights_digest: str = Field(description="Digest of the planner's weights ('' for a rule planner).")


class PlanRequest(LmSampling):
    """Everything a plan depends on besides the planner: the text, the metas the user fixed, what
    the planner may decide, how the LM samples, and the seed."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    caption: str = Field("", description="The user's caption (simple mode: the description).")
    lyrics: str = Field("", description="The lyrics as the models read them ('[Instrumental]' when instrumental).")
    vocal_language: str = Field("unknown", description="The user's vocal language; 'unknown' lets the planner decide.")
    bpm: int | None = Field(None, description="User-set tempo, kept as given; None = the planner decides.")
    keyscale: str | None = Field(None, description="User-set key; None = the planner decides.")
    timesignature: str | None = Field(None, description="User-set time signature; None = the planner decides.")
    duration: float | None = Field(None, description="User-set duration in seconds; None = the planner decides.")
    metas: bool = Field(description="The planner fills the unset metas (upstream use_cot_metas).")
    caption_rewrite: bool = Field(description="The planner's caption replaces the user's (use_cot_caption).")
    language: bool = Field(description="The planner's language replaces 'unknown' (use_cot_language).")
    codes: bool = Field(description="The planner writes audio codes (upstream thinking).")
    seed: int = Field(ge=0, le=MAX_SEED, description="Seed of the planner's sampling.")

    @property
    def capabilities(self) -> frozenset[Capability]:
        """What this request asks the planner to decide."""
        asked = {"metas": self.metas, "caption": self.caption_rewrite, "language": self.language, "codes": self.codes}
        return frozenset(name for name, wanted in asked.items() if wanted)  # type: ignore[misc]


class Plan(BaseModel):
    """A planner's answer. ``metadata`` holds what it wrote, in upstream's CoT field names (bpm,
    caption, duration, keyscale, language, timesignature; a rule planner adds its own notes)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    planner: PlannerIdentity
    request: PlanRequest
    metadata: dict[str, Any] = Field(default_factory=dict, description="What the planner decided, by field.")
    audio_codes: list[int] = Field(default_factory=list, description="5 Hz codes; [] when none were written.")
    reasoning: str = Field("", description="The LM's chain-of-thought block as it wrote it ('' for rules).")

    def record_metadata(self) -> dict[str, Any]:
        """The plan as a latent records it (``lm_metadata``): everything but the codes, which the
        latent's params already hold as ``audio_code_string``."""
        return {**self.model_dump(mode="json", exclude={"audio_codes"}), "audio_code_count": len(self.audio_codes)}


@runtime_checkable
class Planner(Protocol):
    """Answers "plan this" for one backend. ``capabilities`` says what it can decide; a request for
    more is refused before any work (no silent partial plan)."""

    identity: PlannerIdentity
    capabilities: frozenset[Capability]

    def plan(self, request: PlanRequest) -> Plan:
        """The plan for ``request``; the same request always gives the same plan."""
