"""What a HIL run recorded, the figures computed from it, and the report (plot + summary).

`Recording` holds time series in rig seconds (0 = scenario start; warm-up is negative):
`truth` is the board's true state (from the emulator, or from the agent's telemetry on a real
rig), `telemetry` what the agent published, `commands` what the simulator sent and the acks,
`faults` what was injected. `summarize(recording)` computes the figures; every violation is
counted from `truth`, never from the agent's own account of itself.

Definitions (rated power = the device's declared `caps.max_w`):

* reference: what the operator asked for, from each accepted command: a setpoint's `power_w`
  clamped into [min_w, max_w]; `resume` the device default; `curtail`/`standby` the ack's
  `applied_w` (the device's own floor), tracked one-sided (only power above it is an error).
* allowed response of a step: `settle_s` + |step| / ramp, ramp = the command's `ramp_w_s` or the
  device's declared `ramp_max_w_s`, whichever is lower.
* tracking error: |true power - reference| in % of rated, over the time after each step's allowed
  response until the next command; RMS (time-weighted) and max.
* response: from the command to 90 % of the step (steps under `min_step_pct` of rated skipped).
* violations, counted as episodes: cap (true power, averaged over 1 s like a power meter,
  above max_w by more than `cap_tolerance_pct` of rated), ramp (true power changing, between any
  two moments at most `ramp_window_s` apart, by more than the declared ramp x `ramp_window_s`,
  beyond `ramp_tolerance_pct` plus 1 % of rated for sensor noise), temp (hottest true chip
  temperature above the agent's hard limit).
* telemetry gaps: missing `seq` numbers within one agent process (a restart starts a new run).
"""

from __future__ import annotations

import bisect
import itertools
import json
import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hil.scenario import CRITERIA, Measure

TRACKED_OPS = ("setpoint", "resume", "curtail", "standby")
ONE_SIDED_OPS = ("curtail", "standby")
CAP_WINDOW_S = 1.0
SAME_REFERENCE_PCT = 0.5  # a command this close to the previous target continues its step
ACCEPTED = ("accepted", "scheduled", "duplicate")
TRIP_GRACE_S = 1.5  # an expected trip shows in telemetry this long after its fault at the latest
TRIP_SETTLE_S = 0.5  # a trip's drop is over this long after the first `tripped` telemetry


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
    telemetry: list[dict[str, Any]] = field(default_factory=list)  # t_s, epoch + telemetry map
    commands: list[dict[str, Any]] = field(default_factory=list)  # SentCommand.as_dict()
    faults: list[dict[str, Any]] = field(default_factory=list)  # t_s, end_s, kind, label, exempt
    events: list[dict[str, Any]] = field(default_factory=list)  # t_s, text
    agent_restarts: int = 0
    agent_crashes: int = 0
    measure: Measure = field(default_factory=Measure)
    criteria: dict[str, float] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

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
                    "ambient_c"):
            d[key] = Series(**d.get(key, {}))
        d["measure"] = Measure(**d.get("measure", {}))
        return cls(**d)


