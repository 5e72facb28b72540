"""The measures of a HIL run, computed from its `Recording`: the reference steps and tracking
error, response times, cap/ramp/temperature violations, expected safety trips, telemetry gaps,
energy and the balancing-market reserve tests. Every violation is counted from the true state
(`truth_*`), never from the agent's own account of itself; `hil.report.summary` turns these
measures into the summary.

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
* reserve test: requested = the product's amount (a share of rated power); offered = the step the
  rig commanded, which is less when the time-scaled response window or the device's range cannot
  take all of it (`offered_why`); delivered = the mean true power over the hold window less the
  power when the test began. Passed: within 2 % of rated + 10 % of the step of the target
  inside the response window, and held there for the whole hold window.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from hil.report.recording import Recording, Series

TRACKED_OPS = ("setpoint", "resume", "curtail", "standby")
ONE_SIDED_OPS = ("curtail", "standby")
CAP_WINDOW_S = 1.0
SAME_REFERENCE_PCT = 0.5  # a command this close to the previous target continues its step
ACCEPTED = ("accepted", "scheduled", "duplicate")
TRIP_GRACE_S = 1.5  # an expected trip shows in telemetry this long after its fault at the latest
TRIP_SETTLE_S = 0.5  # a trip's drop is over this long after the first `tripped` telemetry


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


def measure_response(rec: Recording, step: Step) -> None:
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
    """Episodes of the hottest true chip temperature above the hard limit."""
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
    """Energy of a power series between t0 and t1 (Wh, trapezoids)."""
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
        offered = float(test.get("offered_w", abs(target - float(test.get("baseline_w",
                                                                           start or target)))))
        res: dict[str, Any] = {
            "product": test["product"], "direction": test["direction"], "t_s": t,
            "baseline_w": start, "target_w": target, "requested_w": test["requested_w"],
            "offered_w": offered, "offered_why": _offered_why(rec, test, offered),
            "delivered_w": _delivered_w(rec, test, start, t + response_wall, hold_wall),
            "response_window_s": response_wall, "hold_s": hold_wall,
            "acked": c.get("result") in ACCEPTED,
        }
        if offered < 0.02 * rec.rated_w:
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
        res["band_w"] = band
        res["hold_max_dev_w"] = max(held) if held else None
        res["passed"] = bool(res["acked"] and reached is not None and reached <= response_wall
                             and held and max(held) <= band)
        out.append(res)
    return out


def _delivered_w(rec: Recording, test: dict[str, Any], start_w: float | None, t0: float,
                 hold_s: float) -> float | None:
    """The change the board held: its mean true power over the hold window less its power when
    the test began, counted in the test's direction."""
    held = [p for _, p in rec.truth_power_w.points(t0, t0 + hold_s)]
    if not held or start_w is None:
        return None
    sign = -1.0 if test["direction"] == "decrease" else 1.0
    return sign * (sum(held) / len(held) - start_w)


def _offered_why(rec: Recording, test: dict[str, Any], offered_w: float) -> str | None:
    """Why less was offered than the product asks for (None when it was all offered): the
    time-scaled response window at this speed, or the device's declared range."""
    requested = float(test["requested_w"])
    if offered_w >= requested - 0.05:
        return None
    window_s = float(test["response_s"]) / rec.speed
    target = float(test["target_w"])
    if min(abs(target - rec.rated_w), abs(target - rec.min_w)) < 0.05:
        edge = "rated power" if abs(target - rec.rated_w) < 0.05 else "minimum"
        return (f"the device's {edge} ({target:.0f} W) leaves room for {offered_w:.1f} W from "
                f"the baseline")
    return (f"the test's {float(test['response_s']):g} s response time (scenario seconds) lasts "
            f"{window_s:.3g} s when played at {rec.speed:g}x, and at the declared ramp of "
            f"{rec.ramp_max_w_s:g} W/s, after the command's latency, the board can move "
            f"{offered_w:.1f} W in it")
