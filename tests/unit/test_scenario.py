"""Scenario files: every shipped scenario loads; bad files fail with the key named."""

from __future__ import annotations

import tomllib

import pytest

from hil import scenario as sc
from hil.scenario import ScenarioError, load, parse

MINIMAL = {"scenario": {"name": "t", "duration_s": 100}}


def with_(extra: dict) -> dict:
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in MINIMAL.items()}
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(data.get(k), dict):
            data[k].update(v)
        else:
            data[k] = v
    return data


def error_of(data: dict) -> str:
    with pytest.raises(ScenarioError) as exc:
        parse(data, source="x.toml")
    return str(exc.value)


@pytest.mark.parametrize("path", sc.available(), ids=lambda p: p.stem)
def test_every_shipped_scenario_loads(path):
    s = load(path)
    assert s.name == path.stem
    assert s.grid, "a scenario without grid events shows nothing"
    assert s.short.speed >= 1.0
    short = s.shortened()
    assert short.duration_s <= s.duration_s


def test_default_scenario_is_shipped_and_covers_the_day():
    s = load(sc.DEFAULT_SCENARIO)
    ops = [e.op for e in s.grid]
    assert {"surplus", "curtail", "resume", "reserve", "setpoint"} <= set(ops)
    assert s.criteria["tracking_rms_pct"] <= 2.0
    assert s.criteria["cap_violations"] == 0
    assert s.criteria["commands_unacked"] == 0


def test_load_by_name_or_path_and_unknown_name_lists_builtins(tmp_path):
    assert load("solar_surplus").path == load(sc.SCENARIO_DIR / "solar_surplus.toml").path
    with pytest.raises(ScenarioError, match="solar_surplus"):
        load("no_such_scenario")


