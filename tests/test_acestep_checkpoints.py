"""The official ``checkpoints/`` folder as users download it, and identity from the weights.

A synthetic official layout is written from a tiny diffusers-layout checkpoint with the inverse of
the converter's renames (``official_layout.write_official_layout``); loading it must give the very
same outputs, the same identity, and share the VAE and text encoder between variants.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers", reason="the acestep extra is not installed: pip install 'prefect-acestep[acestep]'")

from safetensors.torch import load_file, save_file  # noqa: E402

from prefect_acestep.stages.backends.acestep import AceStepBackend  # noqa: E402
from prefect_acestep.stages.backends.acestep.digest import (  # noqa: E402
    SAMPLE_ELEMENTS,
    safetensors_tensor_digests,
    tensor_digest,
)
from prefect_acestep.stages.backends.acestep.identity import identity_of  # noqa: E402
from prefect_acestep.stages.backends.acestep.official_layout import (  # noqa: E402
    MODULE_PARAMETERS,
    diffusers_name,
    module_classes,
    official_name,
    write_official_layout,
)
from prefect_acestep.stages.backends.protocol import ConditionSpec  # noqa: E402
from prefect_acestep.stages.backends.registry import load_backend  # noqa: E402
from prefect_acestep.stages.engine.loop import LoopRequest, run_loop  # noqa: E402
from prefect_acestep.stages.errors import BackendLoadError  # noqa: E402

FRAMES = 20


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def converted(tiny_acestep: dict[str, Path]) -> dict[str, Path]:
    """Diffusers-layout tiny checkpoints of base and turbo (one VAE), as a conversion gives them."""
    return tiny_acestep


@pytest.fixture(scope="module")
def official(converted: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same weights as the official release lays them out: one checkpoints/ folder."""
    root = tmp_path_factory.mktemp("release") / "checkpoints"
    for family, folder in converted.items():
        write_official_layout(folder, root, family)
    return root


def test_the_release_layout_is_what_upstream_ships(official: Path) -> None:
    assert sorted(p.name for p in official.iterdir()) == [
        "Qwen3-Embedding-0.6B", "acestep-v15-base", "acestep-v15-turbo", "vae",
    ]  # fmt: skip
    assert sorted(p.name for p in (official / "acestep-v15-turbo").iterdir()) == [
        "config.json", "model.safetensors", "silence_latent.pt",
    ]  # fmt: skip
    keys = load_file(official / "acestep-v15-turbo" / "model.safetensors").keys()
    assert {key.split(".")[0] for key in keys} == {"decoder", "encoder", "tokenizer", "detokenizer", "null_condition_emb"}
    assert "decoder.proj_in.1.weight" in keys and "decoder.layers.0.self_attn.o_proj.weight" in keys
    assert "encoder.lyric_encoder.layers.0.self_attn.q_norm.weight" in keys
    silence = torch.load(official / "acestep-v15-turbo" / "silence_latent.pt", weights_only=True)
    assert silence.shape == (1, 64, 15_000)  # upstream's [1, C, T]


def test_module_parameters_are_the_diffusers_modules_arguments() -> None:
    """Resolving a layout reads configs through ``MODULE_PARAMETERS`` without importing diffusers."""
    import inspect

    for module, cls in module_classes().items():
        arguments = tuple(name for name in inspect.signature(cls.__init__).parameters if name != "self")
        assert MODULE_PARAMETERS[module] == arguments, module


def test_renames_round_trip() -> None:
    for module, name in [
        ("transformer", "proj_out_conv.bias"),
        ("transformer", "layers.3.cross_attn.to_out.0.weight"),
        ("condition_encoder", "null_condition_emb"),
        ("condition_encoder", "timbre_encoder.layers.0.self_attn.norm_k.weight"),
        ("audio_tokenizer", "quantizer.project_in.weight"),
        ("audio_token_detokenizer", "special_tokens"),
    ]:
        assert diffusers_name(official_name(module, name)) == (module, name)
    assert diffusers_name("decoder.rotary_emb.inv_freq") is None  # recomputed from the config
    with pytest.raises(BackendLoadError, match="'lm_head.weight' belongs to no ACE-Step module"):
        diffusers_name("lm_head.weight")