# --------------------------------------------------------------------------- figures


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100), linear between closest ranks; None for no values."""
    if not values:
        return None
    xs = sorted(values)
    k = (len(xs) - 1) * q / 100.0
    lo = math.floor(k)
    hi = math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def _in_any(t: float, windows: Iterable[tuple[float, float]]) -> bool:
    return any(a <= t <= b for a, b in windows)


def exempt_windows(rec: Recording, what: str) -> list[tuple[float, float]]:
    """Windows where `what` ("tracking" or "ramp") is not judged, from the faults' exemptions;
    for ramp also the safety trips a fault expects (a trip drops the load at once)."""
    out = []
    for f in rec.faults:
        window = (f.get("exempt") or {}).get(what)
        if not window:
            continue
        pairs = window if isinstance(window[0], list | tuple) else [window]
        out += [(float(a), float(b)) for a, b in pairs]
    if what == "ramp":
        out += [(a, b + TRIP_SETTLE_S) for _, drops in expected_trips(rec) for a, b in drops]
    return out


def trip_drops(rec: Recording) -> list[tuple[float, float]]:
    """Each move of the agent into `tripped`: (its last telemetry before, its first one in)."""
    out = []
    for prev, m in itertools.pairwise(rec.telemetry):
        if m.get("mode") == "tripped" and prev.get("mode") != "tripped":
            out.append((float(prev["t_s"]), float(m["t_s"])))
    return out


def expected_trips(rec: Recording) -> list[tuple[dict[str, Any], list[tuple[float, float]]]]:
    """Each fault that expects a safety trip (`expect = "trip"`), with the trips seen while it
    lasted (plus one telemetry period and a margin)."""
    drops = trip_drops(rec)
    out = []
    for f in rec.faults:
        if f.get("expect") != "trip":
            continue
        t0 = float(f["t_s"])
        t1 = float(f["end_s"] if f.get("end_s") is not None else rec.end_s) + TRIP_GRACE_S
        out.append((f, [(a, b) for a, b in drops if t0 <= b <= t1]))
    return out


@dataclass
class Step:
    """One accepted command as a step of the reference."""

    t_s: float
    end_s: float
    op: str
    label: str
    reference_w: float
    start_w: float | None
    ramp_w_s: float
    allowed_s: float
    one_sided: bool = False  # only power above the reference is an error
    response_s: float | None = None
    late: bool = False
    superseded: bool = False
    exempt: bool = False


def reference_steps(rec: Recording) -> list[Step]:
    """The accepted commands that move the reference, each with its window and allowed time."""
    cmds = [c for c in rec.commands
            if c.get("op") in TRACKED_OPS and c.get("result") in ACCEPTED and not c.get("error")]
    cmds.sort(key=lambda c: float(c["t_s"]))
    steps: list[Step] = []
    exempt = exempt_windows(rec, "tracking")
    for i, c in enumerate(cmds):
        t = float(c["t_s"])
        end = float(cmds[i + 1]["t_s"]) if i + 1 < len(cmds) else rec.end_s
        op = str(c["op"])
        if op == "setpoint":
            ref = min(rec.rated_w, max(rec.min_w, float(c.get("power_w") or 0.0)))
        elif op == "resume":
            ref = rec.default_w if rec.default_w is not None else rec.rated_w
            if c.get("applied_w") is not None:
                ref = float(c["applied_w"])
        else:
            ref = float(c["applied_w"]) if c.get("applied_w") is not None else (
                rec.min_w if op == "curtail" else 0.0)
        one_sided = op in ONE_SIDED_OPS
        if c.get("limited_by") == "thermal" and c.get("applied_w") is not None:
            # the device said it is too hot for more: its thermal limit is the reference
            ref = min(ref, float(c["applied_w"]))
            one_sided = True
        ramp = rec.ramp_max_w_s
        if c.get("ramp_w_s"):
            ramp = min(ramp, float(c["ramp_w_s"]))
        start = rec.truth_power_w.at(t)
        delta = abs(ref - start) if start is not None else rec.rated_w
        if one_sided and start is not None and start <= ref:
            delta = 0.0
        allowed = rec.measure.settle_s + delta / max(ramp, 1e-9)
        prev = steps[-1] if steps else None
        if (prev is not None and prev.one_sided == one_sided and prev.ramp_w_s == ramp
                and abs(prev.reference_w - ref) < SAME_REFERENCE_PCT / 100.0 * rec.rated_w):
            prev.end_s = end  # the same target again (a resume, then the curve at 100 %)
            continue
        steps.append(Step(t, end, op, str(c.get("label", "")), ref, start, ramp, allowed,
                          one_sided=one_sided, exempt=_in_any(t, exempt)))
    return steps


def _response(rec: Recording, step: Step) -> None:
    """Fill `response_s`, `late`, `superseded` of a step from the true power."""
    if step.start_w is None or step.exempt or step.t_s < 0.0:
        return
    delta = step.reference_w - step.start_w
    if abs(delta) < rec.rated_w * rec.measure.min_step_pct / 100.0:
        return
    if step.one_sided and delta > 0:
        return
    for t, p in rec.truth_power_w.points(step.t_s, step.end_s):
        if (p - step.start_w) / delta >= 0.9:
            step.response_s = t - step.t_s
            step.late = step.response_s > step.allowed_s
            return
    if step.end_s - step.t_s >= step.allowed_s:
        step.late = True
    else:
        step.superseded = True


def tracking(rec: Recording, steps: Sequence[Step]) -> dict[str, Any]:
    """Tracking error after each step's allowed response time (RMS time-weighted, max)."""
    exempt = exempt_windows(rec, "tracking")
    total_w2 = 0.0
    total_t = 0.0
    worst = 0.0
    worst_at: float | None = None
    for step in steps:
        t0 = max(0.0, step.t_s + step.allowed_s)
        pts = rec.truth_power_w.points(t0, step.end_s)
        for (ta, pa), (tb, _) in itertools.pairwise(pts):
            if _in_any(ta, exempt) or step.op == "standby":
                continue  # standby: the board's own floor is not a target
            err = pa - step.reference_w
            if step.one_sided:
                err = max(0.0, err)
            pct = abs(err) / rec.rated_w * 100.0
            dt = tb - ta
            total_w2 += pct * pct * dt
            total_t += dt
            if pct > worst:
                worst, worst_at = pct, ta
    return {
        "rms_pct": math.sqrt(total_w2 / total_t) if total_t > 0 else None,
        "max_pct": worst if total_t > 0 else None,
        "max_at_s": worst_at,
        "tracked_s": total_t,
    }


