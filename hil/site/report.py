"""The report of a site run: what it recorded (`SiteRecording`, DIR/recording.json), the figures
of each dispatcher side by side and their ratio, the criteria (DIR/summary.json,
DIR/summary.md) and the plot (DIR/report.png, `hil.site.plot`).

Definitions (site rating = the scenario's `rating_w`; times are rig seconds; `measure` keys as
`hil.site.scenario.SiteMeasure`):

* reference: what the grid operator asked for with each command: a setpoint's power, within the
  fleet's capacity then (the ratings of the devices not killed); `resume` that capacity;
  `curtail` the site's curtailed floor (the `applied_w` of gridminer's ack, the devices' own
  minimums together), one-sided (only power above it is an error).
* tracking error, measured as the single board's rig does (`hil.report.metrics.tracking`): in
  the steady windows only. A step (below) is a transient: from its command until its allowed
  response time (`settle_s` + step / site ramp) it is judged by its 90 % response time, not
  counted as tracking error; a step still short of its reference after that time counts from
  then on. Elsewhere (and for the small moves of a curve or a regulation signal, which are no
  steps), at each sample, how far the measured site power is from the band between the
  setpoint and what the reference swept over the last `settle_s` once limited to the site's
  declared ramp (a site that follows at its ramp, or faster, with `settle_s` of delay has no
  error). RMS (time-weighted) and max in % of the site rating, over the whole run except
  `exempt_after_fault_s` after a device loss and the controller's absence (plus the same);
  energy off target: the error integrated (kWh), transients included (the energy a slow
  response leaves off target is no steady error, but it is energy the grid did not get).
* step: a command that moves the reference by `min_step_pct` of the rating or more; its 90 %
  response time: until the measured power is within 10 % of the step of the new reference. A
  step not reached before the next one is late (its window counts as a lower bound) when the
  window was longer than `settle_s` + step / ramp, else superseded (not counted).
* ramp violations: `hil.report.metrics.ramp_violations` on the measured site power against the
  site's declared ramp (a device loss is no move of the controller's: exempt for its second).
* regulation score: `hil.report.regulation.score_points` of each regulation segment, signal and
  response on the scenario's time axis (a run at --speed X is scored as the grid would score
  the compressed signal: the fleet's latency counts X times).
* commands per second: the commands each dispatcher sent its devices (a site-wide one counts
  once), over the run.
"""

from __future__ import annotations

import bisect
import itertools
import json
import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hil.report import Recording, Series, percentile, ramp_violations
from hil.report.regulation import score_points
from hil.report.summary import as_text
from hil.scenario import Measure
from hil.site.scenario import CRITERIA

PASSES = ("gridminer", "baseline")
RATIO_FIGURES = {"tracking_rms_ratio": "tracking_rms_pct", "step_p90_ratio": "step_p90_s",
                 "energy_off_target_ratio": "energy_off_target_kwh"}


