"""Simple mode's planner: a description becomes a full, valid, deterministic request."""

from __future__ import annotations

import pytest

from prefect_acestep.stages.backends.embedded import EmbeddedBackend, SimplePlan, plan
from prefect_acestep.stages.backends.embedded.harmony import parse_keyscale, parse_timesignature
from prefect_acestep.stages.backends.protocol import ConditionSpec
from prefect_acestep.stages.errors import InvalidStageRequest


def test_explicit_metas_win_and_leave_the_caption() -> None:
    p = plan("A sad piano ballad in F# minor at 72 bpm, 3/4, lasting 90 seconds")
    assert (p.keyscale, p.bpm, p.timesignature, p.duration) == ("F# minor", 72, "3", 90.0)
    assert p.caption == "A sad piano ballad"
    assert p.lm_metadata["sources"] == {"bpm": "text", "keyscale": "text", "timesignature": "text", "duration": "text"}


def test_words_decide_what_numbers_do_not() -> None:
    assert plan("a sad song").keyscale.endswith("minor")
    assert plan("a happy song").keyscale.endswith("major")
    assert plan("a viennese waltz").timesignature == "3"
    assert plan("deep house groove").bpm == 124
    assert plan("slow ambient drone").bpm == 72
    assert plan("a short jingle").duration == 30.0
    assert plan("2 minutes of lofi").duration == 120.0
    assert plan("80s synth pop").duration in (30.0, 45.0, 60.0, 90.0)  # "80s" is a decade, not a length


def test_vocals_and_instrumental() -> None:
    assert plan("pop song with female vocals").instrumental is False
    assert plan("pop song, instrumental").instrumental is True
    assert plan("rock song with no vocals").instrumental is True
    assert plan("guitar solo").instrumental is True


def test_plans_are_deterministic_and_varied() -> None:
    moods, genres = ("quiet", "bold", "odd", "warm"), ("jazz", "folk", "soul")
    descriptions = [f"{mood} {genre} piece" for mood in moods for genre in genres]
    plans = [plan(d) for d in descriptions]
    assert plans == [plan(d) for d in descriptions]
    assert len({p.keyscale for p in plans}) >= 4
    assert len({p.bpm for p in plans}) >= 2
    assert len({p.duration for p in plans}) >= 2


@pytest.mark.parametrize("description", ["", "   ", "song at 999 bpm", "song of 20 minutes"])
def test_unusable_descriptions_are_typed_errors(description: str) -> None:
    with pytest.raises(InvalidStageRequest, match="description"):
        plan(description)


def test_a_plan_feeds_the_model() -> None:
    p = plan("energetic rock with guitar and drums")
    assert isinstance(p, SimplePlan)
    parse_keyscale(p.keyscale)
    parse_timesignature(p.timesignature)
    spec = ConditionSpec(task="text2music", caption=p.caption, bpm=p.bpm, keyscale=p.keyscale,
                         timesignature=p.timesignature, duration_s=p.duration, instrumental=p.instrumental)
    EmbeddedBackend().encode_condition(spec, 1)
    assert {"caption", "bpm", "keyscale", "timesignature", "duration", "instrumental", "genres"} <= set(p.lm_metadata)
    assert p.lm_metadata["genres"] == ["rock"]
