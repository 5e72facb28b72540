"""Grid simulator: the surplus curve, the plan of commands, and sending it on time."""

from __future__ import annotations

import itertools

import pytest

from hil.gridsim import Caps, GridSimulator, PlannedCommand, SentCommand, SurplusCurve, plan
from hil.scenario import Cloud, SurplusSpec, load, parse

CAPS = Caps(min_w=20.0, max_w=80.0, ramp_max_w_s=10.0)


def scenario(grid, **head):
    return parse({"scenario": {"name": "t", "duration_s": 300, **head}, "grid": grid})


def test_solar_is_zero_at_night_and_peaks_at_noon():
    curve = SurplusCurve(SurplusSpec(sunrise_h=6, sunset_h=18))
    assert curve.solar(3.0) == 0.0
    assert curve.solar(20.0) == 0.0
    assert curve.solar(12.0) == pytest.approx(1.0)
    assert curve.solar(9.0) < curve.solar(11.0) < curve.solar(12.0)


def test_a_cloud_dips_the_surplus_where_it_passes():
    clear = SurplusCurve(SurplusSpec(wind_pct=0, demand_pct=0, floor_pct=0, ceiling_pct=100,
                                     solar_pct=80))
    cloudy = SurplusCurve(SurplusSpec(wind_pct=0, demand_pct=0, floor_pct=0, ceiling_pct=100,
                                      solar_pct=80, clouds=(Cloud(11.0, 50.0, 1.0),)))
    assert cloudy.pct(11.0) == pytest.approx(clear.pct(11.0) / 2, rel=1e-6)
    assert cloudy.pct(14.0) == pytest.approx(clear.pct(14.0), rel=1e-3)


def test_surplus_is_clamped_to_floor_and_ceiling_and_wind_is_seeded():
    spec = SurplusSpec(solar_pct=300, floor_pct=25, ceiling_pct=90)
    curve = SurplusCurve(spec, seed=3)
    hours = [h / 4 for h in range(96)]
    values = [curve.pct(h) for h in hours]
    assert min(values) == 25 and max(values) == 90
    assert [SurplusCurve(spec, seed=3).wind(h) for h in hours] == [curve.wind(h) for h in hours]
    assert all(0.0 <= curve.wind(h) <= 1.0 for h in hours)


def test_surplus_plan_follows_the_curve_in_watts_within_caps():
    s = scenario([{"at_s": 0, "op": "surplus", "until_s": 120, "interval_s": 5}])
    cmds = plan(s, CAPS)
    assert len(cmds) >= 10
    assert all(c.op == "setpoint" and CAPS.min_w <= c.power_w <= CAPS.max_w for c in cmds)
    times = [c.at_s for c in cmds]
    assert times == sorted(times) and times[0] == 0 and times[-1] < 120
    assert all(b - a >= 5 / 4 - 1e-9 for a, b in itertools.pairwise(times))
    assert max(c.power_w for c in cmds) > 60  # noon surplus reaches the top
    assert cmds[0].power_w < 40  # dawn is near the floor


def test_cloud_edge_is_sent_before_the_interval():
    base = {"at_s": 0, "op": "surplus", "until_s": 120, "interval_s": 20, "wind_pct": 0,
            "clouds": [{"at_h": 12.0, "depth_pct": 80, "width_h": 0.4}]}
    cmds = plan(scenario([base]), CAPS)
    gaps = [b.at_s - a.at_s for a, b in itertools.pairwise(cmds)]
    assert min(gaps) < 20


def test_reserve_test_steps_from_the_level_before_and_is_released():
    s = scenario([
        {"at_s": 0, "op": "setpoint", "power_pct": 75},
        {"at_s": 10, "op": "reserve", "product": "secondary1", "amount_pct": 25,
         "direction": "decrease"},
        {"at_s": 100, "op": "curtail"},
    ])
    cmds = plan(s, CAPS)
    assert [c.kind for c in cmds] == ["command", "reserve", "release", "command"]
    step = cmds[1]
    assert step.power_w == 40 and step.reserve is not None
    assert step.reserve.response_s == 5.0 and step.reserve.hold_s == 30.0
    assert cmds[2].at_s == 45.0 and cmds[2].power_w == 60