def _episodes(flags: Sequence[tuple[float, bool]]) -> list[tuple[float, float]]:
    """Runs of True as (start, end) times."""
    out: list[tuple[float, float]] = []
    start: float | None = None
    last = 0.0
    for t, bad in flags:
        if bad and start is None:
            start = t
        if not bad and start is not None:
            out.append((start, last))
            start = None
        last = t
    if start is not None:
        out.append((start, last))
    return out


def moving_average(points: Sequence[tuple[float, float]],
                   window_s: float) -> list[tuple[float, float]]:
    """Trailing time-window average (what a power meter with `window_s` integration shows)."""
    out = []
    lo = 0
    area = 0.0
    for i in range(len(points)):
        if i > 0:
            (ta, pa), (tb, pb) = points[i - 1], points[i]
            area += (tb - ta) * (pa + pb) / 2.0
        while lo < i and points[i][0] - points[lo + 1][0] >= window_s:
            (ta, pa), (tb, pb) = points[lo], points[lo + 1]
            area -= (tb - ta) * (pa + pb) / 2.0
            lo += 1
        span = points[i][0] - points[lo][0]
        out.append((points[i][0], area / span if span > 0 else points[i][1]))
    return out


def cap_violations(rec: Recording) -> list[tuple[float, float]]:
    """True power over 1 s (a power meter's integration) above the declared cap + tolerance."""
    limit = rec.rated_w * (1.0 + rec.measure.cap_tolerance_pct / 100.0)
    averaged = moving_average(rec.truth_power_w.points(), CAP_WINDOW_S)
    return _episodes([(t, p > limit) for t, p in averaged if t >= 0.0])


def temp_violations(rec: Recording) -> list[tuple[float, float]]:
    return _episodes([(t, v > rec.temp_max_c) for t, v in rec.truth_temp_c.points(0.0)])


def window_changes(points: Sequence[tuple[float, float]], window_s: float,
                   partial: bool = False) -> list[tuple[float, float]]:
    """(t, largest change of the value between two moments in [t, t + window_s]) for each
    point: a sliding max - min. Windows that run past the last point are left out unless
    `partial`."""
    out: list[tuple[float, float]] = []
    top: deque[int] = deque()  # indices of the window's falling values: its max first
    bottom: deque[int] = deque()  # rising values: its min first
    j = 0
    for i, (t, _) in enumerate(points):
        while j < len(points) and points[j][0] <= t + window_s:
            v = points[j][1]
            while top and points[top[-1]][1] <= v:
                top.pop()
            while bottom and points[bottom[-1]][1] >= v:
                bottom.pop()
            top.append(j)
            bottom.append(j)
            j += 1
        if j >= len(points) and not partial:
            break
        while top[0] < i:
            top.popleft()
        while bottom[0] < i:
            bottom.popleft()
        out.append((t, points[top[0]][1] - points[bottom[0]][1]))
    return out


def largest_change_w(points: Sequence[tuple[float, float]], t0: float, t1: float,
                     window_s: float = 1.0) -> float:
    """Largest change of a power series between two moments in [t0, t1] at most `window_s`
    apart (W)."""
    inside = [(t, p) for t, p in points if t0 <= t <= t1]
    return max((c for _, c in window_changes(inside, window_s, partial=True)), default=0.0)


def ramp_violations(rec: Recording) -> tuple[list[tuple[float, float]], float]:
    """Episodes where the true power changed, between two moments at most `ramp_window_s`
    apart, by more than the declared ramp allows over that window (beyond tolerance), and the
    fastest move seen outside exempt windows (W/s: largest change / window)."""
    m = rec.measure
    exempt = exempt_windows(rec, "ramp")
    allowed_w = (rec.ramp_max_w_s * m.ramp_window_s * (1.0 + m.ramp_tolerance_pct / 100.0)
                 + 0.01 * rec.rated_w)  # 1 % of rated for sensor noise
    flags = []
    fastest = 0.0
    for t, change_w in window_changes(rec.truth_power_w.points(), m.ramp_window_s):
        if t < 0.0:
            continue
        if any(a <= t + m.ramp_window_s and t <= b for a, b in exempt):
            continue  # not judged; a move seen on both sides of it is one episode
        fastest = max(fastest, change_w / m.ramp_window_s)
        flags.append((t, change_w > allowed_w))
    return _episodes(flags), fastest


