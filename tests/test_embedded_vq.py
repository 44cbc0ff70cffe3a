"""The embedded model's VQ bottleneck: 5 Hz integer codes that keep a piece's coarse structure."""

from __future__ import annotations

import pytest
import torch

from prefect_acestep.stages.backends.embedded import EmbeddedBackend
from prefect_acestep.stages.backends.embedded.channels import percussion_channel, pitched_channel
from prefect_acestep.stages.backends.embedded.vq import CHROMA, CODE_WIDTH, ENERGY, LEVELS, cover_reading
from prefect_acestep.stages.backends.protocol import ConditionSpec
from prefect_acestep.stages.engine.loop import LoopRequest, run_loop
from prefect_acestep.stages.errors import InvalidStageRequest


@pytest.fixture(scope="module")
def backend() -> EmbeddedBackend:
    return EmbeddedBackend("turbo")


@pytest.fixture(scope="module")
def music(backend: EmbeddedBackend) -> torch.Tensor:
    spec = ConditionSpec(
        task="text2music", caption="pop song with piano, bass, flute and drums", keyscale="D major", bpm=110
    )
    return run_loop(backend, LoopRequest(cond=spec, seeds=[7, 8], frames=123)).x0


def test_codes_are_integers_at_5_hz_within_their_grid(backend: EmbeddedBackend, music: torch.Tensor) -> None:
    codes = backend.tokenize(music)
    assert codes.shape == (2, 25, CODE_WIDTH)  # ceil(123 / 5)
    assert codes.dtype == torch.int64
    assert (codes >= 0).all() and (codes < torch.tensor(LEVELS)).all()
    assert backend.detokenize(codes, 123).shape == (2, 123, 64)


def test_codes_are_a_fixed_point_of_the_bottleneck(backend: EmbeddedBackend, music: torch.Tensor) -> None:
    codes = backend.tokenize(music)
    again = backend.tokenize(backend.detokenize(codes, 123))
    assert torch.equal(again, codes)


def test_codes_keep_the_chord_bass_and_lead() -> None:
    z = torch.zeros(1, 10, 64)
    z[0, :5, [pitched_channel(1, pc) for pc in (0, 4, 7)]] = 0.55  # C major in the low register
    z[0, :5, pitched_channel(0, 0)] = 1.0
    z[0, 5:, [pitched_channel(2, pc) for pc in (9, 0, 4)]] = 0.5  # A minor in the mid register
    z[0, 5:, pitched_channel(3, 4)] = 0.8  # lead E
    z[0, 7, percussion_channel("kick")] = 1.0
    backend = EmbeddedBackend()
    codes = backend.tokenize(z)
    reading = cover_reading(codes)
    assert reading.chord[0, 0].nonzero().flatten().tolist() == [0, 4, 7]
    assert reading.chord[0, 1].nonzero().flatten().tolist() == [0, 4, 9]
    assert reading.bass[0].tolist() == [0, 9]  # the A-minor code has no bass: read from its chroma
    assert reading.lead[0, 1] == 4
    assert codes[0, 0, ENERGY].tolist()[:2] == [5, 3] and codes[0, 1, ENERGY].tolist()[2:] == [2, 4]
    assert codes[0, 1, -3] == 3 and codes[0, 0, -3] == 0  # the kick lands in the second code
    coarse = backend.detokenize(codes, 10)
    assert coarse[0, :5, pitched_channel(1, 4)].min() > 0.4 and coarse[0, :5, pitched_channel(1, 2)].abs().max() == 0
    assert codes[0, 0, CHROMA].tolist() == [4, 0, 0, 0, 4, 0, 0, 4, 0, 0, 0, 0]


def test_detokenize_checks_its_codes(backend: EmbeddedBackend, music: torch.Tensor) -> None:
    codes = backend.tokenize(music)
    with pytest.raises(InvalidStageRequest, match="cover"):
        backend.detokenize(codes, 130)
    bad = codes.clone()
    bad[0, 0, 0] = 99
    with pytest.raises(InvalidStageRequest, match="grid"):
        backend.detokenize(bad, 123)
    with pytest.raises(InvalidStageRequest, match="integer"):
        backend.detokenize(codes.float(), 123)
    with pytest.raises(InvalidStageRequest, match="tokenize expects"):
        backend.tokenize(torch.zeros(1, 10, 32))