def test_reserve_offer_is_limited_to_what_the_ramp_delivers_in_the_window():
    s = scenario([
        {"at_s": 0, "op": "setpoint", "power_pct": 100},
        {"at_s": 10, "op": "reserve", "amount_pct": 50},
    ])
    fast = plan(s, CAPS, speed=1.0)[1].reserve
    slow = plan(s, CAPS, speed=2.5)[1].reserve  # 2 s window: 10 W/s * (2 - 1) s
    assert fast is not None and slow is not None
    assert fast.offered_w == pytest.approx(40.0)
    assert slow.offered_w == pytest.approx(10.0)


def test_percent_of_rated_is_clamped_to_min():
    cmds = plan(scenario([{"at_s": 0, "op": "setpoint", "power_pct": 5}]), CAPS)
    assert cmds[0].power_w == 20


def test_default_scenario_plan_has_every_phase():
    cmds = plan(load("solar_surplus"), CAPS)
    kinds = {c.kind for c in cmds}
    ops = {c.op for c in cmds}
    assert {"surplus", "reserve"} <= kinds
    assert {"setpoint", "curtail", "resume"} <= ops


class FakeSender:
    def __init__(self, fail_on: str | None = None) -> None:
        self.calls: list[tuple] = []
        self.fail_on = fail_on

    def send(self, op, *, power_w, ramp_w_s, validity_s, fallback):
        if op == self.fail_on:
            raise OSError("broker gone")
        self.calls.append((op, power_w, ramp_w_s, validity_s, fallback))
        return f"id{len(self.calls)}", len(self.calls), 0


def test_simulator_sends_what_is_due_in_order_with_scaled_validity():
    cmds = [PlannedCommand(0.0, "setpoint", 40), PlannedCommand(10.0, "curtail"),
            PlannedCommand(20.0, "resume", validity_s=100.0)]
    sender = FakeSender()
    sim = GridSimulator(cmds, sender, speed=2.0, default_validity_s=600.0)
    assert [c.op for c in sim.poll(5.0)] == ["setpoint"]
    assert sim.poll(9.9) == []
    assert [c.op for c in sim.poll(30.0, rig_t_s=15.0)] == ["curtail", "resume"]
    assert sim.pending() == 0
    assert [c[3] for c in sender.calls] == [300.0, 300.0, 50.0]
    assert sim.sent[1].t_s == 15.0 and sim.sent[1].id == "id2"


def test_a_send_failure_is_recorded_not_raised():
    sim = GridSimulator([PlannedCommand(0.0, "curtail")], FakeSender(fail_on="curtail"))
    sent = sim.poll(1.0)
    assert sent[0].error and "broker gone" in sent[0].error


def test_an_ack_is_taken_with_fields_of_the_wrong_type_left_out():
    c = SentCommand(t_s=1.0, op="setpoint", id="ab", power_w=10, ramp_w_s=None, label="x",
                    kind="step")
    c.take_ack(None)
    assert c.ack_t_s is None and c.result is None
    c.take_ack((2.5004, {"result": "accepted", "applied_w": True, "eta_ms": 1.5,
                         "limited_by": "ramp"}))
    assert (c.ack_t_s, c.result, c.applied_w, c.eta_ms, c.limited_by) == (
        2.5, "accepted", None, None, "ramp")
    c.take_ack((3.0, {"applied_w": float("nan"), "eta_ms": 400}))
    assert c.applied_w is None and c.eta_ms == 400
    c.take_ack((3.0, {"applied_w": 12}))
    assert c.applied_w == 12.0