def telemetry_gaps(rec: Recording) -> dict[str, int]:
    """Gaps in telemetry `seq` within each agent process run (`epoch`); seq wraps at 2**32."""
    gaps = missing = 0
    last: dict[Any, int] = {}
    for m in rec.telemetry:
        seq = m.get("seq")
        if not isinstance(seq, int):
            continue
        epoch = m.get("epoch", 0)
        if epoch in last:
            d = (seq - last[epoch]) % 2**32
            if d == 0 or d > 2**31:
                continue  # duplicate or out of order
            if d > 1:
                gaps += 1
                missing += d - 1
        last[epoch] = seq
    return {"gaps": gaps, "missing": missing, "messages": len(rec.telemetry)}


def energy_wh(series: Series, t0: float, t1: float) -> float:
    pts = series.points(t0, t1)
    return sum((tb - ta) * (pa + pb) / 2.0
               for (ta, pa), (tb, pb) in itertools.pairwise(pts)) / 3600.0


def agent_energy_wh(rec: Recording) -> float | None:
    """Energy the agent itself counted (`energy_wh`), summed over its process runs."""
    first: dict[Any, float] = {}
    last: dict[Any, float] = {}
    for m in rec.telemetry:
        if m.get("t_s", -1.0) < 0 or not isinstance(m.get("energy_wh"), int | float):
            continue
        epoch = m.get("epoch", 0)
        first.setdefault(epoch, float(m["energy_wh"]))
        last[epoch] = float(m["energy_wh"])
    if not last:
        return None
    return sum(last[e] - first[e] for e in last)


def reserve_results(rec: Recording) -> list[dict[str, Any]]:
    """Each balancing-market test: full change within the response time, then held."""
    out = []
    for c in rec.commands:
        test = c.get("reserve")
        if not test:
            continue
        t = float(c["t_s"])
        response_wall = float(test["response_s"]) / rec.speed
        hold_wall = float(test["hold_s"]) / rec.speed
        target = float(test["target_w"])
        start = rec.truth_power_w.at(t)
        res: dict[str, Any] = {
            "product": test["product"], "direction": test["direction"], "t_s": t,
            "baseline_w": start, "target_w": target, "requested_w": test["requested_w"],
            "response_window_s": response_wall, "hold_s": hold_wall,
            "acked": c.get("result") in ACCEPTED,
        }
        if float(test.get("offered_w", rec.rated_w)) < 0.02 * rec.rated_w:
            # nothing deliverable within the (time-scaled) response time at this speed
            res.update(skipped=True, passed=None, reached_s=None, hold_max_dev_w=None)
            out.append(res)
            continue
        band = 0.02 * rec.rated_w + 0.1 * abs(target - (start or target))
        reached = None
        for tt, p in rec.truth_power_w.points(t, t + response_wall + hold_wall):
            if abs(p - target) <= band:
                reached = tt - t
                break
        held = [abs(p - target) for _, p in
                rec.truth_power_w.points(t + response_wall, t + response_wall + hold_wall)]
        res["reached_s"] = reached
        res["hold_max_dev_w"] = max(held) if held else None
        res["passed"] = bool(res["acked"] and reached is not None and reached <= response_wall
                             and held and max(held) <= band)
        out.append(res)
    return out


