"""Schedules against the ACE-Step 1.5 reference values, per variant, and their error cases."""

from __future__ import annotations

import pytest
import torch

from prefect_acestep.stages.engine.schedules import (
    TURBO_VALID_TIMESTEPS,
    place_level,
    resolve_schedule,
    shifted_linear,
    start_index,
    turbo_table,
)
from prefect_acestep.stages.engine.variants import VARIANTS, get_variant
from prefect_acestep.stages.errors import InvalidStageRequest
from prefect_acestep.stages.vocabulary import tasks_of

# Upstream's hard-coded turbo tables (acestep-v15-turbo), as literals.
UPSTREAM_TURBO = {
    1.0: [1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125],
    2.0: [1.0, 0.9333333333333333, 0.8571428571428571, 0.7692307692307693,
          0.6666666666666666, 0.5454545454545454, 0.4, 0.2222222222222222],
    3.0: [1.0, 0.9545454545454546, 0.9, 0.8333333333333334, 0.75, 0.6428571428571429, 0.5, 0.3],
}
UPSTREAM_VALID = [
    1.0, 0.9545454545454546, 0.9333333333333333, 0.9, 0.875, 0.8571428571428571, 0.8333333333333334,
    0.7692307692307693, 0.75, 0.6666666666666666, 0.6428571428571429, 0.625, 0.5454545454545454, 0.5,
    0.4, 0.375, 0.3, 0.25, 0.2222222222222222, 0.125,
]


def test_shift3_table_matches_the_reference_rounding():
    assert [round(t, 4) for t in turbo_table(3.0)] == [1.0, 0.9545, 0.9, 0.8333, 0.75, 0.6429, 0.5, 0.3, 0.0]


@pytest.mark.parametrize("shift", [1.0, 2.0, 3.0])
def test_turbo_tables_equal_upstream_literals_and_the_shift_formula(shift):
    table = turbo_table(shift)
    assert table[-1] == 0.0 and len(table) == 9
    assert table[:-1] == pytest.approx(UPSTREAM_TURBO[shift], abs=1e-15)
    t = torch.linspace(1.0, 0.0, 9, dtype=torch.float64)
    formula = t if shift == 1.0 else shift * t / (1 + (shift - 1) * t)
    assert table == pytest.approx(formula.tolist(), abs=1e-15)


@pytest.mark.parametrize(("steps", "shift"), [(30, 1.0), (27, 2.5), (50, 4.0), (1, 3.0)])
def test_shift_formula_matches_torch_linspace(steps, shift):
    t = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    expected = t if shift == 1.0 else shift * t / (1 + (shift - 1) * t)
    assert shifted_linear(steps, shift) == pytest.approx(expected.tolist(), abs=1e-15)


def test_twenty_valid_turbo_timesteps():
    assert len(TURBO_VALID_TIMESTEPS) == 20
    assert list(TURBO_VALID_TIMESTEPS) == pytest.approx(UPSTREAM_VALID, abs=1e-15)


def test_variant_table():
    assert set(VARIANTS) == {"base", "sft", "turbo", "turbo-shift1", "turbo-shift3", "turbo-continuous"}
    # What upstream's UI sets for base and sft (acestep/ui/gradio/events/generation/model_config.py):
    # 32 and 50 steps, shift 3 (also its API server's shift default).
    assert [(VARIANTS[n].default_steps, VARIANTS[n].default_shift) for n in ("base", "sft")] == [(32, 3.0), (50, 3.0)]
    assert all(VARIANTS[n].default_steps == 8 and not VARIANTS[n].uses_cfg for n in VARIANTS if n.startswith("turbo"))
    assert VARIANTS["base"].uses_cfg and VARIANTS["sft"].uses_cfg
    assert set(tasks_of("turbo")) == set(tasks_of("sft")) == {"text2music", "repaint", "cover"}
    assert set(tasks_of("base")) == {"text2music", "cover", "repaint", "extract", "lego", "complete"}
    with pytest.raises(InvalidStageRequest, match="variant"):
        get_variant("turbo-fast")


