"""The report of a HIL run: what it recorded, the figures computed from it, the summary and the
plot. `write_report(recording, DIR)` writes DIR/recording.json, DIR/summary.json,
DIR/summary.md and DIR/report.png; the parts live in `recording` (the recorded series),
`metrics` (the measures and their definitions), `summary` (figures, criteria, markdown) and
`plot` (matplotlib, imported only when drawing).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hil.report.home import plot_home
from hil.report.metrics import (
    ACCEPTED,
    Step,
    agent_energy_wh,
    cap_violations,
    energy_wh,
    exempt_windows,
    expected_trips,
    largest_change_w,
    moving_average,
    percentile,
    ramp_violations,
    reference_steps,
    reserve_results,
    telemetry_gaps,
    temp_violations,
    tracking,
    trip_drops,
    window_changes,
)
from hil.report.plot import plot
from hil.report.recording import Recording, Series, day_clock, read_recording, write_recording
from hil.report.summary import check_criteria, figure, markdown, summarize, write_summary

__all__ = [
    "ACCEPTED",
    "Recording",
    "Series",
    "Step",
    "agent_energy_wh",
    "cap_violations",
    "check_criteria",
    "day_clock",
    "energy_wh",
    "exempt_windows",
    "expected_trips",
    "figure",
    "largest_change_w",
    "markdown",
    "moving_average",
    "percentile",
    "plot",
    "ramp_violations",
    "read_recording",
    "reference_steps",
    "reserve_results",
    "summarize",
    "telemetry_gaps",
    "temp_violations",
    "tracking",
    "trip_drops",
    "window_changes",
    "write_recording",
    "write_report",
    "write_summary",
]


def write_report(rec: Recording, out_dir: Path) -> dict[str, Any]:
    """Everything of a run into DIR: recording.json, summary.json, summary.md, report.png."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarize(rec)
    write_recording(rec, out_dir)
    write_summary(summary, out_dir)
    try:
        plot(rec, summary, out_dir / "report.png")
        plot_home(rec, summary, out_dir / "home.png")  # a [home] run's roof and miner
    except ImportError as exc:  # the agent's own install has no matplotlib: figures still count
        print(f"gridminer hil: no plot ({exc}); install matplotlib (pip install "
              "'gridminer[report]') for report.png", file=sys.stderr)
    return summary
