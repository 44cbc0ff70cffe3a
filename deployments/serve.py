"""Serve the deployments of ``deployments/prefect.yaml`` from this process, without a work pool.

    .venv/bin/python deployments/serve.py            # all of them
    .venv/bin/python deployments/serve.py demo hourly

``prefect.yaml`` is the one description of the deployments (names, entrypoints, default
parameters, descriptions, tags, schedules); this script turns each entry into a runner deployment,
so the served set and the work-pool set cannot drift apart. Runs execute in subprocesses of this
process, with its environment (ACE_LATENT_DIR, ACE_AUDIO_DIR, ACE_GPU_CONCURRENCY_LIMIT).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml
from prefect import serve
from prefect.deployments.runner import EntrypointType, RunnerDeployment
from prefect.flows import load_flow_from_entrypoint
from prefect.schedules import Cron, Schedule

PREFECT_YAML = Path(__file__).with_name("prefect.yaml")


def load_entries(path: Path = PREFECT_YAML) -> list[dict[str, Any]]:
    """The ``deployments`` entries of a prefect.yaml."""
    return yaml.safe_load(path.read_text())["deployments"]


def cron_schedules(entry: dict[str, Any]) -> list[Schedule]:
    """The entry's schedules; only cron schedules are used in this project, anything else is an error
    rather than a schedule silently dropped."""
    schedules = []
    for spec in entry.get("schedules") or []:
        unknown = set(spec) - {"cron", "timezone", "active"}
        if "cron" not in spec or unknown:
            raise ValueError(f"deployment {entry['name']!r}: only cron schedules are supported, got {spec}")
        schedules.append(Cron(spec["cron"], timezone=spec.get("timezone"), active=spec.get("active", True)))
    return schedules


def runner_deployment(entry: dict[str, Any]) -> RunnerDeployment:
    """One prefect.yaml entry as a deployment served by this process."""
    flow = load_flow_from_entrypoint(entry["entrypoint"])
    return flow.to_deployment(
        name=entry["name"],
        description=entry.get("description"),
        tags=entry.get("tags"),
        parameters=entry.get("parameters"),
        schedules=cron_schedules(entry),
        entrypoint_type=EntrypointType.MODULE_PATH,
    )


def deployments(names: list[str] | None = None, path: Path = PREFECT_YAML) -> list[RunnerDeployment]:
    """The runner deployments for ``names`` (all when None); an unknown name is an error."""
    entries = load_entries(path)
    known = [entry["name"] for entry in entries]
    missing = sorted(set(names or []) - set(known))
    if missing:
        raise ValueError(f"no deployment named {missing} in {path}; known: {known}")
    return [runner_deployment(entry) for entry in entries if names is None or entry["name"] in names]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="deployment names from prefect.yaml (default: all)")
    args = parser.parse_args()
    serve(*deployments(args.names or None))


if __name__ == "__main__":
    main()