@dataclass
class SiteRecording:
    """Everything a site run recorded; `passes[name]` holds one dispatcher's series (power_w,
    online as {t_s, v}), capacity changes, faults, the grid's commands and the times of the
    commands it sent its devices."""

    scenario: str
    speed: float
    rating_w: float
    ramp_w_s: float
    devices: int
    side_by_side: str
    measure: dict[str, float]
    criteria: dict[str, float]
    regulation: list[dict[str, float]] = field(default_factory=list)  # scenario seconds
    site_down: list[list[float]] = field(default_factory=list)
    site_crashes: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)
    site_telemetry: list[dict[str, Any]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    passes: dict[str, dict[str, Any]] = field(default_factory=dict)
    kind: str = "site"

    def power(self, name: str) -> Series:
        return Series(**self.passes[name]["power_w"])

    def online(self, name: str) -> Series:
        return Series(**self.passes[name]["online"])


def read_site_recording(path: Path) -> SiteRecording:
    return SiteRecording(**json.loads(path.read_text(encoding="utf-8")))


def is_site_recording(path: Path) -> bool:
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("kind") == "site"
    except (OSError, ValueError, AttributeError):
        return False


# --------------------------------------------------------------------------- the reference


@dataclass(frozen=True)
class Ref:
    """The reference from `t_s` on."""

    t_s: float
    power_w: float
    one_sided: bool
    label: str
    kind: str


def _capacity(changes: list[list[float]] | list[tuple[float, float]], t_s: float,
              rating_w: float) -> float:
    times = [float(c[0]) for c in changes]
    i = bisect.bisect_right(times, t_s) - 1
    return float(changes[i][1]) if i >= 0 else rating_w


def curtail_floor_w(rec: SiteRecording) -> float:
    """The site's curtailed floor: the applied_w of gridminer's first acked curtail (0 when
    none was acked)."""
    for c in rec.passes.get("gridminer", {}).get("commands", []):
        if c.get("op") == "curtail" and c.get("applied_w") is not None:
            return float(c["applied_w"])
    return 0.0


def references(rec: SiteRecording, name: str) -> list[Ref]:
    """What the operator asked of the site, command by command (see the module docstring)."""
    p = rec.passes[name]
    floor_w = curtail_floor_w(rec)
    out: list[Ref] = []
    for c in p["commands"]:
        if c.get("error"):
            continue
        t = float(c["t_s"])
        cap = _capacity(p["capacity"], t, rec.rating_w)
        op = c["op"]
        if op == "setpoint":
            out.append(Ref(t, min(float(c["power_w"]), cap), False, c["label"], c["kind"]))
        elif op == "resume":
            out.append(Ref(t, cap, False, c["label"], c["kind"]))
        elif op in ("curtail", "standby"):
            out.append(Ref(t, floor_w if op == "curtail" else 0.0, True, c["label"], c["kind"]))
    return out


def _exempt(p: dict[str, Any]) -> list[tuple[float, float]]:
    out = []
    for f in p["faults"]:
        window = (f.get("exempt") or {}).get("tracking")
        if window:
            out.append((float(window[0]), float(window[1])))
    return out


def _in(t: float, windows: list[tuple[float, float]]) -> bool:
    return any(a <= t <= b for a, b in windows)


def ramped(refs: list[Ref], times: list[float], start_w: float, ramp_w_s: float) -> list[float]:
    """The reference at each of `times`, moving toward each command's power at `ramp_w_s`."""
    out: list[float] = []
    level = start_w
    last_t = times[0] if times else 0.0
    j = -1
    for t in times:
        while j + 1 < len(refs) and refs[j + 1].t_s <= t:
            j += 1
        if j >= 0:
            goal = refs[j].power_w
            step = ramp_w_s * max(0.0, t - last_t)
            if refs[j].one_sided:
                level = max(goal, level - step) if level > goal else goal
            else:
                level += max(-step, min(step, goal - level))
        last_t = t
        out.append(level)
    return out


def tracking(rec: SiteRecording, name: str, refs: list[Ref],
             transients: list[tuple[float, float]] | None = None) -> dict[str, Any]:
    """Tracking error (RMS, max, % of rating) outside the `transients` (each step's allowed
    response), tracked time, energy off target (kWh, transients included)."""
    pts = rec.power(name).points(0.0)
    if len(pts) < 2 or not refs:
        return {"rms_pct": None, "max_pct": None, "max_at_s": None, "tracked_s": 0.0,
                "energy_off_target_kwh": None}
    times = [t for t, _ in pts]
    level = ramped(refs, times, pts[0][1], rec.ramp_w_s)
    lag_s = float(rec.measure["settle_s"])
    exempt = _exempt(rec.passes[name])
    total_w2 = total_t = off_wh = 0.0
    worst, worst_at = 0.0, None
    lo = 0
    for i in range(len(pts) - 1):
        t, power = pts[i]
        while times[lo] < t - lag_s:
            lo += 1
        dt = times[i + 1] - t
        active = [r for r in refs if r.t_s <= t]
        if not active or _in(t, exempt):
            continue
        band = [*level[lo:i + 1], active[-1].power_w]  # faster than the ramp is no error
        low, high = min(band), max(band)
        if active[-1].one_sided:
            err = max(0.0, power - high)
        else:
            err = low - power if power < low else power - high if power > high else 0.0
        off_wh += err * dt / 3600.0
        if transients and _in(t, transients):
            continue
        pct = err / rec.rating_w * 100.0
        total_w2 += pct * pct * dt
        total_t += dt
        if pct > worst:
            worst, worst_at = pct, t
    return {"rms_pct": math.sqrt(total_w2 / total_t) if total_t else None,
            "max_pct": worst if total_t else None, "max_at_s": worst_at, "tracked_s": total_t,
            "energy_off_target_kwh": off_wh / 1000.0}


def steps(rec: SiteRecording, name: str, refs: list[Ref]) -> list[dict[str, Any]]:
    """The steps of the reference and their 90 % response (see the module docstring)."""
    power = rec.power(name)
    end_s = float(rec.passes[name]["end_s"])
    min_step = rec.rating_w * float(rec.measure["min_step_pct"]) / 100.0
    exempt = _exempt(rec.passes[name])
    out = []
    prev: float | None = None
    for i, r in enumerate(refs):
        if prev is None or abs(r.power_w - prev) < min_step:
            prev = r.power_w if prev is None else prev
            continue
        size = abs(r.power_w - prev)
        prev = r.power_w
        if _in(r.t_s, exempt):
            continue
        until = next((x.t_s for x in refs[i + 1:] if abs(x.power_w - r.power_w) >= min_step),
                     end_s)
        allowed = float(rec.measure["settle_s"]) + size / rec.ramp_w_s
        near = 0.1 * size
        response = None
        for t, p in power.points(r.t_s, until):
            if (p <= r.power_w + near) if r.one_sided else abs(p - r.power_w) <= near:
                response = t - r.t_s
                break
        window = until - r.t_s
        state = ("reached" if response is not None else
                 "late" if window >= allowed else "superseded")
        out.append({"t_s": round(r.t_s, 3), "label": r.label, "size_w": round(size, 1),
                    "reference_w": round(r.power_w, 1), "response_s": _r(response, 3),
                    "window_s": round(window, 3), "allowed_s": round(allowed, 3),
                    "state": state})
    return out


def transients(items: list[dict[str, Any]]) -> list[tuple[float, float]]:
    """Each step's allowed response (from its command, within its window): judged by its
    response time, not as tracking error."""
    return [(x["t_s"], x["t_s"] + min(x["allowed_s"], x["window_s"])) for x in items]


def _step_figures(items: list[dict[str, Any]]) -> dict[str, Any]:
    counted = [x["response_s"] if x["state"] == "reached" else x["window_s"]
               for x in items if x["state"] != "superseded"]
    late = [x for x in items if x["state"] == "late"]
    p90 = percentile(counted, 90)
    return {"count": len(counted), "late": len(late),
            "superseded": sum(1 for x in items if x["state"] == "superseded"),
            "p50_s": _r(percentile(counted, 50), 3), "p90_s": _r(p90, 3),
            "max_s": _r(max(counted), 3) if counted else None,
            # a late step counts with its window, which it took longer than
            "p90_is_lower_bound": bool(late) and p90 is not None
            and min(x["window_s"] for x in late) <= p90 + 1e-9}


def _ramp(rec: SiteRecording, name: str) -> tuple[list[tuple[float, float]], float]:
    p = rec.passes[name]
    m = rec.measure
    r = Recording(scenario=rec.scenario, speed=rec.speed, rated_w=rec.rating_w, min_w=0.0,
                  ramp_max_w_s=rec.ramp_w_s, temp_max_c=0.0, end_s=float(p["end_s"]),
                  truth_power_w=rec.power(name), faults=p["faults"],
                  measure=Measure(ramp_window_s=float(m["ramp_window_s"]),
                                  ramp_tolerance_pct=float(m["ramp_tolerance_pct"])))
    return ramp_violations(r)


def regulation(rec: SiteRecording, name: str) -> list[dict[str, Any]]:
    """Each regulation segment's RegD score, on the scenario's time axis."""
    p = rec.passes[name]
    out: list[dict[str, Any]] = []
    speed = rec.speed
    signal = [(float(c["t_s"]) * speed, float(c["power_w"])) for c in p["commands"]
              if c.get("kind") == "regulation" and not c.get("error")]
    response = [(t * speed, v) for t, v in rec.power(name).points()]
    for seg in rec.regulation:
        inside = [x for x in signal if seg["t0_s"] - 1e-6 <= x[0] < seg["t1_s"]]
        if len(inside) < 2 or not response:
            out.append({"t0_s": seg["t0_s"], "t1_s": seg["t1_s"], "score": None})
            continue
        try:
            score = score_points(inside, response, seg["t0_s"], seg["t1_s"],
                                 basepoint=seg["basepoint_w"])
        except ValueError as exc:
            out.append({"t0_s": seg["t0_s"], "t1_s": seg["t1_s"], "score": None,
                        "why": str(exc)})
            continue
        out.append({"t0_s": seg["t0_s"], "t1_s": seg["t1_s"], **score.to_json()})
    return out


def _commands(rec: SiteRecording, name: str) -> dict[str, Any]:
    p = rec.passes[name]
    times = [t for t in p["device_commands"] if t >= 0.0]
    duration = max(float(p["end_s"]), 1e-9)
    per_second = Counter(math.floor(t) for t in times)
    return {"sent": len(times), "per_s": round(len(times) / duration, 2),
            "peak_per_s": max(per_second.values(), default=0)}


def pass_figures(rec: SiteRecording, name: str) -> dict[str, Any]:
    """One dispatcher's figures."""
    refs = references(rec, name)
    items = steps(rec, name, refs)
    trk = tracking(rec, name, refs, transients(items))
    episodes, fastest = _ramp(rec, name)
    online = [v for _, v in rec.online(name).points(0.0)]
    power = rec.power(name).points(0.0)
    energy = sum((tb - ta) * (pa + pb) / 2 for (ta, pa), (tb, pb) in itertools.pairwise(power))
    gap = max((tb - ta for (ta, _), (tb, _) in itertools.pairwise(power)), default=None)
    return {
        "tracking_rms_pct": _r(trk["rms_pct"], 3), "tracking_max_pct": _r(trk["max_pct"], 2),
        "tracking_max_at_s": _r(trk["max_at_s"], 2), "tracked_s": round(trk["tracked_s"], 1),
        "energy_off_target_kwh": _r(trk["energy_off_target_kwh"], 3),
        "energy_kwh": round(energy / 3.6e6, 3),
        "steps": _step_figures(items), "step_list": items,
        "ramp_violations": len(episodes), "ramp_episodes": episodes,
        "fastest_ramp_w_s": round(fastest, 1),
        "regulation": regulation(rec, name),
        "commands": _commands(rec, name),
        # the fleet's figures as sampled: a busy fleet answers late (gaps in the series)
        "samples": len(power), "longest_gap_s": _r(gap, 2),
        "online": {"start": online[0] if online else None,
                   "min": min(online) if online else None,
                   "end": online[-1] if online else None},
    }


def _site_acks(rec: SiteRecording) -> dict[str, Any]:
    """The grid operator's commands to device `site` and the site's acks."""
    cmds = rec.passes["gridminer"]["commands"]
    sent = [c for c in cmds if not c.get("error")]
    down = [(a, b) for a, b in rec.site_down]
    unacked = [c for c in sent if c.get("result") is None]
    latencies = [1000.0 * (c["ack_t_s"] - c["t_s"]) for c in sent if c.get("ack_t_s") is not None]
    return {"sent": len(sent), "acked": len(sent) - len(unacked),
            "rejected": sum(1 for c in sent if c.get("result") == "rejected"),
            "unacked": len(unacked),
            "unacked_while_down": sum(1 for c in unacked if _in(float(c["t_s"]), down)),
            "ack_latency_ms": {"p50": _r(percentile(latencies, 50), 1),
                               "p99": _r(percentile(latencies, 99), 1),
                               "max": _r(max(latencies), 1) if latencies else None},
            "reasons": dict(Counter(str(c.get("reason")) for c in sent
                                    if c.get("result") == "rejected"))}


def figure(summary: dict[str, Any], name: str) -> float | None:
    """The summary figure a criterion names."""
    gm = summary["gridminer"]
    scores = [r["score"] for r in gm["regulation"] if r.get("score") is not None]
    table = {
        "tracking_rms_pct": gm["tracking_rms_pct"],
        "tracking_max_pct": gm["tracking_max_pct"],
        "step_p90_s": gm["steps"]["p90_s"],
        "ramp_violations": gm["ramp_violations"],
        "regulation_score": min(scores) if scores else None,
        "commands_per_s": gm["commands"]["per_s"],
        "commands_unacked": summary["site"]["unacked"] - summary["site"]["unacked_while_down"],
        **{k: summary["ratio"].get(k) for k in RATIO_FIGURES},
    }
    assert set(table) == set(CRITERIA), "every criterion needs a figure"
    return table[name]


def check_criteria(summary: dict[str, Any], criteria: dict[str, float]) -> list[dict[str, Any]]:
    """Each criterion: figure, bound, direction, ok (a figure not measured fails)."""
    out = []
    for name, bound in criteria.items():
        direction = CRITERIA[name][0]
        value = figure(summary, name)
        ok = value is not None and (value <= bound + 1e-9 if direction == "max"
                                    else value >= bound - 1e-9)
        out.append({"name": name, "value": value, "bound": bound, "direction": direction,
                    "ok": ok})
    return out


def summarize(rec: SiteRecording) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "scenario": rec.scenario, "speed": rec.speed, "rating_w": rec.rating_w,
        "ramp_w_s": rec.ramp_w_s, "devices": rec.devices, "side_by_side": rec.side_by_side,
        "measure": rec.measure,
    }
    for name in PASSES:
        summary[name] = pass_figures(rec, name) if name in rec.passes else None
    summary["ratio"] = _ratios(summary["gridminer"], summary["baseline"])
    summary["site"] = {**_site_acks(rec), "down": rec.site_down, "crashes": rec.site_crashes}
    summary["criteria"] = check_criteria(summary, rec.criteria)
    summary["passed"] = all(c["ok"] for c in summary["criteria"])
    summary["events"] = rec.events
    return summary