@pytest.mark.parametrize("family", ["base", "turbo"])
def test_official_folder_loads_bit_identically(family: str, converted: dict[str, Path], official: Path) -> None:
    direct = AceStepBackend(str(converted[family]))
    released = AceStepBackend(str(official), variant=family)
    assert released.identity == direct.identity
    source = direct.vae_encode(_tones(FRAMES))
    assert torch.equal(released.vae_encode(_tones(FRAMES)), source)
    guided = dict(guidance_scale=3.0) if family == "base" else {}
    runs = [
        dict(cond=ConditionSpec(task="text2music", caption="lofi piano", bpm=80), **guided),
        dict(cond=ConditionSpec(task="cover", caption="rock"), source=source, cover_strength=0.5, **guided),
    ]
    for fields in runs:
        request = LoopRequest(seeds=[3, 4], frames=FRAMES, variant=family, steps=4 if family == "base" else None, **fields)
        expected, got = run_loop(direct, request).x0, run_loop(released, request).x0
        assert torch.equal(got, expected), fields["cond"].task
        assert torch.equal(released.vae_decode(got), direct.vae_decode(expected))


def test_modules_equal_what_diffusers_own_loader_builds(converted: dict[str, Path], official: Path) -> None:
    from diffusers import AceStepTransformer1DModel
    from diffusers.pipelines.ace_step import AceStepConditionEncoder

    released = AceStepBackend(str(official), variant="base").components
    for ours, cls, sub in [
        (released.transformer, AceStepTransformer1DModel, "transformer"),
        (released.condition_encoder, AceStepConditionEncoder, "condition_encoder"),
    ]:
        theirs = cls.from_pretrained(str(converted["base"] / sub), local_files_only=True)
        public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
        assert public(ours.config) == public(theirs.config)
        expected = theirs.state_dict()
        assert ours.state_dict().keys() == expected.keys()
        assert all(torch.equal(value, expected[name]) for name, value in ours.state_dict().items())


def test_variants_share_one_vae_and_text_encoder(official: Path, converted: dict[str, Path]) -> None:
    base = AceStepBackend(str(official), variant="base")
    turbo = AceStepBackend(str(official), variant="turbo")
    assert base.components.vae is turbo.components.vae
    assert base.components.text_encoder is turbo.components.text_encoder
    assert base.components.tokenizer is turbo.components.tokenizer
    assert base.components.transformer is not turbo.components.transformer
    # Shared by content, not by path: the diffusers copy of the same VAE is the same module too.
    assert AceStepBackend(str(converted["turbo"])).components.vae is turbo.components.vae


def test_official_folder_through_the_registry_and_environment(official: Path, monkeypatch) -> None:
    backend = load_backend("acestep", checkpoint_dir=str(official), variant="turbo")
    assert backend.identity.variant == "turbo" and backend.layout.kind == "official"
    monkeypatch.setenv("ACESTEP_CHECKPOINT_DIR", str(official))
    assert AceStepBackend(variant="base").identity.variant == "base"


def test_neither_layout_is_refused_naming_what_is_missing(official: Path, tmp_path: Path) -> None:
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "notes.txt").write_text("not a model")
    with pytest.raises(BackendLoadError) as excinfo:
        AceStepBackend(str(stray))
    message = str(excinfo.value)
    for missing in ("vae/", "Qwen3-Embedding-0.6B/", "acestep-v15-<variant>/", "transformer/", "tokenizer/"):
        assert missing in message
    with pytest.raises(BackendLoadError, match="point at its parent checkpoints/ folder"):
        AceStepBackend(str(official / "acestep-v15-turbo"))
    with pytest.raises(BackendLoadError, match=r"variants \['base', 'turbo'\]; name the variant"):
        AceStepBackend(str(official))
    with pytest.raises(BackendLoadError, match=r"no acestep-v15-sft/ .* for variant 'sft'; it holds .*\['base', 'turbo'\]"):
        AceStepBackend(str(official), variant="sft")
    partial = shutil.copytree(official, tmp_path / "partial")
    shutil.rmtree(partial / "vae")
    (partial / "acestep-v15-base" / "silence_latent.pt").unlink()
    with pytest.raises(BackendLoadError, match=r"missing \['acestep-v15-base/silence_latent.pt', 'vae/config.json'\]"):
        AceStepBackend(str(partial), variant="base")