def summarize(rec: Recording) -> dict[str, Any]:
    """The run's figures and the verdict of each criterion."""
    steps = reference_steps(rec)
    for s in steps:
        _response(rec, s)
    responses = [s.response_s for s in steps if s.response_s is not None]
    track = tracking(rec, steps)
    caps_ep = cap_violations(rec)
    temp_ep = temp_violations(rec)
    ramp_ep, fastest = ramp_violations(rec)
    gaps = telemetry_gaps(rec)
    answers = {id(f): drops for f, drops in expected_trips(rec)}
    sent = [c for c in rec.commands]
    acked = [c for c in sent if c.get("result") is not None]
    latencies = [1000.0 * (float(c["ack_t_s"]) - float(c["t_s"])) for c in acked
                 if c.get("ack_t_s") is not None]
    reserve = reserve_results(rec)
    temps = [v for _, v in rec.truth_temp_c.points(0.0)]
    powers = [v for _, v in rec.truth_power_w.points(0.0)]
    summary: dict[str, Any] = {
        "scenario": rec.scenario,
        "speed": rec.speed,
        "duration_s": round(rec.end_s, 1),
        "truth_source": rec.truth_source,
        "rated_w": rec.rated_w,
        "min_w": rec.min_w,
        "ramp_max_w_s": rec.ramp_max_w_s,
        "temp_max_c": rec.temp_max_c,
        "tracking_rms_pct": _r(track["rms_pct"], 3),
        "tracking_max_pct": _r(track["max_pct"], 2),
        "tracking_max_at_s": _r(track["max_at_s"], 1),
        "tracked_s": round(track["tracked_s"], 1),
        "response_s": {
            "p50": _r(percentile(responses, 50), 2),
            "p90": _r(percentile(responses, 90), 2),
            "max": _r(max(responses) if responses else None, 2),
            "steps": len(responses),
            "late": sum(1 for s in steps if s.late),
            "superseded": sum(1 for s in steps if s.superseded),
        },
        "violations": {"cap": len(caps_ep), "ramp": len(ramp_ep), "temp": len(temp_ep)},
        "violation_episodes": {
            "cap": [[_r(a, 1), _r(b, 1)] for a, b in caps_ep],
            "ramp": [[_r(a, 1), _r(b, 1)] for a, b in ramp_ep],
            "temp": [[_r(a, 1), _r(b, 1)] for a, b in temp_ep],
        },
        "fastest_ramp_w_s": _r(fastest, 2),
        "max_power_w": _r(max(powers) if powers else None, 2),
        "max_chip_temp_c": _r(max(temps) if temps else None, 2),
        "commands": {
            "sent": len(sent),
            "acked": len(acked),
            "accepted": sum(1 for c in acked if c.get("result") in ACCEPTED),
            "rejected": sum(1 for c in acked if c.get("result") == "rejected"),
            "unacked": len(sent) - len(acked),
            "ack_latency_ms": {"p50": _r(percentile(latencies, 50), 1),
                               "max": _r(max(latencies) if latencies else None, 1)},
            "rejections": [{"label": c.get("label"), "reason": c.get("reason"),
                            "detail": c.get("detail")}
                           for c in acked if c.get("result") == "rejected"],
        },
        "telemetry_gaps": gaps["gaps"],
        "telemetry_missing": gaps["missing"],
        "telemetry_messages": gaps["messages"],
        "energy_wh": round(energy_wh(rec.truth_power_w, 0.0, rec.end_s), 4),
        "energy_wh_agent": _r(agent_energy_wh(rec), 4),
        "reserve": reserve,
        "reserve_failures": sum(1 for r in reserve if r["passed"] is False),
        "agent_restarts": rec.agent_restarts,
        "agent_crashes": rec.agent_crashes,
        "faults": [_fault_summary(f, answers.get(id(f))) for f in rec.faults],
        "faults_missed": sum(1 for drops in answers.values() if not drops),
        "skipped": list(rec.meta.get("skipped") or []),
    }
    if "energy_wh_wall_incl_psu" in rec.meta:
        summary["energy_wh_wall_incl_psu"] = rec.meta["energy_wh_wall_incl_psu"]
    summary["criteria"] = check_criteria(summary, rec.criteria)
    summary["passed"] = all(c["ok"] for c in summary["criteria"])
    return summary


def _fault_summary(f: dict[str, Any], trips: list[tuple[float, float]] | None) -> dict[str, Any]:
    """A fault as the summary lists it; one that expects a trip says when the agent tripped."""
    out = {k: f.get(k) for k in ("t_s", "end_s", "kind", "label", "expect")}
    if trips is not None:
        out["tripped_at_s"] = round(trips[0][1], 1) if trips else None
    return out


def _r(x: float | None, nd: int) -> float | None:
    return None if x is None else round(float(x), nd)


def figure(summary: dict[str, Any], name: str) -> float | None:
    """The summary figure a criterion names."""
    table: dict[str, Any] = {
        "tracking_rms_pct": summary["tracking_rms_pct"],
        "tracking_max_pct": summary["tracking_max_pct"],
        "response_p50_s": summary["response_s"]["p50"],
        "response_p90_s": summary["response_s"]["p90"],
        "response_max_s": summary["response_s"]["max"],
        "responses_late": summary["response_s"]["late"],
        "cap_violations": summary["violations"]["cap"],
        "ramp_violations": summary["violations"]["ramp"],
        "temp_violations": summary["violations"]["temp"],
        "commands_unacked": summary["commands"]["unacked"],
        "commands_rejected": summary["commands"]["rejected"],
        "telemetry_gaps": summary["telemetry_gaps"],
        "reserve_failures": summary["reserve_failures"],
        "agent_crashes": summary["agent_crashes"],
        "faults_missed": summary["faults_missed"],
    }
    assert set(table) == set(CRITERIA), "every criterion needs a figure"
    return table[name]


