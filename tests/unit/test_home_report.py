"""The home part of a HIL run without a rig: the [home] scenario section, the agent config the
rig writes for it, and the report's figures (energies, the silent-meter figure, the criteria)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.config import load_config
from hil.report import Recording, markdown, summarize
from hil.report.home import home_summary
from hil.scenario import ScenarioError, load, parse

HEAD = {"scenario": {"name": "h", "duration_s": 100}}


def test_the_home_section_reads_the_day_and_the_meter() -> None:
    s = parse({**HEAD, "home": {"solar_pct": 150, "demand_pct": 20, "meter_interval_s": 1,
                                "silent_at_s": 60, "silent_s": 10,
                                "clouds": [{"at_h": 12, "depth_pct": 60, "width_h": 0.5}]}})
    assert s.home is not None and s.home.day.solar_pct == 150 and s.home.day.wind_pct == 0
    assert s.home.silent_at_s == 60 and s.home.day.clouds[0].depth_pct == 60
    assert load("home_surplus").home is not None


@pytest.mark.parametrize(("home", "why"), [
    ({"wind_pct": 5}, "home.wind_pct: unknown key"),
    ({"silent_at_s": 500}, "home.silent_at_s"),
    ({"meter_interval_s": 0}, "home.meter_interval_s"),
    ({"day_start_h": 12, "day_end_h": 8}, "home.day_end_h"),
])
def test_a_bad_home_section_is_refused_by_key(home: dict[str, Any], why: str) -> None:
    with pytest.raises(ScenarioError, match=why):
        parse({**HEAD, "home": home})


def test_the_rig_points_the_agent_at_the_meter_on_its_broker(tmp_path: Path) -> None:
    from hil.rig import write_agent_config
    from hil.rig.home import METER_FIELD, METER_TOPIC

    path = write_agent_config(load("home_surplus"), tmp_path, broker_url="mqtt://127.0.0.1:1883",
                              pub=tmp_path / "op.pub.pem", chain="/dev/pts/9",
                              board="/dev/pts/10", nonce_difficulty=None, log_level="INFO")
    (tmp_path / "op.pub.pem").write_text("")  # read only when the agent starts
    cfg = load_config(path)
    assert cfg.home.broker_url == "mqtt://127.0.0.1:1883"
    assert (cfg.surplus.meter_topic, cfg.surplus.meter_field) == (METER_TOPIC, METER_FIELD)
    assert cfg.surplus.rise_tau_s == 3.0  # the scenario's [device.agent.surplus]


def _home_recording(miner: list[float], silent: list[float] | None = None) -> Recording:
    """One sample a second: roof 100 W, house 20 W (80 W surplus), the miner as given."""
    n = len(miner)
    rec = Recording(scenario="home", speed=1.0, rated_w=70.0, min_w=19.0, ramp_max_w_s=20.0,
                    temp_max_c=75.0, end_s=float(n - 1))
    rec.meta["home"] = {
        "t_s": [float(i) for i in range(n)], "hour": [12.0] * n, "roof_w": [100.0] * n,
        "house_w": [20.0] * n, "miner_w": miner,
        "grid_w": [20.0 + m - 100.0 for m in miner], "published": n, "silent": silent}
    return rec


def test_the_report_counts_absorbed_surplus_and_the_miners_grid_energy() -> None:
    # 1800 s at 50 W, then 1800 s at 100 W (20 W of it from the grid)
    rec = _home_recording([50.0] * 1800 + [100.0] * 1801)
    h = home_summary(rec)
    assert h is not None
    assert h["surplus_wh"] == pytest.approx(80.0)  # 80 W for an hour
    assert h["absorbed_wh"] == pytest.approx(25.0 + 40.0)
    assert h["miner_wh"] == pytest.approx(75.0)
    assert h["miner_grid_wh"] == pytest.approx(10.0)
    assert h["miner_grid_pct"] == pytest.approx(13.3, abs=0.05)
    assert h["grid_import_wh"] == pytest.approx(10.0)
    assert h["exported_wh"] == pytest.approx(15.0)  # 30 W for half an hour
    assert h["silent_w"] is None


def test_the_silent_meter_figure_is_the_load_late_in_the_silence() -> None:
    miner = [60.0] * 40 + [1.5] * 20 + [60.0] * 10
    rec = _home_recording(miner, silent=[20.0, 40.0])  # 20..60 s: the last quarter is 50..60
    assert home_summary(rec)["silent_w"] == 1.5  # type: ignore[index]
    rec = _home_recording([60.0] * 70, silent=[20.0, 40.0])
    assert home_summary(rec)["silent_w"] == 60.0  # type: ignore[index]


def test_the_home_criteria_judge_the_run_and_the_summary_shows_the_home() -> None:
    rec = _home_recording([50.0] * 1800 + [100.0] * 1801, silent=[600.0, 400.0])
    rec.criteria = {"home_grid_pct": 10.0, "home_silent_w": 5.0}
    s = summarize(rec)
    verdicts = {c["name"]: c["ok"] for c in s["criteria"]}
    assert verdicts == {"home_grid_pct": False, "home_silent_w": False}
    text = markdown(s)
    assert "## Home: following the roof's surplus" in text and "81.2 %" in text
    assert summarize(_home_recording([1.0] * 10))["home"]["silent_w"] is None
    plain = Recording(scenario="grid", speed=1.0, rated_w=70.0, min_w=19.0, ramp_max_w_s=20.0,
                      temp_max_c=75.0, end_s=10.0)
    assert summarize(plain)["home"] is None and "## Home" not in markdown(summarize(plain))