def test_a_weight_the_model_lacks_is_refused(official: Path, tmp_path: Path) -> None:
    broken = shutil.copytree(official, tmp_path / "broken")
    weights = broken / "acestep-v15-turbo" / "model.safetensors"
    tensors = load_file(weights)
    tensors["decoder.extra_gate.weight"] = torch.zeros(2)
    del tensors["decoder.norm_out.weight"]
    save_file(tensors, weights)
    with pytest.raises(BackendLoadError, match=r"does not fit transformer: missing \['norm_out.weight'\], unexpected \['extra_gate.weight'\]"):
        AceStepBackend(str(broken), variant="turbo")


def test_one_identity_for_one_checkpoint_wherever_and_however_laid_out(
    converted: dict[str, Path], official: Path, tmp_path: Path
) -> None:
    expected = identity_of(converted["turbo"])
    copies = [
        shutil.copytree(converted["turbo"], tmp_path / "a" / "turbo"),
        shutil.copytree(converted["turbo"], tmp_path / "b" / "elsewhere"),
        official,
        shutil.copytree(official, tmp_path / "c" / "checkpoints"),
    ]
    # What a converter leaves behind: the absolute path it ran in, and its own version.
    for index, root in enumerate(copies[:2]):
        config_path = root / "vae" / "config.json"
        config = json.loads(config_path.read_text())
        config.update(_name_or_path=f"/home/user{index}/convert/vae", _diffusers_version=f"0.4{index}.0")
        config_path.write_text(json.dumps(config))
    identities = {identity_of(root, "turbo") for root in copies}
    assert identities == {expected}
    assert AceStepBackend(str(copies[1])).identity == expected  # loading agrees with the pure function
    assert identity_of(official, "base").latent_space == expected.latent_space
    assert identity_of(official, "base").weights_digest != expected.weights_digest


def test_identity_follows_geometry_and_weights(converted: dict[str, Path], tmp_path: Path) -> None:
    base = identity_of(converted["base"])
    sliding = shutil.copytree(converted["base"], tmp_path / "sliding")
    config_path = sliding / "transformer" / "config.json"
    config = json.loads(config_path.read_text())
    config["sliding_window"] = 8  # same weights, other attention: other outputs
    config_path.write_text(json.dumps(config))
    assert identity_of(sliding).weights_digest != base.weights_digest
    retuned = shutil.copytree(converted["base"], tmp_path / "retuned")
    text_weights = retuned / "text_encoder" / "model.safetensors"
    tensors = load_file(text_weights)
    tensors["norm.weight"] = tensors["norm.weight"] * 1.01
    save_file(tensors, text_weights)
    assert identity_of(retuned).weights_digest != base.weights_digest
    assert identity_of(retuned).latent_space == base.latent_space


def test_tensor_digests_sample_large_tensors_by_value(tmp_path: Path) -> None:
    large = torch.randn(3 * SAMPLE_ELEMENTS + 17, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    path = tmp_path / "w.safetensors"

    def digest_of(tensor: torch.Tensor) -> str:
        save_file({"w": tensor}, path)
        ((name, digest),) = list(safetensors_tensor_digests(path))
        assert name == "w"
        return digest

    stored = digest_of(large)
    assert stored == tensor_digest(large) == digest_of(large.float())  # an exact fp32 copy: same weights
    for index in (0, large.numel() // 2, large.numel() - 1):  # each sampled window counts
        changed = large.clone()
        changed[index] += 1
        assert digest_of(changed) != stored
    assert digest_of(large.reshape(1, -1)) != stored  # the shape counts


def _tones(frames: int) -> torch.Tensor:
    time = torch.arange(frames * 1920) / 48_000
    wave = 0.3 * torch.sin(2 * torch.pi * 220 * time) + 0.2 * torch.sin(2 * torch.pi * 330 * time)
    return torch.stack([wave, wave]).unsqueeze(0)
