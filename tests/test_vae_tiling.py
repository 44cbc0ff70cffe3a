"""VAE decode and encode in overlapping tiles: equal to untiled, memory bounded by the tile.

Tolerance: where the overlap covers the decoder's (encoder's) receptive field, a tiled result
differs from the untiled one by float rounding only; the bound used is 1e-5 of the untiled peak
(measured: about 6e-7 for decode, 1.2e-6 for encode on the tiny VAE), at every sample, tile edges
included. An overlap narrower than the receptive field breaks the bound at the edges, which shows
the comparison can fail.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers", reason="the acestep extra is not installed: pip install 'prefect-acestep[acestep]'")

from prefect_acestep.stages.backends.acestep import AceStepBackend  # noqa: E402
from prefect_acestep.stages.backends.acestep import vae_tiling  # noqa: E402
from prefect_acestep.stages.backends.acestep.vae_tiling import VaeTiling, windows  # noqa: E402
from prefect_acestep.stages.errors import BackendLoadError  # noqa: E402
from prefect_acestep.stages.geometry import HOP_LENGTH  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-5
"""Of the untiled result's peak magnitude."""
SMALL = VaeTiling(decode_frames=96, decode_overlap=32, encode_frames=96, encode_overlap=32)
"""Small tiles (the tiny VAE's receptive field is under 32 frames) so that short inputs get many edges."""


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def checkpoint(tiny_acestep: dict[str, Path]) -> Path:
    return tiny_acestep["turbo"]


@pytest.fixture(scope="module")
def vae(checkpoint: Path) -> torch.nn.Module:
    return AceStepBackend(str(checkpoint)).components.vae


def test_windows_cover_each_frame_once_with_upstream_geometry() -> None:
    tiling = VaeTiling()
    assert (tiling.decode_frames, tiling.decode_overlap, tiling.encode_frames, tiling.encode_overlap) == (512, 64, 750, 50)
    assert windows(512, 512, 64) == [vae_tiling.Window(0, 512, 0, 512)]  # fits one tile: decoded whole
    for frames in (513, 1000, 6000, 15_000):
        tiles = windows(frames, 512, 64)
        assert [w.core_start for w in tiles] == list(range(0, frames, 384))
        assert tiles[-1].core_end == frames and all(a.core_end == b.core_start for a, b in zip(tiles, tiles[1:]))
        assert all(0 <= w.start <= w.core_start < w.core_end <= w.end <= frames for w in tiles)
        assert all(w.end - w.start <= 512 for w in tiles)
    with pytest.raises(BackendLoadError, match=r"decode_frames \(128\) must exceed twice decode_overlap \(64\)"):
        VaeTiling(decode_frames=128)


def _edges(frames: int, tiling: VaeTiling, kind: str) -> list[int]:
    tile, overlap = getattr(tiling, f"{kind}_frames"), getattr(tiling, f"{kind}_overlap")
    return [w.core_start for w in windows(frames, tile, overlap)[1:]]


@torch.no_grad()
def test_tiled_decode_equals_untiled_at_tile_edges_too(vae: torch.nn.Module) -> None:
    z = torch.randn(2, 64, 300, generator=torch.Generator().manual_seed(0))
    untiled = vae.decode(z).sample
    bound = TOLERANCE * float(untiled.abs().max())
    tiled = vae_tiling.decode(vae, z, SMALL)
    assert tiled.shape == untiled.shape == (2, 2, 300 * HOP_LENGTH)
    edges = _edges(300, SMALL, "decode")
    assert len(edges) == 9
    for edge in edges:  # the samples of the frames on either side of each seam
        seam = slice((edge - 1) * HOP_LENGTH, (edge + 1) * HOP_LENGTH)
        assert float((tiled[..., seam] - untiled[..., seam]).abs().max()) <= bound
    assert float((tiled - untiled).abs().max()) <= bound
    narrow = vae_tiling.decode(vae, z, VaeTiling(decode_frames=64, decode_overlap=8))
    assert float((narrow - untiled).abs().max()) > 100 * bound  # an overlap under the receptive field shows


@torch.no_grad()
def test_backend_encodes_in_tiles_equal_to_untiled_and_samples_reproducibly(
    checkpoint: Path, vae: torch.nn.Module
) -> None:
    backend = AceStepBackend(str(checkpoint), vae_tiling=SMALL)
    assert backend.components.vae is vae  # one shared VAE, each backend its own tiles
    audio = 0.1 * torch.randn(1, 2, 128 * HOP_LENGTH, generator=torch.Generator().manual_seed(1))
    untiled = vae.encode(audio).latent_dist.mode().transpose(1, 2)
    tiled = backend.vae_encode(audio)
    assert tiled.shape == (1, 128, 64) and len(_edges(128, SMALL, "encode")) == 3
    assert float((tiled - untiled).abs().max()) <= TOLERANCE * float(untiled.abs().max())
    clip = audio[:, :, : 16 * HOP_LENGTH]
    posterior = vae.encode(clip).latent_dist
    draws = [vae_tiling.encode(vae, clip, SMALL, torch.Generator().manual_seed(7)) for _ in range(2)]
    assert torch.equal(draws[0], draws[1])
    spread = float((draws[0] - posterior.mode()).abs().max())
    assert 0 < spread < 20 * float(posterior.std.max())  # a posterior sample around the mean


@torch.no_grad()
def test_backend_decodes_in_upstream_tiles(checkpoint: Path, vae: torch.nn.Module) -> None:
    backend = AceStepBackend(str(checkpoint))
    assert backend.tiling == VaeTiling()
    latents = torch.randn(1, 1000, 64, generator=torch.Generator().manual_seed(2))  # 40 s: three tiles
    untiled = vae.decode(latents.transpose(1, 2)).sample
    decoded = backend.vae_decode(latents)
    assert float((decoded - untiled).abs().max()) <= TOLERANCE * float(untiled.abs().max())


def test_peak_memory_of_a_long_decode_is_bounded_by_the_tile(checkpoint: Path) -> None:
    """Measured in a child process (bench/vae_memory_bench.py): the working memory of a tiled
    decode (the peak above the decoded audio itself) stays at one tile's as the song grows, while
    an untiled decode's grows with the song."""
    command = [sys.executable, str(REPO / "bench" / "vae_memory_bench.py"), str(checkpoint), "--json",
               "--seconds", "60", "180", "--untiled-max-seconds", "60"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = {(run["frames"], run["tile_frames"]): run for run in json.loads(done.stdout.strip().splitlines()[-1])}
    tiled_short, tiled_long, untiled_short = runs[(1500, 512)], runs[(4500, 512)], runs[(1500, 0)]
    mib = 2**20
    assert tiled_long["output"] == 3 * tiled_short["output"]
    assert tiled_long["working"] <= 1.25 * tiled_short["working"] + 16 * mib, runs
    assert untiled_short["working"] >= 2 * tiled_short["working"], runs
