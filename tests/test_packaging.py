"""The plugin installs as one package, ``prefect_acestep``, and nothing else.

The wheel is built from this checkout and installed by pip into a fresh virtual environment (its
dependencies are the development environment's, minus this project). From a directory that holds a
user's own ``flows``, ``tasks`` and ``stages`` packages (almost every Prefect project has a
``flows/``), a flow script runs ``pipeline_flow`` against a real Prefect server; the user's packages
keep their names, and the environment has no top-level ``stages`` of ours.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import tomllib
from pathlib import Path

import pytest
from prefect.settings import PREFECT_API_URL


ROOT = Path(__file__).resolve().parents[1]
TOP_FOLDERS = {"stages": "prefect_acestep.stages", "tasks": "prefect_acestep.tasks", "flows": "prefect_acestep.flows"}


def test_every_package_folder_is_packaged() -> None:
    """pyproject lists the packages by hand (setuptools cannot prefix found names): a folder with an
    ``__init__.py`` that is missing from that list would be missing from the wheel."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {"prefect_acestep"}
    for folder, package in TOP_FOLDERS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder).parts
            on_disk.add(".".join((package, *relative)))
    assert set(setuptools["packages"]) == on_disk
    assert setuptools["package-dir"] == {"prefect_acestep": "prefect_acestep", **{v: k for k, v in TOP_FOLDERS.items()}}


def test_importing_the_errors_loads_neither_torch_nor_prefect() -> None:
    code = (
        "import sys, prefect_acestep, prefect_acestep.stages.errors;"
        "print(sorted(m for m in ('torch', 'prefect') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd="/")
    assert out.stdout.strip() == "[]"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel of this checkout's files (tracked, and new ones git does not ignore), built from a copy:
    setuptools builds in ``./build`` and would otherwise pack modules left there by an earlier build."""
    source = tmp_path_factory.mktemp("source")
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, check=True, capture_output=True,
    ).stdout.decode().split("\0")  # fmt: skip
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-index", "--no-build-isolation", "-w", out, source],
        check=True,
        capture_output=True,
    )
    (built,) = out.glob("prefect_acestep-*.whl")
    return built


@pytest.fixture(scope="module")
def fresh_env(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new virtual environment with the wheel installed by pip. Its dependencies come from this
    environment's site-packages through a ``.pth`` file pointing at a folder of links to everything
    there except this project (its editable install included)."""
    base = tmp_path_factory.mktemp("fresh")
    env = base / "venv"
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", env], check=True)  # type: ignore[attr-defined]
    deps = base / "deps"
    deps.mkdir()
    site = Path(sysconfig.get_paths()["purelib"])
    for entry in site.iterdir():
        if entry.name.lower().startswith(("prefect_acestep", "__editable__", "prefect-acestep")):
            continue
        (deps / entry.name).symlink_to(entry)
    python = env / "bin" / "python"
    env_site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    (Path(env_site) / "dependencies.pth").write_text(f"{deps}\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index", wheel],
        check=True,
        capture_output=True,
    )
    return env


def test_the_wheel_holds_one_top_level_package(wheel: Path) -> None:
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names if not name.split("/")[0].endswith((".dist-info", ".data"))}
    assert tops == {"prefect_acestep"}
    for module in ("stages/errors.py", "stages/backends/embedded/prior.py", "tasks/blocks.py", "flows/cli/app.py"):
        assert f"prefect_acestep/{module}" in names


USER_SCRIPT = """
import json, sys
import flows, stages, tasks  # the user's own packages
assert (flows.OWNER, stages.OWNER, tasks.OWNER) == ("user", "user", "user"), "our package took a user's name"
from prefect_acestep import PipelineRequest, pipeline_flow

hops = pipeline_flow(
    PipelineRequest(
        caption="soft piano", keyscale="C major", bpm=90, duration=2.0,
        stages=[{"stage_type": "generate", "seed": 3, "inference_steps": 4},
                {"stage_type": "refine", "src_stage": 0, "denoise": 0.5, "seed": 4, "inference_steps": 4}],
    ),
    out_dir=sys.argv[1],
)
assert flows.OWNER == "user"
print(json.dumps([hop[0].latent_id for hop in hops] + [hops[-1][0].audio_path]))
"""


def test_a_user_project_with_its_own_flows_package_runs_pipeline_flow(
    fresh_env: Path, tmp_path: Path, fast_prefect: None
) -> None:
    project = tmp_path / "project"
    for name in ("flows", "tasks", "stages"):
        (project / name).mkdir(parents=True)
        (project / name / "__init__.py").write_text('OWNER = "user"\n')
    (project / "run.py").write_text(textwrap.dedent(USER_SCRIPT))
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PREFECT_", "PYTHON"))}
    env.update(
        PREFECT_API_URL=str(PREFECT_API_URL.value()),
        PREFECT_HOME=str(tmp_path / "home"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        ACE_LATENT_DIR=str(tmp_path / "latents"),
    )
    python = str(fresh_env / "bin" / "python")
    run = subprocess.run(
        [python, "run.py", str(tmp_path / "audio")], cwd=project, env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-4000:]
    generated, refined, audio = json.loads(run.stdout.strip().splitlines()[-1])
    assert generated != refined and Path(audio).is_file()

    elsewhere = subprocess.run(
        [python, "-c", "import importlib.util as u; print([u.find_spec(n) is None for n in ('stages', 'tasks', 'flows')])"],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert elsewhere.stdout.strip() == "[True, True, True]"

    entry_points = subprocess.run(
        [python, "-c", textwrap.dedent("""
            from importlib.metadata import entry_points
            print(sorted(f"{ep.group}:{ep.name}={ep.value}" for group in ("prefect.collections", "prefect_acestep.backends")
                         for ep in entry_points(group=group)))
            from prefect_acestep.tasks.blocks import AceLatentStore; print(AceLatentStore.get_block_type_slug())
        """)],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    listed, slug = entry_points.stdout.strip().splitlines()
    assert "prefect.collections:prefect_acestep=prefect_acestep.tasks.blocks" in listed
    assert "prefect_acestep.backends:embedded=prefect_acestep.stages.backends.embedded:EmbeddedBackend" in listed
    assert slug == "ace-latent-store"
    cli = subprocess.run([fresh_env / "bin" / "prefect-acestep", "--help"], env=env, capture_output=True, text=True)
    assert cli.returncode == 0 and "latents" in cli.stdout
