"""The real-model backend on tiny random ACE-Step checkpoints built on disk (CPU, no download).

Every test loads its checkpoint through the same local-directory loader a real checkpoint uses;
nothing of ours is mocked. The loop tests drive the backend through the shared diffusion loop.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers", reason="the acestep extra is not installed: pip install 'prefect-acestep[acestep]'")
pytest.importorskip("transformers", reason="the acestep extra is not installed: pip install 'prefect-acestep[acestep]'")

from safetensors.torch import load_file, save_file  # noqa: E402

from prefect_acestep.stages.backends.acestep import AceStepBackend  # noqa: E402
from prefect_acestep.stages.backends.acestep.prompt import lyrics_text, prompt_text  # noqa: E402
from prefect_acestep.stages.backends.identity import BackendIdentity  # noqa: E402
from prefect_acestep.stages.backends.protocol import Backend, ConditionSpec  # noqa: E402
from prefect_acestep.stages.errors import BackendLoadError, InvalidStageRequest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FRAMES = 20

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def dirs(tiny_acestep: dict[str, Path]) -> dict[str, Path]:
    return tiny_acestep


@pytest.fixture(scope="module")
def base(dirs: dict[str, Path]) -> AceStepBackend:
    return AceStepBackend(str(dirs["base"]))


@pytest.fixture(scope="module")
def turbo(dirs: dict[str, Path]) -> AceStepBackend:
    return AceStepBackend(str(dirs["turbo"]))


@pytest.fixture(scope="module")
def source(base: AceStepBackend) -> torch.Tensor:
    """Latents of a real waveform (two tones) through the tiny VAE: [1, FRAMES, 64]."""
    n = FRAMES * 1920
    time = torch.arange(n) / 48_000
    wave = 0.3 * torch.sin(2 * math.pi * 220 * time) + 0.2 * torch.sin(2 * math.pi * 330 * time)
    return base.vae_encode(torch.stack([wave, wave]).unsqueeze(0))


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_safetensors(path: Path, key: str, change) -> None:  # noqa: ANN001
    tensors = load_file(path)
    tensors[key] = change(tensors[key]).contiguous()
    save_file(tensors, path)


# --- identity -----------------------------------------------------------------------------------


def test_identity_from_checkpoint_config(base: AceStepBackend, turbo: AceStepBackend) -> None:
    assert isinstance(base, Backend)
    assert (base.identity.name, base.identity.variant) == ("acestep", "base")
    assert (turbo.identity.name, turbo.identity.variant) == ("acestep", "turbo")
    # One shared VAE: base and turbo latents interchange; their weights do not.
    assert base.identity.latent_space == turbo.identity.latent_space
    assert base.identity.latent_space.startswith("acestep-v15-vae-")
    assert base.identity.weights_digest != turbo.identity.weights_digest
    assert base.dtype == torch.float32 and base.device == torch.device("cpu")


def test_turbo_flavours_are_named_explicitly(dirs: dict[str, Path]) -> None:
    assert AceStepBackend(str(dirs["turbo"]), variant="turbo-shift3").identity.variant == "turbo-shift3"
    with pytest.raises(BackendLoadError, match=r"variant 'base' does not fit this turbo checkpoint.*turbo-shift1"):
        AceStepBackend(str(dirs["turbo"]), variant="base")
    with pytest.raises(BackendLoadError, match=r"variant 'turbo' does not fit this base checkpoint"):
        AceStepBackend(str(dirs["base"]), variant="turbo")


def test_identity_for_reads_the_directory(dirs: dict[str, Path], base: AceStepBackend, turbo: AceStepBackend) -> None:
    assert AceStepBackend.identity_for(str(dirs["base"])) == base.identity
    assert AceStepBackend.identity_for(str(dirs["turbo"]), device="cpu", dtype="float32") == turbo.identity
    shift3 = AceStepBackend.identity_for(str(dirs["turbo"]), variant="turbo-shift3")
    assert shift3 == turbo.identity.model_copy(update={"variant": "turbo-shift3"})
    with pytest.raises(BackendLoadError, match=r"variant 'turbo' does not fit this base checkpoint"):
        AceStepBackend.identity_for(str(dirs["base"]), variant="turbo")
    with pytest.raises(BackendLoadError, match="is not a directory"):
        AceStepBackend.identity_for(str(dirs["base"] / "missing"))


def test_a_cache_key_identity_loads_no_model(dirs: dict[str, Path], base: AceStepBackend) -> None:
    """What the stage cache asks on a fresh worker: the registry's identity of the entry point
    backend, with the checkpoint directory from the environment, imports neither diffusers nor
    transformers (so no module is built and no weights are read beyond the digest's samples)."""
    script = (
        "import sys\n"
        "from prefect_acestep.stages.backends.registry import backend_identity\n"
        "identity = backend_identity('acestep', variant='base')\n"
        "print(sorted({'diffusers', 'transformers'} & set(sys.modules)), identity.model_dump_json())\n"
    )
    env = {**os.environ, "ACESTEP_CHECKPOINT_DIR": str(dirs["base"])}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env)
    loaded, identity = out.stdout.split(" ", 1)
    assert loaded == "[]"
    assert BackendIdentity.model_validate_json(identity) == base.identity


