"""Planning (the spec's "LLM phase 1"): the planner protocol (``protocol``), its registry
(``registry``), the audio-code text form (``codes``), and how a plan becomes a stage's effective
params (``stage``). Nothing is imported here: ``stages.params`` uses ``codes`` while the other
modules build on ``stages.params``."""
