"""pytest plugin of the lab rig: run HIL scenarios from tests, on the emulator or a real board.

Options:

* `--hil-target chain=URL,board=URL`: play the scenarios against a real board reached through
  pyserial URLs (e.g. `chain=rfc2217://lab-pi:4001,board=rfc2217://lab-pi:4002`) instead of the
  emulator. Then ambient temperature and board faults cannot be injected (those scenario parts
  are skipped and listed in the summary), and violations are counted from the agent's own
  telemetry, not from an independent truth: a wrong sensor on the board goes unnoticed.
* `--hil-broker URL`: use a running broker instead of a private Mosquitto.
* `--hil-out DIR`: keep each run's report in DIR/NAME (default: pytest's tmp_path).
* `--hil-full`: play the full scenarios at their normal speed instead of the short versions.

Fixture `hil_run(name) -> summary` plays one scenario and returns its summary (the report is
written too); the test asserts the criteria.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("hil", "gridminer hardware-in-the-loop rig")
    group.addoption("--hil-target", metavar="chain=URL,board=URL", default=None,
                    help="run HIL scenarios against a real board at these serial URLs")
    group.addoption("--hil-broker", metavar="URL", default=None,
                    help="use this MQTT broker instead of a private Mosquitto")
    group.addoption("--hil-out", metavar="DIR", default=None,
                    help="write each HIL report to DIR/<scenario>")
    group.addoption("--hil-full", action="store_true", default=False,
                    help="play the full scenarios instead of their short versions")


@pytest.fixture
def hil_run(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[str], dict[str, Any]]:
    """Play a scenario (name or path) on the rig; returns the summary."""
    from hil.rig import RigOptions, RigTarget, run_scenario
    from hil.scenario import load

    config = request.config
    target_text = config.getoption("--hil-target")
    target = RigTarget.parse(target_text) if target_text else None
    broker = config.getoption("--hil-broker")
    out_root = config.getoption("--hil-out")
    full = config.getoption("--hil-full")

    def play(name: str) -> dict[str, Any]:
        scenario = load(name)
        speed = 1.0 if full else scenario.short.speed
        if not full:
            scenario = scenario.shortened()
        out = Path(out_root) / scenario.name if out_root else tmp_path / scenario.name
        summary = run_scenario(RigOptions(scenario=scenario, out_dir=out, speed=speed,
                                          broker_url=broker, target=target, progress=None))
        summary["out_dir"] = str(out)
        return summary

    return play


def failed_criteria(summary: dict[str, Any]) -> str:
    """A readable list of the criteria a run failed (for assertion messages)."""
    bad = [f"{c['name']} = {c['value']} (bound {c['bound']:g})"
           for c in summary["criteria"] if not c["ok"]]
    return "; ".join(bad) + f" -- report in {summary.get('out_dir', '?')}"
