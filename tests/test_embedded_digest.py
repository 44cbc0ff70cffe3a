"""The embedded model's weights digest covers all of its code: every module that runs when the model
generates, decodes or plans is hashed, so a change there changes every cache key."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from prefect_acestep.stages.backends.embedded import EmbeddedBackend
from prefect_acestep.stages.backends.embedded.digest import PACKAGE, code_digest, model_digest, model_modules

EXERCISE = """
import json, sys
import torch
from prefect_acestep.stages.backends.embedded import EmbeddedBackend, plan
from prefect_acestep.stages.backends.protocol import ConditionSpec
from prefect_acestep.stages.vocabulary import MODEL_TASKS

model = EmbeddedBackend("base")
source = model.vae_encode(torch.rand(1, 2, 1920 * 10) - 0.5)
mask = torch.ones(1, 10)
for task in MODEL_TASKS:
    cond = model.encode_condition(ConditionSpec(task=task, caption="jazz piano", track_names=("bass",)), 1)
    context = model.make_context(source, mask)
    model.velocity(torch.randn(1, 10, 64), torch.tensor([0.5]), cond, context)
    model.velocity(torch.randn(1, 10, 64), torch.tensor([0.5]), model.null_condition(cond), context)
model.detokenize(model.tokenize(source), 10)
model.vae_decode(source)
plan("upbeat funk with slap bass, 110 bpm")
print(json.dumps(sorted(name for name in sys.modules if name.startswith("prefect_acestep"))))
"""
PACKAGE_ONLY = """
import json, sys
import prefect_acestep
print(json.dumps(sorted(name for name in sys.modules if name.startswith("prefect_acestep"))))
"""


def test_every_module_the_model_runs_is_in_the_digest() -> None:
    """A module left out would let its change return stale cached latents. The modules come from a
    fresh process that ran every task, the codec, the VQ bottleneck and the planner."""
    run = subprocess.run([sys.executable, "-c", EXERCISE], capture_output=True, text=True, check=True)
    loaded = set(json.loads(run.stdout))
    # Importing a module runs its parent packages' __init__ too; above the embedded package those
    # only name subpackages (the top package loads its lazy-names helper for that), so what they
    # load shapes no output.
    parents = {PACKAGE.rsplit(".", depth)[0] for depth in range(1, PACKAGE.count(".") + 1)}
    bare = subprocess.run([sys.executable, "-c", PACKAGE_ONLY], capture_output=True, text=True, check=True)
    package_only = set(json.loads(bare.stdout))
    covered = set(model_modules())
    assert {f"{PACKAGE}.prior", f"{PACKAGE}.observation", f"{PACKAGE}.planner"} <= covered
    assert package_only == {"prefect_acestep", "prefect_acestep.lazy"}
    assert loaded - parents - package_only - covered == set()


def test_every_file_of_the_package_is_in_the_digest() -> None:
    package_dir = Path(sys.modules[PACKAGE].__file__).parent
    files = {path.resolve() for path in package_dir.rglob("*.py")}
    assert files <= {path.resolve() for path in model_modules().values()}


def test_a_one_byte_change_anywhere_changes_the_digest(tmp_path: Path) -> None:
    modules = model_modules()
    copies = {}
    for name, path in modules.items():
        copies[name] = tmp_path / f"{name}.py"
        shutil.copyfile(path, copies[name])
    assert code_digest(copies) == model_digest()  # module names, not paths, enter the hash
    for name in (f"{PACKAGE}.prior", "prefect_acestep.stages.vocabulary"):
        original = copies[name].read_bytes()
        copies[name].write_bytes(original + b"\n")
        assert code_digest(copies) != model_digest(), name
        copies[name].write_bytes(original)


def test_the_digest_is_the_identity_weights_digest() -> None:
    assert EmbeddedBackend("turbo").identity.weights_digest == model_digest()
    assert model_digest().startswith("sha256:")
