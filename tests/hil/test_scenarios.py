"""Every shipped scenario, short version, on the full rig (broker + emulator + agent process +
grid simulator): its criteria hold. The default scenario runs through the CLI exactly as
`make demo` does. Full-length runs are soaks (`slow`)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from hil.pytest_plugin import failed_criteria
from hil.scenario import DEFAULT_SCENARIO, available, load

OTHER_SCENARIOS = [p.stem for p in available() if p.stem != DEFAULT_SCENARIO]


def test_default_scenario_short_through_the_cli(tmp_path: Path, request: pytest.FixtureRequest):
    """`gridminer hil run --short` writes the report and exits 0 when every criterion holds."""
    if request.config.getoption("--hil-target", default=None):
        pytest.skip("the CLI run uses the emulator; --hil-target runs the fixture tests")
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "agent", "hil", "run", DEFAULT_SCENARIO, "--short", "--out",
         str(out), "--quiet"],
        capture_output=True, text=True, timeout=240,
    )
    summary_path = out / "summary.json"
    assert summary_path.is_file(), proc.stderr[-3000:]
    summary = json.loads(summary_path.read_text())
    summary["out_dir"] = str(out)
    assert proc.returncode == 0, failed_criteria(summary) + "\n" + proc.stdout
    assert (out / "report.png").read_bytes()[:4] == b"\x89PNG"
    assert "PASS" in (out / "summary.md").read_text()
    assert str(out / "report.png") in proc.stdout
    assert summary["truth_source"] == "emulator"
    assert summary["commands"]["sent"] >= 10
    assert summary["commands"]["acked"] == summary["commands"]["sent"]
    assert summary["response_s"]["steps"] >= 3
    assert summary["tracked_s"] > 3.0
    assert summary["violations"] == {"cap": 0, "ramp": 0, "temp": 0}
    pool = summary["pool"]  # the demo mines to the rig's lab pool, which checks every share
    assert pool["accepted"] > 50 and pool["invalid"] == 0 and pool["count_mismatch"] == 0
    assert f"pool shares accepted/rejected/invalid {pool['accepted']}/" in proc.stdout

    # the same run judged against a bound it cannot meet: `hil report` exits 1
    rec_path = out / "recording.json"
    rec = json.loads(rec_path.read_text())
    rec["criteria"]["tracking_rms_pct"] = 0.0
    rec_path.write_text(json.dumps(rec))
    again = subprocess.run([sys.executable, "-m", "agent", "hil", "report", str(out)],
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 1
    assert "FAIL" in again.stdout


@pytest.mark.parametrize("name", OTHER_SCENARIOS)
def test_scenario_short(name: str, hil_run) -> None:
    summary = hil_run(name)
    assert summary["passed"], failed_criteria(summary)
    assert summary["commands"]["sent"] >= len(load(name).shortened().grid)


@pytest.mark.slow
@pytest.mark.parametrize("name", [p.stem for p in available()])
def test_scenario_full_length(name: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    from hil.rig import RigOptions, RigTarget, run_scenario

    target_text = request.config.getoption("--hil-target", default=None)
    out = tmp_path / name
    summary = run_scenario(RigOptions(
        scenario=load(name), out_dir=out, speed=1.0,
        broker_url=request.config.getoption("--hil-broker", default=None),
        target=RigTarget.parse(target_text) if target_text else None,
    ))
    summary["out_dir"] = str(out)
    assert summary["passed"], failed_criteria(summary)


def test_a_board_given_by_serial_urls_is_judged_on_the_agents_telemetry(tmp_path: Path) -> None:
    """The --hil-target path without lab hardware: the board behind its two serial ports (here
    the emulator's ptys, started apart from the rig) is all the rig gets."""
    from hil.rig import EmulatorProcess, RigOptions, RigTarget, run_scenario

    scenario = load("broker_outage")
    board = EmulatorProcess(scenario, tmp_path, sys.executable, 30.0)
    try:
        # the rig's agent must verify this board's nonces: pass the emulation difficulty on
        short = scenario.shortened()
        agent = {**short.device.agent, "chain": {"nonce_difficulty": board.difficulty}}
        short = replace(short, device=replace(short.device, agent=agent))
        out = tmp_path / "target"
        summary = run_scenario(RigOptions(scenario=short, out_dir=out, speed=short.short.speed,
                                          target=RigTarget(board.chain, board.board)))
    finally:
        board.stop()
    summary["out_dir"] = str(out)
    assert summary["truth_source"] == "telemetry"
    assert summary["passed"], failed_criteria(summary)
    assert summary["telemetry_messages"] > 20