def test_invalid_toml_is_reported_with_the_file(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("[scenario\nname=1")
    with pytest.raises(ScenarioError, match=r"bad\.toml: not valid TOML"):
        load(p)


def test_unknown_key_is_named_with_a_suggestion():
    msg = error_of(with_({"grid": [{"at_s": 0, "op": "setpoint", "powr_pct": 50}]}))
    assert "grid[0].powr_pct" in msg
    assert "power_pct" in msg


def test_unknown_section_is_named():
    assert "top level" not in error_of(with_({"critera": {}}))
    assert "critera" in error_of(with_({"critera": {}}))


def test_missing_required_key_is_named():
    assert "scenario.duration_s: required" in error_of({"scenario": {"name": "x"}})
    assert "grid[0].op: required (one of setpoint" in error_of(with_({"grid": [{"at_s": 1}]}))


def test_wrong_type_and_range_are_named():
    assert "grid[0].at_s: expected a number, got 'soon'" in error_of(
        with_({"grid": [{"at_s": "soon", "op": "curtail"}]}))
    assert "grid[0].at_s: 500 is out of range [0, 100]" in error_of(
        with_({"grid": [{"at_s": 500, "op": "curtail"}]}))
    assert "grid[0].op: 'explode' is not one of setpoint," in error_of(
        with_({"grid": [{"at_s": 1, "op": "explode"}]}))


def test_setpoint_needs_exactly_one_power():
    assert "exactly one of power_pct or power_w" in error_of(
        with_({"grid": [{"at_s": 1, "op": "setpoint"}]}))
    assert "exactly one" in error_of(
        with_({"grid": [{"at_s": 1, "op": "setpoint", "power_pct": 5, "power_w": 5}]}))


def test_unknown_criterion_is_named_with_the_known_ones():
    msg = error_of(with_({"criteria": {"tracking_rms": 2}}))
    assert "criteria.tracking_rms: unknown criterion" in msg
    assert "tracking_rms_pct" in msg
    msg = error_of(with_({"short": {"criteria": {"regulation_score": 0.75}}}))
    assert "short.criteria.regulation_score: unknown criterion" in msg
    assert "short.criteria.cap_violations: -1 is out of range (must be >= 0)" in error_of(
        with_({"short": {"criteria": {"cap_violations": -1}}}))


def test_fault_kind_and_its_parameters_are_checked():
    assert "fault[0].kind" in error_of(with_({"fault": [{"at_s": 1, "kind": "meteor"}]}))
    assert "fault[0].duration_s: required" in error_of(
        with_({"fault": [{"at_s": 1, "kind": "broker_outage"}]}))
    assert "fault[0].chip" in error_of(
        with_({"fault": [{"at_s": 1, "kind": "agent_kill", "chip": 1}]}))
    assert "fault[0].link" in error_of(
        with_({"fault": [{"at_s": 1, "kind": "serial_garbage", "duration_s": 2, "link": "usb"}]}))


def test_overlapping_curve_and_event_is_rejected():
    msg = error_of(with_({"grid": [
        {"at_s": 0, "op": "surplus", "until_s": 50},
        {"at_s": 20, "op": "curtail"},
    ]}))
    assert "starts inside the surplus event" in msg


def test_reserve_test_must_fit_in_the_run():
    msg = error_of(with_({"grid": [
        {"at_s": 90, "op": "reserve", "product": "secondary1", "amount_pct": 20},
    ]}))
    assert "grid[0].at_s" in msg and "after scenario.duration_s" in msg


def test_reserve_window_is_the_market_product_time_scaled():
    s = parse(with_({"grid": [{"at_s": 0, "op": "reserve", "product": "secondary1",
                               "amount_pct": 20, "time_scale": 60}]}))
    assert s.grid[0].reserve_window_s() == (5.0, 30.0)
    assert s.grid[0].end_s() == 35.0


def test_cloud_entries_are_checked():
    msg = error_of(with_({"grid": [{"at_s": 0, "op": "surplus", "until_s": 50,
                                     "clouds": [{"at_h": 30}]}]}))
    assert "grid[0].clouds[0].at_h" in msg


def test_events_are_sorted_and_ambient_interpolates():
    s = parse(with_({
        "grid": [{"at_s": 50, "op": "resume"}, {"at_s": 10, "op": "curtail"}],
        "ambient": [{"at_s": 60, "temp_c": 40}, {"at_s": 20, "temp_c": 20}],
    }))
    assert [e.op for e in s.grid] == ["curtail", "resume"]
    assert s.ambient_at(0) == 20
    assert s.ambient_at(40) == pytest.approx(30)
    assert s.ambient_at(99) == 40


def test_default_criteria_demand_zero_violations_and_can_be_overridden():
    s = parse(with_({"criteria": {"ramp_violations": 2}}))
    assert s.criteria["cap_violations"] == 0
    assert s.criteria["ramp_violations"] == 2


def test_short_version_cuts_events_and_applies_its_criteria():
    s = parse(with_({
        "grid": [{"at_s": 0, "op": "surplus", "until_s": 80},
                 {"at_s": 90, "op": "curtail"}],
        "fault": [{"at_s": 70, "kind": "agent_kill"}],
        "criteria": {"tracking_rms_pct": 2},
        "short": {"speed": 2, "until_s": 60, "criteria": {"tracking_rms_pct": 5}},
    }))
    short = s.shortened()
    assert short.duration_s == 60
    assert [e.op for e in short.grid] == ["surplus"]
    assert short.grid[0].until_s == 60
    assert short.faults == ()
    assert short.criteria["tracking_rms_pct"] == 5


def test_agent_overrides_pass_through():
    data = tomllib.loads(
        '[scenario]\nname="a"\nduration_s=10\n[device.agent.envelope]\nramp_max_w_s=5.0\n')
    assert parse(data).device.agent == {"envelope": {"ramp_max_w_s": 5.0}}


def test_ranges_with_one_bound_or_an_open_end_say_so():
    surplus = {"at_s": 0, "op": "surplus", "until_s": 50}
    assert "grid[0].interval_s: 0.01 is out of range (must be >= 0.1)" in error_of(
        with_({"grid": [{**surplus, "interval_s": 0.01}]}))
    assert "grid[0].clouds[0].width_h: 0 is out of range (0, 24]" in error_of(
        with_({"grid": [{**surplus, "clouds": [{"at_h": 12, "width_h": 0}]}]}))


def test_a_table_array_written_as_a_value_is_named_with_its_syntax():
    assert "x.toml: grid: expected a list of tables ([[grid]])" in error_of(with_({"grid": 3}))


def test_an_empty_label_is_no_label():
    s = parse(with_({"grid": [{"at_s": 1, "op": "curtail", "label": ""}]}))
    assert s.grid[0].label == ""