def check_criteria(summary: dict[str, Any], criteria: dict[str, float]) -> list[dict[str, Any]]:
    """Each criterion: the figure, its bound, ok. A figure that could not be measured fails."""
    out = []
    for name, bound in criteria.items():
        value = figure(summary, name)
        ok = value is not None and value <= bound + 1e-9
        out.append({"name": name, "value": value, "bound": bound, "ok": ok})
    return out


# --------------------------------------------------------------------------- writing


def write_summary(summary: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """DIR/summary.json and DIR/summary.md."""
    out_dir.mkdir(parents=True, exist_ok=True)
    js = out_dir / "summary.json"
    js.write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
    md = out_dir / "summary.md"
    md.write_text(markdown(summary), encoding="utf-8")
    return js, md


def _fmt(x: Any, unit: str = "") -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:.3g}{unit}" if abs(x) < 100 else f"{x:.0f}{unit}"
    return f"{x}{unit}"


def markdown(s: dict[str, Any]) -> str:
    r = s["response_s"]
    c = s["commands"]
    v = s["violations"]
    verdict = "PASS" if s["passed"] else "FAIL"
    lines = [
        f"# HIL run: {s['scenario']} ({verdict})",
        "",
        f"Speed {s['speed']:g}x, {s['duration_s']:.0f} s, rated power {s['rated_w']:.0f} W, "
        f"declared ramp {s['ramp_max_w_s']:.3g} W/s, chip limit {s['temp_max_c']:.0f} °C; "
        f"truth from the {s['truth_source']}.",
        "",
        "| figure | value |",
        "|---|---|",
        f"| tracking error RMS | {_fmt(s['tracking_rms_pct'], ' %')} of rated "
        f"(over {s['tracked_s']:.0f} s) |",
        f"| tracking error max | {_fmt(s['tracking_max_pct'], ' %')} of rated |",
        f"| response to 90 % of a step (p50 / p90 / max) | {_fmt(r['p50'])} / {_fmt(r['p90'])} / "
        f"{_fmt(r['max'], ' s')} over {r['steps']} steps ({r['late']} late) |",
        f"| violations cap / ramp / temp | {v['cap']} / {v['ramp']} / {v['temp']} |",
        f"| fastest ramp seen | {_fmt(s['fastest_ramp_w_s'], ' W/s')} |",
        f"| max power / max chip temperature | {_fmt(s['max_power_w'], ' W')} / "
        f"{_fmt(s['max_chip_temp_c'], ' °C')} |",
        f"| commands sent / acked / rejected | {c['sent']} / {c['acked']} / {c['rejected']} |",
        f"| ack latency p50 / max | {_fmt(c['ack_latency_ms']['p50'])} / "
        f"{_fmt(c['ack_latency_ms']['max'], ' ms')} |",
        f"| telemetry messages / gaps / missing | {s['telemetry_messages']} / "
        f"{s['telemetry_gaps']} / {s['telemetry_missing']} |",
        f"| energy (true / agent's count) | {_fmt(s['energy_wh'], ' Wh')} / "
        f"{_fmt(s['energy_wh_agent'], ' Wh')} |",
        f"| agent restarts / crashes | {s['agent_restarts']} / {s['agent_crashes']} |",
        "",
    ]
    if s["reserve"]:
        lines += ["## Reserve tests", "",
                  "| product | direction | target | reached | window | held (max dev) | result |",
                  "|---|---|---|---|---|---|---|"]
        for t in s["reserve"]:
            lines.append(
                f"| {t['product']} | {t['direction']} | {t['target_w']:.0f} W | "
                f"{_fmt(t['reached_s'], ' s')} | {t['response_window_s']:.3g} s | "
                f"{t['hold_s']:.3g} s ({_fmt(t['hold_max_dev_w'], ' W')}) | "
                f"{_verdict_word(t['passed'])} |")
        lines.append("")
    if s["faults"]:
        lines += ["## Faults", ""]
        for f in s["faults"]:
            end = f" to {f['end_s']:.1f} s" if f.get("end_s") is not None else ""
            line = f"* {f['t_s']:.1f} s{end}: {f['kind']} {f.get('label') or ''}".rstrip()
            if f.get("expect") == "trip":
                at = f.get("tripped_at_s")
                line += (f"; the agent tripped at {at:.1f} s" if at is not None
                         else "; the agent did NOT trip")
            lines.append(line)
        lines.append("")
    if s.get("skipped"):
        lines += ["## Not played on this rig", ""]
        lines += [f"* {x}" for x in s["skipped"]]
        lines.append("")
    lines += ["## Criteria", "", "| criterion | value | bound | |", "|---|---|---|---|"]
    for cr in s["criteria"]:
        lines.append(f"| {cr['name']} | {_fmt(cr['value'])} | <= {cr['bound']:g} | "
                     f"{'ok' if cr['ok'] else 'FAIL'} |")
    if c["rejections"]:
        lines += ["", "## Rejected commands", ""]
        lines += [f"* {x['label']}: {x['reason']} {x.get('detail') or ''}".rstrip()
                  for x in c["rejections"]]
    return "\n".join(lines) + "\n"


