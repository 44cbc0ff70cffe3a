"""The ``prefect-acestep`` command line: flows from request files, the latent commands, decode,
restore/to-stage, JSON output that parses (``--json`` wherever the output is for people), and
one-line typed errors with a non-zero exit."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml
import typer
from typer.testing import CliRunner

from prefect_acestep.flows.cli import app
from prefect_acestep.stages.audio import load_audio, read_audio_metadata
from prefect_acestep.stages.records import LatentRecord
from prefect_acestep.stages.requests import GenerateRequest, PipelineStage
from prefect_acestep.stages.results import StageResult
from prefect_acestep.stages.store import GcReport, LatentStore

ROOT = Path(__file__).resolve().parents[1]
MISSING = "01dddddddddddddddddddddddd"

pytestmark = pytest.mark.usefixtures("fast_prefect", "latent_dir")


def cli(*args: str, code: int = 0, env: dict[str, str] | None = None):
    result = CliRunner().invoke(app, list(args), env=env)
    assert result.exit_code == code, (result.stdout, result.stderr, result.exception)
    return result


def as_json(*args: str):
    return json.loads(cli(*args, "--json").stdout)


def document(*args: str):
    """The JSON document a command prints without being asked (show, restore, to-stage)."""
    return json.loads(cli(*args).stdout)


@pytest.fixture
def pipeline_file(tmp_path: Path) -> Path:
    request = {
        "caption": "bright ukulele pop",
        "duration": 2.0,
        "stages": [
            {"stage_type": "generate", "seed": 1, "inference_steps": 4, "checkpoint_steps": [2]},
            {"stage_type": "refine", "src_stage": 0, "denoise": 0.5, "seed": 2, "inference_steps": 4},
        ],
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(request))
    return path


@pytest.fixture
def hops(pipeline_file: Path, tmp_path: Path) -> list[list[StageResult]]:
    payload = as_json("run", str(pipeline_file), "--out", str(tmp_path / "audio"))
    return [[StageResult.model_validate(item) for item in hop] for hop in payload]


def test_run_a_yaml_pipeline(hops: list[list[StageResult]], latent_dir: Path) -> None:
    assert [hop[0].params.stage_type for hop in hops] == ["generate", "refine"]
    latents = LatentStore(latent_dir)
    assert latents.record(hops[1][0].latent_id).parent_ids == [hops[0][0].latent_id]
    assert load_audio(hops[1][0].audio_path).shape == (2, 2 * 48_000)


def test_generate_from_a_request_file_with_flags_on_top(tmp_path: Path) -> None:
    request = tmp_path / "custom.json"
    request.write_text(json.dumps({"caption": "solo cello", "duration": 2.0, "inference_steps": 4, "seed": 5}))
    [result] = as_json("generate", "--request", str(request), "--seed", "9", "--out", str(tmp_path))
    assert StageResult.model_validate(result).seed == 9
    human = cli("generate", "--request", str(request), "--out", str(tmp_path)).stdout
    assert "generate" in human and "seed" in human


def test_latent_commands(hops: list[list[StageResult]], tmp_path: Path) -> None:
    generated, refined = hops[0][0], hops[1][0]
    checkpoint = generated.checkpoints[0].latent_id
    listed = [LatentRecord.model_validate(r) for r in as_json("latents", "ls")]
    assert {r.id for r in listed} == {generated.latent_id, refined.latent_id, checkpoint}
    assert [r["id"] for r in as_json("latents", "ls", "--stage", "refine")] == [refined.latent_id]
    assert [r["id"] for r in as_json("latents", "ls", "--checkpoints")] == [checkpoint]
    assert refined.latent_id in cli("latents", "ls").stdout

    shown = LatentRecord.model_validate(document("latents", "show", refined.latent_id))
    assert shown.parent_ids == [generated.latent_id] and shown.seeds == [2]

    assert as_json("latents", "pin", refined.latent_id) == {"pinned": refined.latent_id}
    assert document("latents", "show", refined.latent_id)["pinned"] is True
    assert [r["id"] for r in as_json("latents", "ls", "--pinned")] == [refined.latent_id]
    as_json("latents", "unpin", refined.latent_id)
    assert document("latents", "show", refined.latent_id)["pinned"] is False

    lineage = as_json("latents", "lineage", refined.latent_id)
    assert [r["id"] for r in lineage["ancestors"]] == [generated.latent_id]
    assert {r["id"] for r in as_json("latents", "lineage", generated.latent_id)["descendants"]} >= {refined.latent_id}

    bundle = tmp_path / "two.bundle"
    exported = as_json("latents", "export", generated.latent_id, refined.latent_id, "-o", str(bundle))
    assert Path(exported["bundle"]).exists()

    assert as_json("latents", "rm", checkpoint) == {"deleted": [checkpoint]}
    error = cli("latents", "show", checkpoint, code=2).stderr.strip()
    assert "\n" not in error and checkpoint in error and "deleted" in error

    report = GcReport.model_validate(as_json("latents", "gc"))
    assert report.removed == []

    other = {"ACE_LATENT_DIR": str(tmp_path / "other")}
    imported = json.loads(cli("latents", "import", str(bundle), "--json", env=other).stdout)
    assert sorted(imported["imported"]) == sorted([generated.latent_id, refined.latent_id])
    assert LatentStore(tmp_path / "other").record(refined.latent_id).digest == shown.digest


def test_decode_writes_a_readable_file(hops: list[list[StageResult]], tmp_path: Path) -> None:
    latent_id = hops[0][0].latent_id
    target = tmp_path / "listen" / "first.wav"
    [written] = as_json("decode", latent_id, "-o", str(target))
    assert Path(written) == target and load_audio(target).shape == (2, 2 * 48_000)
    assert read_audio_metadata(target)["latent_id"] == latent_id
    flac = tmp_path / "listen" / "first.flac"
    cli("decode", latent_id, "-o", str(flac))
    assert load_audio(flac).shape == (2, 2 * 48_000)


def test_restore_and_to_stage_print_models_that_validate(hops: list[list[StageResult]]) -> None:
    refined = hops[1][0]
    request = GenerateRequest.model_validate(document("restore", refined.latent_id))
    assert request.init_latent_id == refined.latent_id and request.stage_type == "refine"
    assert request.seed == 2 and request.t_start == refined.params.t_start
    stage = PipelineStage.model_validate(document("to-stage", refined.latent_id))
    assert stage.src_latent_id == refined.latent_id and stage.stage_type == "refine"
    checkpoint = hops[0][0].checkpoints[0].latent_id
    assert GenerateRequest.model_validate(document("restore", checkpoint)).t_start is None


DOCUMENT_COMMANDS = {"restore", "to-stage", "latents show"}


def test_json_is_asked_for_exactly_where_the_output_is_for_people() -> None:
    """``--json`` on every command that prints tables or sentences; none on the ones whose output
    already is a JSON document (a flag there could only be ignored)."""
    takes_json = {}
    groups = [("", typer.main.get_command(app))]
    while groups:
        prefix, group = groups.pop()
        for name, command in group.commands.items():
            if hasattr(command, "commands"):
                groups.append((f"{prefix}{name} ", command))
            else:
                takes_json[f"{prefix}{name}"] = any("--json" in param.opts for param in command.params)
    assert {name for name, has in takes_json.items() if not has} == DOCUMENT_COMMANDS
    assert len(takes_json) > len(DOCUMENT_COMMANDS) + 10


@pytest.mark.parametrize(
    "args",
    [
        ["latents", "show", MISSING],
        ["latents", "pin", MISSING],
        ["decode", MISSING, "-o", "x.wav"],
        ["restore", MISSING],
        ["generate", "--init-latent-id", MISSING, "--t-start", "0.5", "--duration", "2", "--steps", "4"],
    ],
    ids=["show", "pin", "decode", "restore", "generate"],
)
def test_a_missing_latent_exits_non_zero_with_one_line(args: list[str]) -> None:
    error = cli(*args, code=2).stderr.strip()
    assert error.count("\n") == 0 and MISSING in error and "not found" in error


def test_an_invalid_request_file_exits_non_zero_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"caption": "x", "stages": [{"stage_type": "refine", "inference_steps": 4}]}))
    error = cli("run", str(bad), code=2).stderr.strip()
    assert error.count("\n") == 0 and error.startswith("error: ValidationError: invalid request") and "refine" in error


def test_the_installed_command_runs_in_its_own_process(latent_dir: Path) -> None:
    command = str(ROOT / ".venv" / "bin" / "prefect-acestep")
    env = {**os.environ, "ACE_LATENT_DIR": str(latent_dir)}
    args = [command, "latents", "show", MISSING]
    missing = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and missing.stderr.strip().splitlines() == [
        f"error: LatentNotFound: latent {MISSING} not found: no such latent in this store"
    ]
