"""Links that open a deployment's run form already filled in: branch, resume and replay in one click.

Prefect's UI reads a run form's values from the page address
(``/deployments/deployment/<id>/run?parameters=<url-encoded JSON>``), replacing the deployment's
defaults, so a link can carry a whole request. For every stored latent a run shows:

- **resume**: the custom deployment's form with the latent's restored request
  (``conversions.restore``): a checkpoint continues exactly where it stopped;
- **branch**: the same with a new seed (-1 draws one). Resumed from a checkpoint, deterministic
  (ODE) sampling would ignore the seed and repeat the original, so a checkpoint's branch samples
  with SDE from there on;
- **add to pipeline**: the pipeline deployment's form with a one-stage pipeline that starts from the
  latent (``conversions.custom_to_pipeline``), to add stages to;
- **replay** (final latents): the replay deployment's form for the latent.

Finding the deployments costs two API calls per flow run (its flows' ids, then their deployments),
never one per stage; without a UI address (an ephemeral API) there are no links and no calls.
Building the links themselves reads the latents' records from the store (local metadata).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowFilter, FlowFilterId, FlowFilterName
from prefect.context import FlowRunContext
from prefect.utilities.urls import url_for

from prefect_acestep.stages.conversions import custom_to_pipeline, restore
from prefect_acestep.stages.records import LatentRecord

CUSTOM_FLOW, PIPELINE_FLOW, REPLAY_FLOW = "acestep-generate", "acestep-pipeline", "acestep-replay"
LINK_FLOWS: dict[str, str] = {
    "resume": CUSTOM_FLOW,
    "branch": CUSTOM_FLOW,
    "add to pipeline": PIPELINE_FLOW,
    "replay": REPLAY_FLOW,
}
"""Each link and the flow whose deployment's form it opens."""


def run_form_url(deployment_id: str, parameters: Mapping[str, Any]) -> str | None:
    """The UI address of a deployment's run form filled with ``parameters`` (None without a UI)."""
    page = url_for("deployment", obj_id=deployment_id)
    if page is None:
        return None
    return f"{page}/run?parameters={quote(json.dumps(parameters, separators=(',', ':')), safe='')}"


@dataclass(frozen=True)
class RunForms:
    """The deployments whose forms the links open (flow name -> deployment id), and the flow
    arguments every link carries along (the run's ``store`` and ``out_dir`` when it set them)."""

    deployments: Mapping[str, str] = field(default_factory=dict)
    carried: Mapping[str, Any] = field(default_factory=dict)

    def links(self, record: LatentRecord, sample_index: int = 0) -> dict[str, str]:
        """``{label: url}`` for one sample of a stored latent, for the forms that are deployed."""
        request = restore(record, sample_index=sample_index)
        branch = {"seed": -1}
        if record.is_checkpoint and request.infer_method == "ode":
            branch["infer_method"] = "sde"
        parameters: dict[str, dict[str, Any]] = {
            "resume": {"request": request.model_dump(mode="json")},
            "branch": {"request": request.model_copy(update=branch).model_dump(mode="json")},
            "add to pipeline": {"request": custom_to_pipeline(request).model_dump(mode="json")},
        }
        if not record.is_checkpoint:
            parameters["replay"] = {"latent_id": record.id}
        links = {}
        for label, values in parameters.items():
            deployment = self.deployments.get(LINK_FLOWS[label])
            url = None if deployment is None else run_form_url(deployment, {**values, **self.carried})
            if url is not None:
                links[label] = url
        return links


def find_run_forms(carried: Mapping[str, Any]) -> RunForms:
    """The deployments of the flows the links open. With several deployments of one flow, the one
    on the current run's work pool is preferred, then the first by name."""
    if url_for("deployment", obj_id="probe") is None:
        return RunForms(carried=carried)
    context = FlowRunContext.get()
    current = None if context is None or context.flow_run is None else context.flow_run.deployment_id
    with get_client(sync_client=True) as client:
        flows = client.read_flows(flow_filter=FlowFilter(name=FlowFilterName(any_=sorted(set(LINK_FLOWS.values())))))
        names = {flow.id: flow.name for flow in flows}
        found = client.read_deployments(flow_filter=FlowFilter(id=FlowFilterId(any_=list(names)))) if names else []
    pools = [d.work_pool_name for d in found if current is not None and d.id == current]
    chosen: dict[str, str] = {}
    for deployment in sorted(found, key=lambda d: (bool(pools) and d.work_pool_name != pools[0], d.name)):
        chosen.setdefault(names[deployment.flow_id], str(deployment.id))
    return RunForms(deployments=chosen, carried=carried)
