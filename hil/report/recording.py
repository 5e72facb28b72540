"""What a HIL run recorded: `Series` (a time series) and `Recording` (everything of one run).

Times are rig seconds (0 = scenario start; warm-up is negative). `truth_*` is the board's true
state (from the emulator, or from the agent's telemetry on a real rig), `telemetry` what the
agent published, `commands` what the simulator sent and the acks, `faults` what was injected.
A recording is saved as DIR/recording.json so a report can be redrawn without a rerun.
"""

from __future__ import annotations

import bisect
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hil.scenario import Measure, Scenario


@dataclass
class Series:
    """One time series: `t_s` rising, `v` the values (None = no reading)."""

    t_s: list[float] = field(default_factory=list)
    v: list[float | None] = field(default_factory=list)

    def add(self, t_s: float, value: float | None) -> None:
        if self.t_s and t_s < self.t_s[-1]:
            return  # out of order: dropped
        self.t_s.append(t_s)
        self.v.append(value)

    def points(self, t0: float = -math.inf, t1: float = math.inf) -> list[tuple[float, float]]:
        return [(t, v) for t, v in zip(self.t_s, self.v, strict=True)
                if v is not None and t0 <= t <= t1]

    def at(self, t_s: float) -> float | None:
        """Linear interpolation (holds the end values outside the series)."""
        pts = self.points()
        if not pts:
            return None
        ts = [p[0] for p in pts]
        i = bisect.bisect_left(ts, t_s)
        if i <= 0:
            return pts[0][1]
        if i >= len(pts):
            return pts[-1][1]
        (ta, va), (tb, vb) = pts[i - 1], pts[i]
        if tb == ta:
            return vb
        return va + (vb - va) * (t_s - ta) / (tb - ta)


@dataclass
class Recording:
    """Everything a run recorded. Times are rig seconds from scenario start."""

    scenario: str
    speed: float
    rated_w: float
    min_w: float
    ramp_max_w_s: float
    temp_max_c: float
    end_s: float
    default_w: float | None = None
    truth_source: str = "emulator"
    truth_power_w: Series = field(default_factory=Series)
    truth_temp_c: Series = field(default_factory=Series)
    truth_hashrate_ghs: Series = field(default_factory=Series)
    truth_freq_mhz: Series = field(default_factory=Series)
    ambient_c: Series = field(default_factory=Series)
    wall_power_w: Series = field(default_factory=Series)  # at the wall, through the PSU model
    telemetry: list[dict[str, Any]] = field(default_factory=list)  # t_s, epoch + telemetry map
    commands: list[dict[str, Any]] = field(default_factory=list)  # SentCommand.as_dict()
    faults: list[dict[str, Any]] = field(default_factory=list)  # t_s, end_s, kind, label, exempt
    events: list[dict[str, Any]] = field(default_factory=list)  # t_s, text
    agent_restarts: int = 0
    agent_crashes: int = 0
    measure: Measure = field(default_factory=Measure)
    criteria: dict[str, float] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    #: the compressed day: (rig s, hour of day) points, linear between and beyond (empty: none)
    day_clock: list[tuple[float, float]] = field(default_factory=list)
    pool: dict[str, Any] = field(default_factory=dict)  # the lab pools' side (hil.rig.pools)

    def telemetry_series(self, key: str) -> Series:
        s = Series()
        for m in self.telemetry:
            value = m.get(key)
            s.add(float(m["t_s"]), float(value) if isinstance(value, int | float) else None)
        return s

    # ---- persistence: DIR/recording.json, so a report can be redrawn without a rerun
    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["measure"] = asdict(self.measure)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Recording:
        d = dict(d)
        for key in ("truth_power_w", "truth_temp_c", "truth_hashrate_ghs", "truth_freq_mhz",
                    "ambient_c", "wall_power_w"):
            d[key] = Series(**d.get(key, {}))
        d["measure"] = Measure(**d.get("measure", {}))
        d["day_clock"] = [(float(t), float(h)) for t, h in d.get("day_clock", [])]
        return cls(**d)


def write_recording(rec: Recording, out_dir: Path) -> Path:
    """DIR/recording.json: every series, command, ack and fault (what `hil report` reads)."""
    path = out_dir / "recording.json"
    path.write_text(json.dumps(rec.to_json(), default=str) + "\n", encoding="utf-8")
    return path


def read_recording(path: Path) -> Recording:
    """A recording written by `write_recording`."""
    return Recording.from_json(json.loads(path.read_text(encoding="utf-8")))



def day_clock(scenario: Scenario, speed: float) -> list[tuple[float, float]]:
    """The hour of day a scenario plays, as (rig s, hour) points: the start and end of each
    `surplus` event's day (`day_start_h`, `day_end_h`); empty when it names no hours."""
    points: list[tuple[float, float]] = []
    for event in scenario.grid:
        if event.surplus is None or event.until_s is None:
            continue
        points += [(event.at_s / speed, event.surplus.day_start_h),
                   (event.until_s / speed, event.surplus.day_end_h)]
    return sorted(points)


def hour_at(clock: list[tuple[float, float]], t_s: float) -> float:
    """The hour of day at rig time `t_s`: linear between the clock's points, and beyond them at
    the rate of the nearest two."""
    if len(clock) < 2:
        raise ValueError("a day clock needs two points")
    i = min(max(bisect.bisect_right([p[0] for p in clock], t_s), 1), len(clock) - 1)
    (ta, ha), (tb, hb) = clock[i - 1], clock[i]
    return ha + (hb - ha) * (t_s - ta) / (tb - ta) if tb > ta else hb
