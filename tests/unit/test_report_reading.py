"""What a grid engineer reads in a HIL report: requested, offered and delivered reserve with the
reason they differ, the tolerance beside each verdict, and the compressed day's time of day."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hil.report import Recording, day_clock, markdown, read_recording, summarize, write_report
from hil.report.recording import hour_at
from hil.scenario import load
from tests.unit.test_report import RATED, make

SCENARIOS = Path(__file__).parents[2] / "hil" / "scenarios"


def reserve_run(speed: float, offered_w: float) -> Recording:
    """A reserve increase of `offered_w` from 40 W, asked for as 30 % of rated (24 W)."""
    rec = make([(0.0, 40.0), (10.0, 40.0 + offered_w)], end_s=60.0)
    rec.speed = speed
    rec.commands[1]["reserve"] = {
        "product": "secondary1", "direction": "increase", "baseline_w": 40.0,
        "target_w": 40.0 + offered_w, "requested_w": 0.3 * RATED, "offered_w": offered_w,
        "response_s": 5.0 * speed, "hold_s": 30.0 * speed}
    return rec


def test_a_shrunk_reserve_test_says_requested_offered_delivered_and_why() -> None:
    s = summarize(reserve_run(speed=2.5, offered_w=15.0))
    test = s["reserve"][0]
    assert test["requested_w"] == 24.0 and test["offered_w"] == 15.0
    assert test["delivered_w"] == pytest.approx(15.0, abs=0.3)  # held at the target
    md = markdown(s)
    assert "| secondary1 | increase | 24.0 W | 15.0 W | 15.0 W | 55.0 W |" in md
    assert ("requested 24.0 W (30 % of the 80 W rating); offered 15.0 W, because the test's "
            "12.5 s response time (scenario seconds) lasts 5 s when played at 2.5x") in md
    assert "delivered +15.0 W (the mean over the 30 s hold, from 40.0 W)" in md


def test_a_reserve_test_offered_in_full_gives_no_reason() -> None:
    s = summarize(reserve_run(speed=1.0, offered_w=24.0))
    assert s["reserve"][0]["offered_why"] is None
    assert "offered 24.0 W, because" not in markdown(s)


def test_each_verdict_states_its_tolerance() -> None:
    rec = make([(0.0, 40.0), (20.0, 70.0)], criteria={"ramp_violations": 0,
                                                      "cap_violations": 0,
                                                      "tracking_rms_pct": 2.0})
    md = markdown(summarize(rec))
    # declared 10 W/s over 1 s, +3 %, + 1 % of 80 W: 11.1 W
    assert "a violation moves more than 11.1 W in 1 s" in md
    assert "= 11.1 W between any two moments 1 s apart |" in md
    assert "true power averaged over 1 s above 80 W + 1 % = 80.8 W |" in md
    assert "from each step's allowed response (1 s + step / ramp) to the next command" in md


def test_the_demo_day_runs_from_morning_to_evening() -> None:
    scenario = load(SCENARIOS / "solar_surplus.toml")
    clock = day_clock(scenario, speed=2.5)
    assert clock[0] == (0.0, 6.0) and clock[-1] == (66.4, 16.0)
    assert hour_at(clock, 16.0) == pytest.approx(9.0)  # halfway through the morning
    assert hour_at(clock, 37.2) == pytest.approx(12.5)  # the curtail and resume: noon
    assert hour_at(clock, 99.2) == pytest.approx(16.0 + 32.8 / 24.0 * 3.0)  # the evening rate
    assert day_clock(load(SCENARIOS / "broker_outage.toml"), 1.0) == []  # no day in it


def test_wall_power_and_the_day_clock_are_kept_and_old_runs_still_read(tmp_path) -> None:
    rec = reserve_run(speed=2.5, offered_w=15.0)
    rec.day_clock = [(0.0, 6.0), (60.0, 18.0)]
    for t, p in rec.truth_power_w.points():
        rec.wall_power_w.add(t, p / 0.92)
    write_report(rec, tmp_path)
    png = (tmp_path / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    again = read_recording(tmp_path / "recording.json")
    assert again.day_clock == [(0.0, 6.0), (60.0, 18.0)]
    assert again.wall_power_w.at(30.0) == pytest.approx(rec.wall_power_w.at(30.0))
    old = json.loads((tmp_path / "recording.json").read_text())
    for key in ("wall_power_w", "day_clock"):
        del old[key]
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert read_recording(tmp_path / "old.json").day_clock == []
