"""The command line given hostile or careless input (issue 14, item 7): every case is one line naming
a typed error and exit status 2, never a traceback, and nothing is left behind or replaced.

Before: a deeply nested YAML file, ``run /dev/zero``, a binary request file, an export into a
directory that cannot hold files, an export or decode onto a directory or a device, ``decode -o
existing_dir.wav`` (which also left ``existing_dir_0.wav`` behind) ended in tracebacks, and an export
onto a device node replaced the device. Each case runs the installed command in its own process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from prefect_acestep.stages.backends.registry import load_backend
from prefect_acestep.stages.store import LatentStore

ROOT = Path(__file__).resolve().parents[1]
COMMAND = str(Path(sys.executable).parent / "prefect-acestep")


@pytest.fixture(scope="module")
def place(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, dict[str, str]]:
    """A store with one decodable latent, and the environment the command runs in."""
    root = tmp_path_factory.mktemp("cli-hostile")
    store = LatentStore(root / "latents")
    latent_id = store.put(
        torch.randn(1, 50, 64, generator=torch.Generator().manual_seed(1)) * 0.3,
        stage_type="generate",
        backend=load_backend("embedded").identity,
    )
    store.close()
    env = {**os.environ, "ACE_LATENT_DIR": str(root / "latents"), "ACE_AUDIO_DIR": str(root / "audio"),
           "PREFECT_HOME": str(root.parent / f"{root.name}-prefect-home")}  # fmt: skip
    (root / "deep.yaml").write_text("a: " + "[" * 5000 + "]" * 5000 + "\n")
    (root / "binary.yaml").write_bytes(b"\xff\xfe\x00 not text")
    (root / "huge.yaml").write_text("caption: " + "x" * (2 * 1024 * 1024) + "\n")
    (root / "a-directory.wav").mkdir()
    (root / "a-directory.bundle").mkdir()
    os.mkfifo(root / "a-fifo.yaml")
    os.mkfifo(root / "a-fifo.bundle")
    os.mkfifo(root / "a-pipe.wav")
    return root, latent_id, env


def cli(place: tuple[Path, str, dict[str, str]], *args: str) -> tuple[int, str, str]:
    root, _, env = place
    done = subprocess.run([COMMAND, *args], cwd=root, env=env, capture_output=True, text=True, timeout=120)
    return done.returncode, done.stdout, done.stderr


CASES = {
    "deep YAML": (["run", "deep.yaml"], "InvalidStageRequest: deep.yaml: nested too deeply"),
    "run /dev/zero": (["run", "/dev/zero"], "InvalidStageRequest: /dev/zero: a request file must be a regular file"),
    "a FIFO as request": (["generate", "--request", "a-fifo.yaml"], "must be a regular file"),
    "binary request": (["run", "binary.yaml"], "InvalidStageRequest: binary.yaml: not UTF-8 text"),
    "a 2 MB request": (["run", "huge.yaml"], "holds at most 1048576 bytes"),
    "export into /proc": (["latents", "export", "{id}", "-o", "/proc/x.bundle"], "StorageError: storage failed at /proc"),
    "export onto a directory": (["latents", "export", "{id}", "-o", "a-directory.bundle"], "is a directory"),
    "export onto a FIFO": (["latents", "export", "{id}", "-o", "a-fifo.bundle"], "not a regular file"),
    "decode onto a directory": (["decode", "{id}", "-o", "a-directory.wav"], "a-directory.wav: is a directory"),
    "decode into /proc": (["decode", "{id}", "-o", "/proc/x.wav"], "StorageError: storage failed at /proc"),
    "import /dev/zero": (["latents", "import", "/dev/zero"], "BundleError: bundle /dev/zero refused: not a regular file"),
    "import a directory": (["latents", "import", "a-directory.bundle"], "BundleError"),
    "import a FIFO": (["latents", "import", "a-fifo.bundle"], "BundleError: bundle a-fifo.bundle refused: not a regular"),
    "decode onto a FIFO": (["decode", "{id}", "-o", "a-pipe.wav"], "not a regular file"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_input_is_one_typed_line_and_exit_2(place, case: str) -> None:
    root, latent_id, _ = place
    args, expected = CASES[case]
    before = sorted(path.name for path in root.iterdir())
    code, out, err = cli(place, *(arg.format(id=latent_id) for arg in args))
    assert code == 2, (out, err)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("error: ") and expected in err, err
    assert sorted(path.name for path in root.iterdir()) == before  # nothing left behind or replaced
    assert list((root / "a-directory.wav").iterdir()) == [] and (root / "a-fifo.bundle").is_fifo()
    assert (root / "a-pipe.wav").is_fifo()


def test_decode_to_a_chosen_file_name_writes_exactly_it(place) -> None:
    root, latent_id, _ = place
    code, out, err = cli(place, "decode", latent_id, "-o", "take.flac")
    assert code == 0, err
    assert out.strip() == "take.flac" and (root / "take.flac").is_file() and not (root / "take_0.flac").exists()
