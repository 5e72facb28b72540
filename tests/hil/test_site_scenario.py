"""The site scenario end to end through `gridminer hil run`, as `make demo-site` plays it: a
real Mosquitto per site, two equal fleets of virtual devices (`gridminer fleet`, their own
processes), `gridminer site` as its own process (SIGKILLed and restarted mid-run), the grid
operator's signed commands and the baseline dispatcher side by side.

The test lane plays the short version (10x) on a smaller site than the scenario's 1,300
devices (SITE_TEST_DEVICES a fleet; two fleets share the CI machine's 2 cores with the tests'
other processes); `make demo-site` plays the 1,300."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from hil.site.scenario import load_site

ROOT = Path(__file__).parents[2]
SITE_TEST_DEVICES = 300


def _scenario_with(tmp_path: Path, devices: int) -> Path:
    """The shipped site scenario, its short version on `devices` devices a fleet, both fleets
    at once (small fleets fit side by side on the CI machine)."""
    source = load_site("site_surplus").path
    assert source is not None
    text = source.read_text(encoding="utf-8")
    assert "[short]\n" in text
    path = tmp_path / "site_surplus.toml"
    text = text.replace('side_by_side = "sequential"', 'side_by_side = "parallel"', 1)
    path.write_text(text.replace("[short]\n", f"[short]\ndevices = {devices}\n", 1))
    with open(path, "rb") as fh:
        assert tomllib.load(fh)["short"]["devices"] == devices
    return path


def _hil_run(scenario: str, out: Path, *args: str, timeout_s: float) -> dict[str, Any]:
    """`gridminer hil run SCENARIO ARGS --out OUT`: its summary, once its exit status was
    checked against the summary's criteria and every criterion was found met."""
    proc = subprocess.run(
        [sys.executable, "-m", "agent", "hil", "run", scenario, *args, "--out", str(out),
         "--quiet"], cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
    summary_path = out / "summary.json"
    assert summary_path.is_file(), proc.stderr[-3000:]
    s: dict[str, Any] = json.loads(summary_path.read_text())
    failed = [c for c in s["criteria"] if not c["ok"]]
    assert proc.returncode == (1 if failed else 0), proc.stdout + proc.stderr[-2000:]
    assert not failed, f"{failed}\n{proc.stdout}"
    assert (out / "report.png").read_bytes()[:4] == b"\x89PNG"
    assert "PASS" in (out / "summary.md").read_text()
    return s


def test_site_surplus_short_through_the_cli(tmp_path: Path) -> None:
    out = tmp_path / "run"
    s = _hil_run(str(_scenario_with(tmp_path, SITE_TEST_DEVICES)), out, "--short",
                 timeout_s=600)

    gm, base = s["gridminer"], s["baseline"]
    # the fleet lost 10 % of its devices and the controller went on after its SIGKILL
    assert gm["online"]["start"] == SITE_TEST_DEVICES
    assert gm["online"]["end"] == SITE_TEST_DEVICES - round(0.1 * SITE_TEST_DEVICES)
    assert len(s["site"]["down"]) == 1 and s["site"]["crashes"] == 0
    down_end = s["site"]["down"][0][1]
    rec = json.loads((out / "recording.json").read_text())
    acked_after = [c for c in rec["passes"]["gridminer"]["commands"]
                   if c["t_s"] > down_end + 2.0 and c.get("result") == "accepted"]
    assert len(acked_after) > 50  # the restarted controller takes the operator's commands
    # what sites use today, on the same fleet and signal, measured beside it
    assert base is not None and s["side_by_side"] == "parallel"
    assert gm["ramp_violations"] == 0
    assert s["ratio"]["tracking_rms_ratio"] < 1.0
    assert s["ratio"]["energy_off_target_ratio"] < 1.0
    assert gm["regulation"][0]["score"] > base["regulation"][0]["score"]
    assert gm["commands"]["sent"] > 0 and base["commands"]["sent"] > 0

    # the same run judged again from its recording, against a bound it cannot meet
    rec["criteria"]["tracking_rms_pct"] = 0.0
    (out / "recording.json").write_text(json.dumps(rec))
    again = subprocess.run([sys.executable, "-m", "agent", "hil", "report", str(out)],
                           cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert again.returncode == 1, again.stderr
    assert "FAIL" in again.stdout


@pytest.mark.slow
def test_site_surplus_full_length_on_1300_devices(tmp_path: Path) -> None:
    """The whole scenario at 1x (37 min, then 37 min more for the baseline) on the scenario's
    1,300 devices a fleet: the figures the issue asks for (tracking <= 1 % RMS, RegD score >=
    0.9, ...) as its criteria."""
    s = _hil_run("site_surplus", tmp_path / "run", timeout_s=6000)
    assert s["devices"] == 1300 and s["gridminer"]["online"]["start"] == 1300