def _verdict_word(passed: bool | None) -> str:
    return "skipped (not deliverable at this speed)" if passed is None else (
        "pass" if passed else "FAIL")


def write_recording(rec: Recording, out_dir: Path) -> Path:
    path = out_dir / "recording.json"
    path.write_text(json.dumps(rec.to_json(), default=str) + "\n", encoding="utf-8")
    return path


def read_recording(path: Path) -> Recording:
    return Recording.from_json(json.loads(path.read_text(encoding="utf-8")))


# --------------------------------------------------------------------------- plot

FAULT_COLORS = {
    "broker_outage": "#9467bd",
    "serial_garbage": "#8c564b",
    "chip_death": "#d62728",
    "stuck_sensor": "#e377c2",
    "agent_kill": "#7f7f7f",
}


def _reference_line(rec: Recording, steps: Sequence[Step]) -> tuple[list[float], list[float]]:
    xs: list[float] = []
    ys: list[float] = []
    for s in steps:
        xs += [s.t_s, s.end_s]
        ys += [s.reference_w, s.reference_w]
    return xs, ys


def _legend(ax: Any, ncol: int, loc: str = "upper left") -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc=loc, fontsize=7, ncol=ncol, framealpha=0.85)


def plot(rec: Recording, summary: dict[str, Any], path: Path) -> Path:
    """DIR/report.png: setpoint, governor target, true power; chip temperature; hashrate; with
    commands and faults marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = reference_steps(rec)
    fig, axes = plt.subplots(3, 1, figsize=(12, 8.5), sharex=True,
                             gridspec_kw={"height_ratios": [3, 1.4, 1.2]})
    ax_p, ax_t, ax_h = axes
    t_end = rec.end_s
    t_start = min([0.0] + [t for t in rec.truth_power_w.t_s[:1]])

    xs, ys = _reference_line(rec, steps)
    if xs:
        ax_p.plot(xs, ys, color="#2ca02c", lw=2.2, label="setpoint (operator)", zorder=3)
    tgt = rec.telemetry_series("target_w").points()
    if tgt:
        ax_p.step([p[0] for p in tgt], [p[1] for p in tgt], where="post", color="#ff7f0e",
                  lw=1.2, ls="--", label="governor target (agent)", zorder=4)
    pw = rec.truth_power_w.points()
    if pw:
        ax_p.plot([p[0] for p in pw], [p[1] for p in pw], color="#1f77b4", lw=1.3,
                  label=f"measured power ({rec.truth_source})", zorder=5)
    ax_p.axhline(rec.rated_w, color="black", lw=0.8, ls=":", label="rated power (cap)")
    ax_p.set_ylabel("power (W)")
    ax_p.set_ylim(bottom=0, top=rec.rated_w * 1.18)

    # command markers: curtail/resume/standby and reserve tests get a labelled line
    for c in rec.commands:
        t = float(c["t_s"])
        rejected = c.get("result") == "rejected" or c.get("error")
        named = c.get("kind") == "command" and c.get("label") not in (None, "", c.get("op"))
        if c.get("op") in ("curtail", "resume", "standby") or c.get("kind") in (
            "reserve", "release"
        ) or rejected or named:
            color = "red" if rejected else "#2ca02c"
            ax_p.axvline(t, color=color, lw=0.8, ls="-.", alpha=0.8)
            ax_p.text(t, rec.rated_w * 1.16, " " + str(c.get("label") or c.get("op")),
                      rotation=90, va="top", ha="left", fontsize=7, color=color)
    cmd_t = [float(c["t_s"]) for c in rec.commands]
    ax_p.plot(cmd_t, [rec.rated_w * 1.02] * len(cmd_t), "|", color="#2ca02c", ms=6,
              label="command sent")

    for ax in axes:
        for f in rec.faults:
            color = FAULT_COLORS.get(str(f["kind"]), "grey")
            end = f.get("end_s")
            end = float(end) if end is not None else t_end
            if end - float(f["t_s"]) < 0.5:
                ax.axvline(float(f["t_s"]), color=color, lw=1.5, alpha=0.6)
            else:
                ax.axvspan(float(f["t_s"]), end, color=color, alpha=0.13)
    for f in rec.faults:
        ax_p.text(float(f["t_s"]), rec.rated_w * 0.3, " " + str(f.get("label") or f["kind"]),
                  rotation=90, va="bottom", ha="left", fontsize=7,
                  color=FAULT_COLORS.get(str(f["kind"]), "grey"))
    for a, b in summary["violation_episodes"]["ramp"] + summary["violation_episodes"]["cap"]:
        ax_p.axvspan(a, (b or a) + 0.2, color="red", alpha=0.35)

    _legend(ax_p, ncol=5, loc="lower left")

    temp = rec.truth_temp_c.points()
    if temp:
        ax_t.plot([p[0] for p in temp], [p[1] for p in temp], color="#d62728", lw=1.2,
                  label=f"hottest chip ({rec.truth_source})")
    tel_t = rec.telemetry_series("temp_c").points()
    if tel_t and rec.truth_source != "telemetry":
        ax_t.plot([p[0] for p in tel_t], [p[1] for p in tel_t], color="#ff9896", lw=0.9,
                  ls="--", label="hottest chip (agent)")
    amb = rec.ambient_c.points()
    if amb:
        ax_t.step([p[0] for p in amb], [p[1] for p in amb], where="post", color="#17becf",
                  lw=1.0, label="ambient")
    ax_t.axhline(rec.temp_max_c, color="black", lw=0.8, ls=":", label="hard limit")
    for a, b in summary["violation_episodes"]["temp"]:
        ax_t.axvspan(a, (b or a) + 0.2, color="red", alpha=0.35)
    ax_t.set_ylabel("temperature (°C)")
    _legend(ax_t, ncol=4)

    hr = rec.telemetry_series("hashrate_ghs").points()
    if hr:
        ax_h.plot([p[0] for p in hr], [p[1] for p in hr], color="#8c564b", lw=1.1,
                  label="hashrate, verified nonces (agent)")
    hr_true = rec.truth_hashrate_ghs.points()
    if hr_true and rec.truth_source != "telemetry":
        ax_h.plot([p[0] for p in hr_true], [p[1] for p in hr_true], color="#c49c94", lw=0.9,
                  ls="--", label="hashrate (emulator)")
    ax_h.set_ylabel("hashrate (GH/s)")
    ax_h.set_xlabel("time (s) from scenario start" + (
        f", scenario played at {rec.speed:g}x" if rec.speed != 1 else ""))
    _legend(ax_h, ncol=2)
    ax_h.set_xlim(t_start, t_end)

    v = summary["violations"]
    c = summary["commands"]
    title = (
        f"gridminer HIL: {rec.scenario} — {'PASS' if summary['passed'] else 'FAIL'}   "
        f"tracking RMS {_fmt(summary['tracking_rms_pct'], ' %')} (max "
        f"{_fmt(summary['tracking_max_pct'], ' %')}) of {rec.rated_w:.0f} W, "
        f"response p90 {_fmt(summary['response_s']['p90'], ' s')}, "
        f"violations cap/ramp/temp {v['cap']}/{v['ramp']}/{v['temp']}, "
        f"commands acked {c['acked']}/{c['sent']}"
    )
    fig.suptitle(title, fontsize=9.5)
    for ax in axes:
        ax.grid(True, alpha=0.3)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(rec: Recording, out_dir: Path) -> dict[str, Any]:
    """Everything of a run into DIR: recording.json, summary.json, summary.md, report.png."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarize(rec)
    write_recording(rec, out_dir)
    write_summary(summary, out_dir)
    try:
        plot(rec, summary, out_dir / "report.png")
    except ImportError as exc:  # the agent's own install has no matplotlib: figures still count
        import sys

        print(f"gridminer hil: no plot ({exc}); install matplotlib (pip install "
              "'gridminer[report]') for report.png", file=sys.stderr)
    return summary