def test_defaults_per_variant_and_the_handler_shift_trap():
    turbo = resolve_schedule(VARIANTS["turbo"])
    assert (turbo.mode, turbo.shift, turbo.steps) == ("discrete", 3.0, 8)  # not the handler's 1.0
    assert turbo.values == tuple(turbo_table(3.0))
    base = resolve_schedule(VARIANTS["base"])
    assert (base.mode, base.shift, base.steps) == ("linear", 3.0, 32)
    assert base.values == tuple(shifted_linear(32, 3.0))
    sft = resolve_schedule(VARIANTS["sft"])
    assert (sft.mode, sft.shift, sft.steps) == ("linear", 3.0, 50)
    assert resolve_schedule(VARIANTS["turbo-shift1"]).values == tuple(turbo_table(1.0))
    assert resolve_schedule(VARIANTS["turbo-shift3"]).values == tuple(turbo_table(3.0))
    cont = resolve_schedule(VARIANTS["turbo-continuous"])
    assert (cont.mode, cont.shift) == ("continuous", 3.0)


def test_forced_shift_is_applied_and_contradiction_is_an_error():
    v = VARIANTS["turbo-shift3"]
    assert resolve_schedule(v, shift=3.0).shift == 3.0
    assert resolve_schedule(v, steps=12).values == tuple(shifted_linear(12, 3.0))
    with pytest.raises(InvalidStageRequest, match="shift"):
        resolve_schedule(v, shift=2.0)


def test_continuous_shift_range():
    v = VARIANTS["turbo-continuous"]
    assert resolve_schedule(v, shift=5.0).values == tuple(shifted_linear(8, 5.0))
    assert resolve_schedule(v, shift=1.0, steps=5).values == tuple(shifted_linear(5, 1.0))
    for bad in (5.5, 0.5):
        with pytest.raises(InvalidStageRequest, match="shift"):
            resolve_schedule(v, shift=bad)
    with pytest.raises(InvalidStageRequest, match="shift"):
        resolve_schedule(VARIANTS["base"], scheduler="continuous", shift=6.0)


def test_discrete_chosen_explicitly_must_be_honourable():
    turbo = VARIANTS["turbo"]
    with pytest.raises(InvalidStageRequest, match="steps"):
        resolve_schedule(turbo, scheduler="discrete", steps=12)
    with pytest.raises(InvalidStageRequest, match="shift"):
        resolve_schedule(turbo, scheduler="discrete", shift=2.5)
    on_base = resolve_schedule(VARIANTS["base"], scheduler="discrete", steps=8, shift=2.0)
    assert on_base.values == tuple(turbo_table(2.0))


def test_default_discrete_generalises_to_the_shift_formula():
    turbo = VARIANTS["turbo"]
    twelve = resolve_schedule(turbo, steps=12)
    assert (twelve.mode, twelve.values) == ("linear", tuple(shifted_linear(12, 3.0)))
    odd = resolve_schedule(turbo, shift=2.5)
    assert (odd.mode, odd.values) == ("linear", tuple(shifted_linear(8, 2.5)))
    assert resolve_schedule(turbo, shift=2.0).values == tuple(turbo_table(2.0))


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_bad_steps(bad):
    with pytest.raises(InvalidStageRequest, match="steps"):
        resolve_schedule(VARIANTS["base"], steps=bad)


def test_bad_shift_and_scheduler():
    with pytest.raises(InvalidStageRequest, match="shift"):
        resolve_schedule(VARIANTS["base"], shift=0.0)
    with pytest.raises(InvalidStageRequest, match="scheduler"):
        resolve_schedule(VARIANTS["base"], scheduler="cosine")  # type: ignore[arg-type]