def test_digest_is_location_free_and_follows_the_weights(
    dirs: dict[str, Path], base: AceStepBackend, tmp_path: Path
) -> None:
    moved = _copy(dirs["base"], tmp_path / "moved")
    assert AceStepBackend(str(moved)).identity == base.identity

    weights = moved / "transformer" / "diffusion_pytorch_model.safetensors"
    _edit_safetensors(weights, "proj_in_conv.bias", lambda w: w + 1e-3)
    retuned = AceStepBackend(str(moved)).identity
    assert retuned.weights_digest != base.identity.weights_digest
    assert retuned.latent_space == base.identity.latent_space

    _edit_safetensors(moved / "vae" / "diffusion_pytorch_model.safetensors", "decoder.conv1.bias", lambda w: w + 1e-3)
    assert AceStepBackend(str(moved)).identity.latent_space != base.identity.latent_space


# --- loading errors -----------------------------------------------------------------------------


def test_bad_directories_are_typed_errors(dirs: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(BackendLoadError, match="is not a directory"):
        AceStepBackend(str(tmp_path / "absent"))
    other = _copy(dirs["base"], tmp_path / "other")
    (other / "model_index.json").write_text(json.dumps({"_class_name": "StableAudioPipeline"}))
    with pytest.raises(BackendLoadError, match="'StableAudioPipeline' pipeline, not AceStepPipeline"):
        AceStepBackend(str(other))
    shutil.rmtree(other / "text_encoder")
    (other / "model_index.json").unlink()
    with pytest.raises(BackendLoadError, match=r"diffusers-layout checkpoint missing \['text_encoder/config.json'\]"):
        AceStepBackend(str(other))
    with pytest.raises(BackendLoadError, match="dtype: unknown 'int8'"):
        AceStepBackend(str(dirs["base"]), dtype="int8")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_without_cuda_is_refused(dirs: dict[str, Path]) -> None:
    with pytest.raises(BackendLoadError, match="no CUDA device"):
        AceStepBackend(str(dirs["turbo"]), device="cuda")


def test_checkpoint_without_vq_loads_but_cannot_cover(dirs: dict[str, Path], tmp_path: Path) -> None:
    lean = _copy(dirs["turbo"], tmp_path / "lean")
    shutil.rmtree(lean / "audio_token_detokenizer")
    with pytest.raises(BackendLoadError, match="only one of"):
        AceStepBackend(str(lean))
    shutil.rmtree(lean / "audio_tokenizer")
    backend = AceStepBackend(str(lean))
    with pytest.raises(BackendLoadError, match="cover bottleneck cannot run"):
        backend.tokenize(torch.zeros(1, 10, 64))


def test_wrong_geometry_is_refused(dirs: dict[str, Path], tmp_path: Path) -> None:
    bad = _copy(dirs["base"], tmp_path / "bad")
    config_path = bad / "vae" / "config.json"
    config = json.loads(config_path.read_text())
    config["sampling_rate"] = 44_100
    config_path.write_text(json.dumps(config))
    with pytest.raises(BackendLoadError, match=r"vae.sampling_rate.*44100.*48000"):
        AceStepBackend(str(bad))


def test_placeholder_silence_is_refused_and_a_root_file_is_read(dirs: dict[str, Path], tmp_path: Path) -> None:
    old = _copy(dirs["base"], tmp_path / "old")
    weights = old / "condition_encoder" / "diffusion_pytorch_model.safetensors"
    _edit_safetensors(weights, "silence_latent", torch.zeros_like)
    with pytest.raises(BackendLoadError, match="all-zero placeholder"):
        AceStepBackend(str(old))
    raw = torch.randn(1, 64, 15_000)  # the upstream file's layout: [1, C, T]
    torch.save(raw, old / "silence_latent.pt")
    backend = AceStepBackend(str(old))
    assert torch.equal(backend.silence_latent(7), raw[0, :, :7].T)


def test_import_needs_no_extra_and_building_names_it() -> None:
    code = (
        "import sys\n"
        "sys.modules['diffusers'] = None\n"  # as if the extra were not installed
        "import prefect_acestep.stages.backends.acestep as pkg\n"
        "from prefect_acestep.stages.errors import BackendLoadError\n"
        "try:\n"
        "    pkg.AceStepBackend('/nonexistent')\n"
        "except BackendLoadError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "pip install 'prefect-acestep[acestep]'" in out.stdout


def test_entry_point_names_the_backend() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    target = project["entry-points"]["prefect_acestep.backends"]["acestep"]
    module, attr = target.split(":")
    assert getattr(__import__(module, fromlist=[attr]), attr) is AceStepBackend
    assert any(req.startswith("diffusers==") for req in project["optional-dependencies"]["acestep"])


# --- conditioning -------------------------------------------------------------------------------


def test_tokenizer_sees_the_reference_formats(base: AceStepBackend) -> None:
    spec = ConditionSpec(
        task="extract",
        caption="dark synthwave",
        instrumental=True,
        bpm=96,
        keyscale="A minor",
        timesignature="4",
        duration_s=12.5,
        track_names=("vocals", "backing_vocals"),
    )
    cond = base.encode_condition(spec, 1)
    decode = base.components.tokenizer.decode
    assert decode(cond.prompt_ids) == (
        "# Instruction\nExtract the VOCALS | BACKING_VOCALS track from the audio:\n\n"
        "# Caption\ndark synthwave\n\n"
        "# Metas\n- bpm: 96\n- timesignature: 4\n- keyscale: A minor\n- duration: 12 seconds\n<|endoftext|>\n"
    )
    assert decode(cond.lyric_ids) == "# Languages\nen\n\n# Lyric\n[Instrumental]<|endoftext|>"
    assert (cond.prompt_text, cond.lyrics_text) == (prompt_text(spec), lyrics_text(spec))


def test_condition_batches_and_follows_the_text(base: AceStepBackend) -> None:
    spec = ConditionSpec(task="text2music", caption="piano ballad", lyrics="[verse]\nla la")
    one = base.encode_condition(spec, 1).hidden_states
    three = base.encode_condition(spec, 3).hidden_states
    assert three.shape[0] == 3 and torch.equal(three[2], one[0])
    other = base.encode_condition(ConditionSpec(task="text2music", caption="drum solo", lyrics="[verse]\nla la"), 1)
    assert not torch.allclose(other.hidden_states[:, -4:], one[:, -4:])


def test_null_condition_is_the_learned_embedding(base: AceStepBackend, turbo: AceStepBackend) -> None:
    cond = base.encode_condition(ConditionSpec(task="text2music", caption="x"), 2)
    null = base.null_condition(cond)
    learned = base.components.condition_encoder.null_condition_emb
    assert null.hidden_states.shape == cond.hidden_states.shape
    assert torch.equal(null.hidden_states, learned.expand_as(cond.hidden_states))
    with pytest.raises(InvalidStageRequest, match="'turbo' is guidance-distilled"):
        turbo.null_condition(turbo.encode_condition(ConditionSpec(task="text2music"), 1))


@pytest.mark.parametrize("task", ["extract", "lego", "complete"])
def test_base_only_tasks(task: str, base: AceStepBackend, turbo: AceStepBackend) -> None:
    spec = ConditionSpec(task=task, track_names=("drums",))
    assert base.encode_condition(spec, 1).hidden_states.shape[0] == 1
    with pytest.raises(InvalidStageRequest, match=rf"task: task '{task}' is not supported by variant 'turbo': only base"):
        turbo.encode_condition(spec, 1)
    for allowed in ("text2music", "repaint", "cover"):
        turbo.encode_condition(ConditionSpec(task=allowed), 1)


def test_overlong_caption_is_an_error(base: AceStepBackend) -> None:
    with pytest.raises(InvalidStageRequest, match="caption: .* at most 256"):
        base.encode_condition(ConditionSpec(task="text2music", caption="qz " * 400), 1)


# --- velocity, VAE, VQ --------------------------------------------------------------------------


def test_velocity_shapes_batching_and_inputs(base: AceStepBackend) -> None:
    gen = torch.Generator().manual_seed(0)
    spec = ConditionSpec(task="text2music", caption="jazz")
    cond, cond_one = base.encode_condition(spec, 2), base.encode_condition(spec, 1)
    for frames in (FRAMES, 131):  # under the 128-frame minimum (padded), and odd above it
        x = base.noise((2, frames, 64), gen)
        ctx = base.make_context(base.silence_latent(frames).expand(2, -1, -1), torch.ones(2, frames))
        t = torch.tensor([0.7, 0.7])
        v = base.velocity(x, t, cond, ctx)
        assert v.shape == (2, frames, 64) and v.dtype == torch.float32 and bool(torch.isfinite(v).all())
        single = base.velocity(x[1:], t[1:], cond_one, ctx[1:])
        assert torch.allclose(single[0], v[1], atol=1e-5)
        assert not torch.allclose(base.velocity(x, torch.tensor([0.3, 0.3]), cond, ctx), v)
        masked = base.make_context(base.silence_latent(frames).expand(2, -1, -1), torch.zeros(2, frames))
        assert not torch.allclose(base.velocity(x, t, cond, masked), v)
        assert torch.equal(base.velocity(x, t, cond, ctx), v)  # a pure function: resume relies on it


def test_frame_limits(base: AceStepBackend) -> None:
    with pytest.raises(InvalidStageRequest, match="1..15000"):
        base.silence_latent(15_001)
    with pytest.raises(InvalidStageRequest, match="1..15000"):
        base.make_context(torch.zeros(1, 15_001, 64), torch.ones(1, 15_001))
    with pytest.raises(InvalidStageRequest, match="chunk_mask"):
        base.make_context(torch.zeros(1, 10, 64), torch.ones(1, 11))


def test_vae_shapes_and_determinism(base: AceStepBackend) -> None:
    audio = torch.randn(1, 2, 3 * 1920 + 700, generator=torch.Generator().manual_seed(1)) * 0.1
    z = base.vae_encode(audio)
    assert z.shape == (1, 3, 64) and z.dtype == torch.float32
    assert torch.equal(base.vae_encode(audio), z)
    wave = base.vae_decode(z)
    assert wave.shape == (1, 2, 3 * 1920) and bool(torch.isfinite(wave).all())
    with pytest.raises(InvalidStageRequest, match="audio frames"):
        base.vae_encode(torch.zeros(1, 2, 1000))


def test_vq_bottleneck_matches_the_continuous_path(base: AceStepBackend, source: torch.Tensor) -> None:
    latents = source[:, :12].expand(2, -1, -1)
    codes = base.tokenize(latents)
    parts = base.components
    assert codes.shape == (2, 3, 1) and codes.dtype == torch.int64
    assert 0 <= int(codes.min()) and int(codes.max()) < parts.audio_tokenizer.quantizer.codebook_size
    hints = base.detokenize(codes, 12)
    assert hints.shape == (2, 12, 64)
    with torch.no_grad():  # upstream's cover path: quantized output straight into the detokenizer
        quantized, _ = parts.audio_tokenizer.tokenize(latents, parts.silence.unsqueeze(0))
        direct = parts.audio_token_detokenizer(quantized)[:, :12]
    assert torch.allclose(hints, direct, atol=1e-5)
    with pytest.raises(InvalidStageRequest, match="codes"):
        base.detokenize(codes, 16)


# --- end to end through the shared loop ---------------------------------------------------------

from prefect_acestep.stages.engine import loop  # noqa: E402
from prefect_acestep.stages.engine.context import window_geometry  # noqa: E402
from prefect_acestep.stages.engine.repaint import RepaintSeams  # noqa: E402

STRICT = RepaintSeams("strict")


def _request(spec: ConditionSpec, **fields) -> object:  # noqa: ANN003
    return loop.LoopRequest(cond=spec, seeds=[3, 4], frames=FRAMES, **fields)


@pytest.mark.parametrize(
    ("spec", "fields"),
    [
        (ConditionSpec(task="text2music", caption="lofi"), dict(guidance_scale=3.0)),
        (ConditionSpec(task="cover", caption="rock"), dict(cover_strength=0.5)),
        (ConditionSpec(task="repaint", caption="strings"), dict(repaint_window=(0.2, 0.5), repaint=STRICT)),
        (ConditionSpec(task="extract", track_names=("vocals",)), {}),
        (ConditionSpec(task="lego", track_names=("drums",)), dict(repaint_window=(0.0, 0.4), repaint=STRICT)),
        (ConditionSpec(task="complete", track_names=("bass", "guitar")), {}),
    ],
    ids=lambda value: value.task if isinstance(value, ConditionSpec) else None,
)
def test_every_task_runs_on_base(spec: ConditionSpec, fields: dict, base: AceStepBackend, source: torch.Tensor) -> None:
    needs_source = spec.task != "text2music"
    request = _request(
        spec, variant="base", steps=3, source=source if needs_source else None, **fields
    )
    result = loop.run_loop(base, request)
    assert result.x0.shape == (2, FRAMES, 64) and bool(torch.isfinite(result.x0).all())
    assert result.model_calls == (6 if spec.task == "text2music" else 3)
    assert not torch.equal(result.x0[0], result.x0[1])  # per-item seeds
    if "repaint_window" in fields:
        window = window_geometry(FRAMES, fields["repaint_window"])
        keep = torch.ones(FRAMES, dtype=torch.bool)
        keep[window.start : window.end] = False
        assert torch.equal(result.x0[:, keep], source.expand(2, -1, -1)[:, keep])


def test_turbo_text2music_and_exact_resume(turbo: AceStepBackend) -> None:
    spec = ConditionSpec(task="text2music", caption="techno", bpm=128)
    full = loop.run_loop(turbo, _request(spec, infer_method="sde", checkpoint_steps=(4,)))
    assert full.model_calls == 8 and bool(torch.isfinite(full.x0).all())
    resumed = loop.run_loop(turbo, _request(spec, infer_method="sde", resume=full.checkpoints[0]))
    assert resumed.start_index == 4 and resumed.model_calls == 4
    assert torch.equal(resumed.x0, full.x0)