def _ratios(gm: dict[str, Any], base: dict[str, Any] | None) -> dict[str, float | None]:
    """gridminer's figure / the baseline's (below 1: gridminer does better)."""
    out: dict[str, float | None] = {}
    for ratio, key in RATIO_FIGURES.items():
        a = gm["steps"]["p90_s"] if key == "step_p90_s" else gm[key]
        b = None if base is None else (base["steps"]["p90_s"] if key == "step_p90_s"
                                       else base[key])
        out[ratio] = round(a / b, 4) if a is not None and b else None
    return out


# --------------------------------------------------------------------------- text


def markdown(s: dict[str, Any]) -> str:
    """DIR/summary.md: both dispatchers' figures side by side, the site's acks, the criteria."""
    gm, base = s["gridminer"], s["baseline"]
    verdict = "PASS" if s["passed"] else "FAIL"
    rating = s["rating_w"]
    beside = {"parallel": "on an equal fleet at the same time",
              "sequential": "on the same fleet model after gridminer"}.get(s["side_by_side"],
                                                                        "not run")
    lines = [
        f"# Site run: {s['scenario']} ({verdict})",
        "",
        f"{s['devices']} devices, site rating {rating / 1000:.0f} kW, declared site ramp "
        f"{s['ramp_w_s'] / 1000:.0f} kW/s, played at {s['speed']:g}x; the baseline "
        f"{beside}.",
        "",
        "| figure | gridminer site | baseline (today's fleet tools) | ratio |",
        "|---|---|---|---|",
    ]

    def row(label: str, key: Any, unit: str = "", ratio: str | None = None) -> None:
        a = key(gm)
        b = key(base) if base is not None else None
        r = s["ratio"].get(ratio) if ratio else None
        lines.append(f"| {label} | {as_text(a, unit)} | {as_text(b, unit)} | "
                     f"{as_text(r) if ratio else ''} |")

    row("tracking error RMS, % of rating", lambda f: f["tracking_rms_pct"], " %",
        "tracking_rms_ratio")
    row("tracking error max, % of rating", lambda f: f["tracking_max_pct"], " %")
    row("90 % step response p90", lambda f: f["steps"]["p90_s"], " s", "step_p90_ratio")
    row("90 % step response p50 / max",
        lambda f: f"{as_text(f['steps']['p50_s'])} / {as_text(f['steps']['max_s'], ' s')}")
    row("steps counted / late", lambda f: f"{f['steps']['count']} / {f['steps']['late']}")
    row("energy off target", lambda f: f["energy_off_target_kwh"], " kWh",
        "energy_off_target_ratio")
    row("energy drawn", lambda f: f["energy_kwh"], " kWh")
    row("site ramp violations", lambda f: f["ramp_violations"])
    row("fastest site ramp seen", lambda f: f["fastest_ramp_w_s"] / 1000.0, " kW/s")
    row("regulation score (RegD; pass 0.75, aim 0.9)",
        lambda f: _scores(f["regulation"]))
    row("regulation correlation / delay / precision", lambda f: _parts(f["regulation"]))
    row("device commands sent / per s (peak)",
        lambda f: f"{f['commands']['sent']} / {f['commands']['per_s']:.2f} "
                  f"({f['commands']['peak_per_s']})")
    row("power samples / longest gap (fleet busy)",
        lambda f: f"{f['samples']} / {as_text(f['longest_gap_s'], ' s')}")
    row("devices online start / min / end",
        lambda f: f"{as_text(f['online']['start'])} / {as_text(f['online']['min'])} / "
                  f"{as_text(f['online']['end'])}")
    site = s["site"]
    lat = site["ack_latency_ms"]
    lines += [
        "",
        f"The grid operator's commands to device `site`: {site['sent']} sent, {site['acked']} "
        f"acked, {site['rejected']} rejected, {site['unacked']} unacked "
        f"({site['unacked_while_down']} while the controller was down); ack latency p50 "
        f"{as_text(lat['p50'])} ms, p99 {as_text(lat['p99'])} ms, max {as_text(lat['max'])} ms. "
        f"Controller down: {', '.join(f'{a:.1f}..{b:.1f} s' for a, b in site['down']) or 'never'}"
        f"; exits it did not ask for: {site['crashes']}.",
        "",
        "## Criteria",
        "",
        "| criterion | value | bound | |",
        "|---|---|---|---|",
    ]
    for c in s["criteria"]:
        sign = "<=" if c["direction"] == "max" else ">="
        lines.append(f"| {c['name']} | {as_text(c['value'])} | {sign} {c['bound']:g} | "
                     f"{'ok' if c['ok'] else 'FAIL'} |")
    superseded = gm["steps"]["superseded"]
    lines += ["", "## Steps (gridminer)", "",
              f"Each step of the reference but the {superseded} superseded by the next before "
              "its allowed time.", "",
              "| at | step | kW | response | state |", "|---|---|---|---|---|"]
    for x in (x for x in gm["step_list"] if x["state"] != "superseded"):
        lines.append(f"| {x['t_s']:.1f} s | {x['label']} | {x['size_w'] / 1000:.0f} | "
                     f"{as_text(x['response_s'], ' s')} | {x['state']} |")
    lines += ["", "How each figure is measured: hil/site/report.py (module docstring).", ""]
    return "\n".join(lines)


def _scores(regs: list[dict[str, Any]]) -> str:
    return ", ".join(as_text(r.get("score")) for r in regs) or "n/a"


def _parts(regs: list[dict[str, Any]]) -> str:
    return ", ".join(f"{as_text(r.get('correlation'))} / {as_text(r.get('delay'))} / "
                     f"{as_text(r.get('precision'))}" for r in regs) or "n/a"


def _r(x: float | None, nd: int) -> float | None:
    return None if x is None else round(float(x), nd)


def write_site_report(rec: SiteRecording, out_dir: Path) -> dict[str, Any]:
    """DIR/recording.json, summary.json, summary.md, report.png."""
    import sys

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "recording.json").write_text(json.dumps(asdict(rec), default=str) + "\n",
                                            encoding="utf-8")
    summary = summarize(rec)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n",
                                          encoding="utf-8")
    (out_dir / "summary.md").write_text(markdown(summary), encoding="utf-8")
    try:
        from hil.site.plot import plot_site

        plot_site(rec, summary, out_dir / "report.png")
    except ImportError as exc:
        print(f"gridminer hil: no plot ({exc}); install matplotlib (pip install "
              "'gridminer[report]') for report.png", file=sys.stderr)
    return summary