def test_turbo_custom_timesteps_map_to_nearest_trained_level():
    sched = resolve_schedule(VARIANTS["turbo"], custom_timesteps=[0.97, 0.52, 0.31, 0.0, 0.0])
    assert sched.values == (0.9545454545454546, 0.5, 0.3, 0.0)
    assert (sched.mode, sched.shift, sched.steps) == ("custom", None, 3)
    exact = resolve_schedule(VARIANTS["turbo"], custom_timesteps=list(UPSTREAM_VALID))
    assert exact.values == tuple(UPSTREAM_VALID) + (0.0,)


def test_turbo_custom_timesteps_errors():
    turbo = VARIANTS["turbo"]
    with pytest.raises(InvalidStageRequest, match="at most 20"):
        resolve_schedule(turbo, custom_timesteps=[1.0 - i / 25 for i in range(21)])
    with pytest.raises(InvalidStageRequest, match="strictly decreasing"):
        resolve_schedule(turbo, custom_timesteps=[0.99, 0.98])  # both map to 1.0
    with pytest.raises(InvalidStageRequest, match="custom_timesteps"):
        resolve_schedule(turbo, custom_timesteps=[0.0])


@pytest.mark.parametrize("name", ["sft", "turbo-shift1", "turbo-shift3"])
def test_custom_timesteps_used_as_given(name):
    given = [0.9, 0.61, 0.2, 0.0]
    assert resolve_schedule(VARIANTS[name], custom_timesteps=given).values == tuple(given)


def test_continuous_custom_timesteps_get_a_terminal():
    assert resolve_schedule(VARIANTS["turbo-continuous"], custom_timesteps=[0.8, 0.4]).values == (0.8, 0.4, 0.0)


def test_custom_timesteps_conflicts_are_errors():
    with pytest.raises(InvalidStageRequest, match="custom_timesteps"):
        resolve_schedule(VARIANTS["base"], custom_timesteps=[1.0, 0.5, 0.0])
    sft = VARIANTS["sft"]
    with pytest.raises(InvalidStageRequest, match="shift"):
        resolve_schedule(sft, custom_timesteps=[1.0, 0.5, 0.0], shift=2.0)
    with pytest.raises(InvalidStageRequest, match="scheduler"):
        resolve_schedule(sft, custom_timesteps=[1.0, 0.5, 0.0], scheduler="linear")
    with pytest.raises(InvalidStageRequest, match="steps"):
        resolve_schedule(sft, custom_timesteps=[1.0, 0.5, 0.0], steps=3)
    assert resolve_schedule(sft, custom_timesteps=[1.0, 0.5, 0.0], steps=2).steps == 2
    for bad in ([0.5, 0.7, 0.0], [1.2, 0.5, 0.0], [0.5], [0.5, 0.0, 0.0]):
        with pytest.raises(InvalidStageRequest, match="custom_timesteps"):
            resolve_schedule(sft, custom_timesteps=bad)


def test_start_index_picks_first_level_at_or_below_t_start():
    values = tuple(turbo_table(3.0))
    assert start_index(values, 1.0) == 0
    assert start_index(values, 0.55) == 6
    assert start_index(values, 0.5) == 6
    assert start_index(values, 0.5 + 1e-12) == 6  # float noise in a caller's t_start
    assert start_index(values, 0.3) == 7
    with pytest.raises(InvalidStageRequest, match="no step left"):
        start_index(values, 0.25)
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(InvalidStageRequest, match="t_start"):
            start_index(values, bad)


def test_place_level_continues_or_inserts():
    values = tuple(turbo_table(2.0))
    same, k = place_level(values, values[3])
    assert (same, k) == (values, 3)
    inserted, k = place_level(values, 0.8333333333333334)
    assert k == 3 and inserted[k] == 0.8333333333333334
    assert inserted == values[:3] + (0.8333333333333334,) + values[3:]
    last, k = place_level(values, 0.1)
    assert k == 8 and last[-2:] == (0.1, 0.0)
    with pytest.raises(InvalidStageRequest, match="terminal"):
        place_level((1.0, 0.5, 0.2), 0.1)
