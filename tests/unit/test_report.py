"""Summary figures from recorded series: tracking, response, violations, gaps, energy, verdict."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hil.report import (
    Recording,
    Series,
    largest_change_w,
    markdown,
    moving_average,
    percentile,
    read_recording,
    summarize,
    window_changes,
    write_report,
)
from hil.scenario import Measure

RATED = 80.0
RAMP = 10.0


def ramp_to(t, t0, p0, p1, ramp=RAMP):
    """Power at t moving from p0 at t0 toward p1 at `ramp` W/s."""
    if t <= t0:
        return p0
    d = ramp * (t - t0)
    return p1 if d >= abs(p1 - p0) else p0 + math.copysign(d, p1 - p0)


def make(steps, end_s=60.0, dt=0.1, ramp=RAMP, offset_w=0.0, criteria=None, **kw):
    """A recording where the true power follows each (t, power_w) setpoint at `ramp` W/s."""
    rec = Recording(scenario="synthetic", speed=1.0, rated_w=RATED, min_w=20.0,
                    ramp_max_w_s=RAMP, temp_max_c=75.0, end_s=end_s,
                    measure=Measure(settle_s=1.0), criteria=criteria or {}, **kw)
    for i, (t, p) in enumerate(steps):
        rec.commands.append({"t_s": t, "op": "setpoint", "power_w": p, "label": f"s{i}",
                             "result": "accepted", "ack_t_s": t + 0.05, "id": str(i)})
    level = steps[0][1]
    t0, p0 = -1.0, level
    seq = 0
    n = round((end_s + 1.0) / dt)
    for k in range(n + 1):
        t = -1.0 + k * dt
        for ts, p in steps:
            if abs(ts - t) < dt / 2:
                t0, p0, level = t, rec.truth_power_w.v[-1] if rec.truth_power_w.v else level, p
        power = ramp_to(t, t0, p0, level, ramp) + offset_w
        rec.truth_power_w.add(t, power)
        rec.truth_temp_c.add(t, 60.0)
        if k % 10 == 0:
            rec.telemetry.append({"t_s": t, "seq": seq, "power_w": power, "target_w": level,
                                  "energy_wh": (t + 1.0) * power / 3600.0})
            seq += 1
    return rec


def test_perfect_tracking_has_zero_error_and_ramp_limited_response():
    rec = make([(0.0, 40.0), (20.0, 70.0), (40.0, 30.0)])
    s = summarize(rec)
    assert s["tracking_rms_pct"] == pytest.approx(0.0, abs=1e-6)
    assert s["violations"] == {"cap": 0, "ramp": 0, "temp": 0}
    # 30 W at 10 W/s: 90 % of the step after 2.7 s; 40 W: 3.6 s
    assert s["response_s"]["steps"] == 2
    assert s["response_s"]["max"] == pytest.approx(3.6, abs=0.15)
    assert s["response_s"]["p50"] == pytest.approx(3.15, abs=0.15)
    assert s["response_s"]["late"] == 0


def test_offset_shows_as_tracking_error_in_percent_of_rated():
    s = summarize(make([(0.0, 40.0), (20.0, 70.0)], offset_w=1.6))
    assert s["tracking_rms_pct"] == pytest.approx(2.0, abs=0.01)
    assert s["tracking_max_pct"] == pytest.approx(2.0, abs=0.01)


def test_error_during_the_allowed_response_time_is_not_tracking_error():
    # a slow ramp (5 W/s) finishes a 30 W step 3 s later than the declared 10 W/s allows
    slow = summarize(make([(0.0, 40.0), (20.0, 70.0)], ramp=5.0))
    fast = summarize(make([(0.0, 40.0), (20.0, 70.0)]))
    assert fast["tracking_max_pct"] == pytest.approx(0.0, abs=1e-6)
    assert slow["tracking_max_pct"] > 10.0
    assert slow["response_s"]["late"] == 1


def test_ramp_faster_than_declared_is_a_violation_episode():
    s = summarize(make([(0.0, 30.0), (20.0, 70.0), (40.0, 30.0)], ramp=40.0))
    assert s["violations"]["ramp"] == 2
    assert s["fastest_ramp_w_s"] > 19.0


def test_a_short_jump_then_a_hold_is_a_ramp_violation():
    # 16 W in 0.1 s at a 10 W/s limit, then flat: moved 1.6x the ramp in under a second
    rec = make([(0.0, 30.0)])
    for i, t in enumerate(rec.truth_power_w.t_s):
        if t >= 20.0:
            rec.truth_power_w.v[i] = 46.0
    s = summarize(rec)
    assert s["violations"]["ramp"] == 1
    assert s["violation_episodes"]["ramp"][0][0] == pytest.approx(19.0, abs=0.15)
    assert s["fastest_ramp_w_s"] == pytest.approx(16.0)


@given(st.lists(st.tuples(st.floats(0.01, 1.0), st.floats(-100.0, 100.0)), max_size=40),
       st.floats(0.05, 3.0))
def test_window_changes_is_the_largest_change_between_two_moments_in_each_window(steps, window):
    t, points = 0.0, []
    for dt, v in steps:
        t += dt
        points.append((t, v))
    for partial in (False, True):
        got = dict(window_changes(points, window, partial))
        for ti, _ in points:
            inside = [v for tk, v in points if ti <= tk <= ti + window]
            covered = points[-1][0] > ti + window
            if covered or partial:
                assert got[ti] == max(inside) - min(inside)
            else:
                assert ti not in got
    brute = max((abs(a - b) for i, (ta, a) in enumerate(points)
                 for tb, b in points[i:] if tb <= ta + 1.0), default=0.0)  # as t + window
    assert largest_change_w(points, 0.0, math.inf, 1.0) == brute


def _with_modes(rec: Recording, tripped: tuple[float, float] | None) -> Recording:
    """Telemetry mode `tripped` during `tripped` (start, end), `mining` otherwise; the true power
    drops to 2 W at once while tripped."""
    for m in rec.telemetry:
        inside = tripped is not None and tripped[0] <= m["t_s"] <= tripped[1]
        m["mode"] = "tripped" if inside else "mining"
    if tripped is not None:
        for i, t in enumerate(rec.truth_power_w.t_s):
            if tripped[0] - 0.5 <= t <= tripped[1]:
                rec.truth_power_w.v[i] = 2.0
    return rec


def test_a_stuck_sensor_expects_a_trip_whose_drop_is_not_a_ramp_violation():
    stuck = {"t_s": 20.0, "end_s": 30.0, "kind": "stuck_sensor", "label": "", "expect": "trip",
             "exempt": {"tracking": [20.0, 50.0]}}
    rec = _with_modes(make([(0.0, 50.0)]), (25.0, 40.0))
    rec.faults.append(stuck)
    s = summarize(rec)
    assert s["faults_missed"] == 0
    assert s["faults"][0]["tripped_at_s"] == pytest.approx(25.0, abs=1.0)
    assert "stuck_sensor; the agent tripped at 2" in markdown(s)
    # the drop is the trip's; the jump back at 40 s is the agent's own move and is judged
    assert [a for a, _ in s["violation_episodes"]["ramp"]] == [pytest.approx(39.1, abs=0.15)]

    missed = make([(0.0, 50.0)], criteria={"faults_missed": 0})
    missed.faults.append(stuck)
    s = summarize(_with_modes(missed, None))
    assert s["faults_missed"] == 1 and not s["passed"]
    assert "the agent did NOT trip" in markdown(s)
    # a trip outside the fault's time is no answer to it, and its drop is judged
    late = _with_modes(make([(0.0, 50.0)]), (45.0, 50.0))
    late.faults.append(stuck)
    s = summarize(late)
    assert s["faults_missed"] == 1 and s["violations"]["ramp"] == 2


def test_ramp_exemption_window_of_a_fault():
    rec = make([(0.0, 30.0), (20.0, 70.0)], ramp=40.0)
    rec.faults.append({"t_s": 19.0, "end_s": 23.0, "kind": "chip_death", "label": "",
                       "exempt": {"ramp": [19.0, 23.0], "tracking": [19.0, 23.0]}})
    assert summarize(rec)["violations"]["ramp"] == 0


def test_cap_and_temperature_violations_come_from_the_true_state():
    rec = make([(0.0, 78.0)], offset_w=3.0)
    for i in range(len(rec.truth_temp_c.v)):
        if 10.0 <= rec.truth_temp_c.t_s[i] <= 12.0 or 30.0 <= rec.truth_temp_c.t_s[i] <= 31.0:
            rec.truth_temp_c.v[i] = 80.0
    s = summarize(rec)
    assert s["violations"]["cap"] == 1
    assert s["violations"]["temp"] == 2
    assert s["max_chip_temp_c"] == 80.0


def test_telemetry_gaps_count_missing_seq_but_not_a_restart():
    rec = make([(0.0, 40.0)], end_s=20.0)
    for m in rec.telemetry:
        m["epoch"] = 0
    del rec.telemetry[5:8]  # three lost messages, one gap
    rec.telemetry.append({"t_s": 21.0, "seq": 0, "epoch": 1})  # a new agent process
    rec.telemetry.append({"t_s": 22.0, "seq": 1, "epoch": 1})
    s = summarize(rec)
    assert s["telemetry_gaps"] == 1
    assert s["telemetry_missing"] == 3


def test_seq_wrap_is_not_a_gap():
    rec = make([(0.0, 40.0)], end_s=5.0)
    rec.telemetry = [{"t_s": 1.0, "seq": 2**32 - 1}, {"t_s": 2.0, "seq": 0}]
    assert summarize(rec)["telemetry_gaps"] == 0


def test_energy_is_the_integral_of_true_power():
    s = summarize(make([(0.0, 36.0)], end_s=100.0))
    assert s["energy_wh"] == pytest.approx(1.0, rel=1e-3)
    assert s["energy_wh_agent"] == pytest.approx(36.0 * 99.0 / 3600.0, rel=0.02)


def test_commands_unacked_and_rejected_are_counted():
    rec = make([(0.0, 40.0), (20.0, 70.0), (40.0, 50.0)])
    rec.commands[1].update(result="rejected", reason="out_of_range")
    rec.commands[2].update(result=None, ack_t_s=None)
    c = summarize(rec)["commands"]
    assert (c["sent"], c["acked"], c["rejected"], c["unacked"]) == (3, 2, 1, 1)
    assert c["rejections"][0]["reason"] == "out_of_range"


def test_curtail_is_tracked_one_sided():
    rec = make([(0.0, 60.0), (20.0, 20.0)])
    rec.commands[1].update(op="curtail", power_w=None, applied_w=25.0)
    s = summarize(rec)  # power settles at 20 W, under the device's 25 W floor: no error
    assert s["tracking_max_pct"] == pytest.approx(0.0, abs=1e-6)


def test_criteria_verdict_and_unmeasured_figure_fails():
    rec = make([(0.0, 40.0), (20.0, 70.0)], offset_w=4.0,
               criteria={"tracking_rms_pct": 2.0, "cap_violations": 0, "response_p90_s": 5.0})
    s = summarize(rec)
    verdict = {c["name"]: c["ok"] for c in s["criteria"]}
    assert verdict == {"tracking_rms_pct": False, "cap_violations": True, "response_p90_s": True}
    assert s["passed"] is False
    rec = make([(0.0, 40.0)], criteria={"response_p90_s": 5.0})  # no step: nothing measured
    assert summarize(rec)["passed"] is False


def test_reserve_test_passes_when_reached_in_time_and_held():
    rec = make([(0.0, 70.0), (10.0, 46.0)], end_s=50.0)
    rec.commands[1]["reserve"] = {"product": "secondary1", "direction": "decrease",
                                  "target_w": 46.0, "requested_w": 24.0, "response_s": 5.0,
                                  "hold_s": 30.0}
    s = summarize(rec)
    assert s["reserve_failures"] == 0
    assert s["reserve"][0]["reached_s"] < 5.0
    slow = make([(0.0, 70.0), (10.0, 46.0)], end_s=50.0, ramp=3.0)
    slow.commands[1]["reserve"] = rec.commands[1]["reserve"]
    assert summarize(slow)["reserve_failures"] == 1


def test_percentile_interpolates():
    assert percentile([], 50) is None
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([5.0], 90) == 5.0


def test_series_interpolates_and_drops_out_of_order():
    s = Series()
    s.add(0.0, 0.0)
    s.add(2.0, 10.0)
    s.add(1.0, 99.0)
    assert s.at(1.0) == 5.0 and s.at(-5) == 0.0 and s.at(9) == 10.0


def test_report_files_are_written_and_the_recording_round_trips(tmp_path):
    rec = make([(0.0, 40.0), (20.0, 70.0)], criteria={"cap_violations": 0})
    rec.faults.append({"t_s": 5.0, "end_s": 8.0, "kind": "broker_outage", "label": "outage"})
    summary = write_report(rec, tmp_path)
    png = (tmp_path / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    assert json.loads((tmp_path / "summary.json").read_text())["passed"] is True
    md = (tmp_path / "summary.md").read_text()
    assert "PASS" in md and "tracking error RMS" in md and "broker_outage" in md
    again = summarize(read_recording(tmp_path / "recording.json"))
    assert again["energy_wh"] == summary["energy_wh"]
    assert markdown(again) == md


def test_reserve_test_not_deliverable_at_this_speed_is_skipped_not_failed():
    rec = make([(0.0, 70.0), (10.0, 70.0)], end_s=50.0)
    rec.commands[1]["reserve"] = {"product": "secondary1", "direction": "decrease",
                                  "target_w": 70.0, "requested_w": 24.0, "offered_w": 0.0,
                                  "response_s": 5.0, "hold_s": 30.0}
    s = summarize(rec)
    assert s["reserve_failures"] == 0
    assert s["reserve"][0]["skipped"] is True
    assert "skipped" in markdown(s)


def test_a_spike_shorter_than_the_meter_window_is_not_a_cap_violation():
    rec = make([(0.0, 79.0)])
    for i, t in enumerate(rec.truth_power_w.t_s):
        if 10.0 <= t < 10.25:
            rec.truth_power_w.v[i] = 83.0  # +4 W for a quarter second
    assert summarize(rec)["violations"]["cap"] == 0
    for i, t in enumerate(rec.truth_power_w.t_s):
        if 20.0 <= t < 22.0:
            rec.truth_power_w.v[i] = 83.0  # +4 W for two seconds
    assert summarize(rec)["violations"]["cap"] == 1


def test_moving_average_is_the_time_average_over_the_window():
    pts = [(i * 0.1, 10.0 if i < 20 else 20.0) for i in range(50)]
    ma = [v for _, v in moving_average(pts, 1.0)]
    assert ma[15] == pytest.approx(10.0)
    assert ma[25] == pytest.approx(15.5, abs=0.6)
    assert ma[35] == pytest.approx(20.0)


def test_thermally_limited_ack_makes_its_applied_power_the_reference():
    rec = make([(0.0, 60.0), (20.0, 25.0)])  # the board settles at 25 W, asked 50 W
    rec.commands[1].update(power_w=50.0, applied_w=25.0, limited_by="thermal")
    s = summarize(rec)
    assert s["tracking_max_pct"] == pytest.approx(0.0, abs=1e-6)
    assert s["response_s"]["late"] == 0


def test_a_repeated_target_continues_the_step_it_repeats():
    # 20 -> 70 W at 10 W/s needs 5 s; the same 70 W again after 3 s is not a new, late step
    rec = make([(0.0, 20.0), (10.0, 70.0), (13.0, 70.0)])
    s = summarize(rec)
    assert s["response_s"]["steps"] == 1
    assert s["response_s"]["late"] == 0
    assert s["tracking_max_pct"] == pytest.approx(0.0, abs=1e-6)
