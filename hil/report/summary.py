"""The summary of a HIL run: `summarize` folds the measures of `hil.report.metrics` into one
JSON-able dict of figures with the verdict of each scenario criterion (`figure`,
`check_criteria`); `markdown` renders it, `write_summary` writes DIR/summary.json and
DIR/summary.md.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from hil.report.home import home_figures, home_section, home_summary
from hil.report.metrics import (
    ACCEPTED,
    Step,
    agent_energy_wh,
    cap_violations,
    energy_wh,
    expected_trips,
    measure_response,
    percentile,
    ramp_violations,
    reference_steps,
    reserve_results,
    telemetry_gaps,
    temp_violations,
    tracking,
)
from hil.report.pools import pool_figures, pool_section, pool_summary
from hil.report.recording import Recording
from hil.scenario import CRITERIA


def summarize(rec: Recording) -> dict[str, Any]:
    """The run's figures and the verdict of each criterion."""
    steps = reference_steps(rec)
    for s in steps:
        measure_response(rec, s)
    track = tracking(rec, steps)
    gaps = telemetry_gaps(rec)
    answers = {id(f): drops for f, drops in expected_trips(rec)}
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
        "measure": asdict(rec.measure),
        "tracking_rms_pct": _r(track["rms_pct"], 3),
        "tracking_max_pct": _r(track["max_pct"], 2),
        "tracking_max_at_s": _r(track["max_at_s"], 1),
        "tracked_s": round(track["tracked_s"], 1),
        "response_s": _responses(steps),
        **_violations(rec),
        "max_power_w": _r(max(powers) if powers else None, 2),
        "max_chip_temp_c": _r(max(temps) if temps else None, 2),
        "commands": _commands(rec.commands),
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
    summary["pool"] = pool_summary(rec)
    summary["home"] = home_summary(rec)
    summary["criteria"] = check_criteria(summary, rec.criteria)
    summary["passed"] = all(c["ok"] for c in summary["criteria"])
    return summary


def _responses(steps: Sequence[Step]) -> dict[str, Any]:
    """Response times to 90 % of the steps (p50, p90, max), how many were late or superseded."""
    responses = [s.response_s for s in steps if s.response_s is not None]
    return {
        "p50": _r(percentile(responses, 50), 2),
        "p90": _r(percentile(responses, 90), 2),
        "max": _r(max(responses) if responses else None, 2),
        "steps": len(responses),
        "late": sum(1 for s in steps if s.late),
        "superseded": sum(1 for s in steps if s.superseded),
    }


def _violations(rec: Recording) -> dict[str, Any]:
    """Cap, ramp and temperature violations (counts and episodes), and the fastest ramp."""
    caps_ep = cap_violations(rec)
    temp_ep = temp_violations(rec)
    ramp_ep, fastest = ramp_violations(rec)
    return {
        "violations": {"cap": len(caps_ep), "ramp": len(ramp_ep), "temp": len(temp_ep)},
        "violation_episodes": {
            "cap": [[_r(a, 1), _r(b, 1)] for a, b in caps_ep],
            "ramp": [[_r(a, 1), _r(b, 1)] for a, b in ramp_ep],
            "temp": [[_r(a, 1), _r(b, 1)] for a, b in temp_ep],
        },
        "fastest_ramp_w_s": _r(fastest, 2),
    }


def _commands(sent: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Commands sent, acked, accepted, rejected (with reasons), unacked; ack latency."""
    acked = [c for c in sent if c.get("result") is not None]
    latencies = [1000.0 * (float(c["ack_t_s"]) - float(c["t_s"])) for c in acked
                 if c.get("ack_t_s") is not None]
    return {
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
    }


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
        **pool_figures(summary),
        **home_figures(summary),
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



def as_text(x: Any, unit: str = "") -> str:
    """A figure as the summary and the plot show it: 3 significant digits, n/a for None."""
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:.3g}{unit}" if abs(x) < 100 else f"{x:.0f}{unit}"
    return f"{x}{unit}"


def markdown(s: dict[str, Any]) -> str:
    """DIR/summary.md: the figures, reserve tests, faults, skipped parts and criteria."""
    verdict = "PASS" if s["passed"] else "FAIL"
    lines = [
        f"# HIL run: {s['scenario']} ({verdict})",
        "",
        f"Speed {s['speed']:g}x, {s['duration_s']:.0f} s, rated power {s['rated_w']:.0f} W, "
        f"declared ramp {s['ramp_max_w_s']:.3g} W/s, chip limit {s['temp_max_c']:.0f} °C; "
        f"truth from the {s['truth_source']}.",
        "",
        *_figure_table(s),
        "",
        *_reserve_section(s["reserve"], s["rated_w"]),
        *_fault_section(s["faults"]),
        *pool_section(s, as_text),
        *home_section(s, as_text),
    ]
    if s.get("skipped"):
        lines += ["## Not played on this rig", ""]
        lines += [f"* {x}" for x in s["skipped"]]
        lines.append("")
    lines += ["## Criteria", "",
              "| criterion | value | bound | | what counts |", "|---|---|---|---|---|"]
    counted = _counted_as(s)
    for cr in s["criteria"]:
        lines.append(f"| {cr['name']} | {as_text(cr['value'])} | <= {cr['bound']:g} | "
                     f"{'ok' if cr['ok'] else 'FAIL'} | {counted.get(cr['name'], '')} |")
    if s["commands"]["rejections"]:
        lines += ["", "## Rejected commands", ""]
        lines += [f"* {x['label']}: {x['reason']} {x.get('detail') or ''}".rstrip()
                  for x in s["commands"]["rejections"]]
    return "\n".join(lines) + "\n"


def _figure_table(s: dict[str, Any]) -> list[str]:
    r = s["response_s"]
    c = s["commands"]
    v = s["violations"]
    return [
        "| figure | value |",
        "|---|---|",
        f"| tracking error RMS | {as_text(s['tracking_rms_pct'], ' %')} of rated, over "
        f"{s['tracked_s']:.0f} s of the {s['duration_s']:.0f} s (the steady windows: see "
        "Criteria) |",
        f"| tracking error max | {as_text(s['tracking_max_pct'], ' %')} of rated |",
        f"| response to 90 % of a step (p50 / p90 / max) | {as_text(r['p50'])} / "
        f"{as_text(r['p90'])} / {as_text(r['max'], ' s')} over {r['steps']} steps "
        f"({r['late']} late) |",
        f"| violations cap / ramp / temp | {v['cap']} / {v['ramp']} / {v['temp']} |",
        f"| fastest ramp seen | {as_text(s['fastest_ramp_w_s'], ' W/s')} (declared "
        f"{s['ramp_max_w_s']:.3g} W/s; a violation moves more than {_ramp_allowed_w(s):.1f} W "
        f"in {s['measure']['ramp_window_s']:g} s) |",
        f"| max power / max chip temperature | {as_text(s['max_power_w'], ' W')} / "
        f"{as_text(s['max_chip_temp_c'], ' °C')} |",
        f"| commands sent / acked / rejected | {c['sent']} / {c['acked']} / {c['rejected']} |",
        f"| ack latency p50 / max | {as_text(c['ack_latency_ms']['p50'])} / "
        f"{as_text(c['ack_latency_ms']['max'], ' ms')} |",
        f"| telemetry messages / gaps / missing | {s['telemetry_messages']} / "
        f"{s['telemetry_gaps']} / {s['telemetry_missing']} |",
        f"| energy (true / agent's count) | {as_text(s['energy_wh'], ' Wh')} / "
        f"{as_text(s['energy_wh_agent'], ' Wh')} |",
        f"| agent restarts / crashes | {s['agent_restarts']} / {s['agent_crashes']} |",
    ]


def _reserve_section(reserve: list[dict[str, Any]], rated_w: float) -> list[str]:
    """Each reserve test: what the product asks for, what the rig offered, what the board
    delivered, and why they differ."""
    if not reserve:
        return []
    lines = ["## Reserve tests", "",
             "| product | direction | requested | offered | delivered | target | reached | "
             "window | held (max dev) | result |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for t in reserve:
        lines.append(
            f"| {t['product']} | {t['direction']} | {t['requested_w']:.1f} W | "
            f"{_watts(t.get('offered_w'))} | {_watts(t.get('delivered_w'))} | "
            f"{t['target_w']:.1f} W | {as_text(t['reached_s'], ' s')} | "
            f"{t['response_window_s']:.3g} s | "
            f"{t['hold_s']:.3g} s ({as_text(t['hold_max_dev_w'], ' W')}) | "
            f"{_verdict_word(t['passed'])} |")
        notes.append(_reserve_note(t, rated_w))
    return [*lines, "", *notes, ""]


def _watts(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1f} W"


def _reserve_note(t: dict[str, Any], rated_w: float) -> str:
    """Requested versus offered versus delivered, in a sentence."""
    text = (f"* {t['product']} at {t['t_s']:.1f} s: requested {t['requested_w']:.1f} W "
            f"({100.0 * t['requested_w'] / rated_w:.0f} % of the {rated_w:.0f} W rating)")
    if t.get("offered_why"):
        text += f"; offered {t['offered_w']:.1f} W, because {t['offered_why']}"
    if t.get("delivered_w") is not None and t.get("baseline_w") is not None:
        text += (f"; delivered {t['delivered_w']:+.1f} W (the mean over the "
                 f"{t['hold_s']:.3g} s hold, from {t['baseline_w']:.1f} W)")
    if t.get("band_w") is not None:
        text += (f"; it passes when it is within {t['band_w']:.1f} W of the "
                 f"{t['target_w']:.1f} W target (2 % of rated + 10 % of the step) by the end of "
                 f"the {t['response_window_s']:.3g} s window and stays there through the hold")
    return text + "."


def _ramp_allowed_w(s: dict[str, Any]) -> float:
    """The largest change of true power over the ramp window that is no ramp violation (the
    rule of `hil.report.metrics.ramp_violations`)."""
    m = s["measure"]
    return (s["ramp_max_w_s"] * m["ramp_window_s"] * (1.0 + m["ramp_tolerance_pct"] / 100.0)
            + 0.01 * s["rated_w"])


def _counted_as(s: dict[str, Any]) -> dict[str, str]:
    """Each criterion's rule and tolerance, written beside its verdict."""
    m = s["measure"]
    rated = s["rated_w"]
    steady = (f"true power against the setpoint in the steady windows: from each step's allowed "
              f"response ({m['settle_s']:g} s + step / ramp) to the next command; "
              f"{s['tracked_s']:.0f} s of the {s['duration_s']:.0f} s (the ramps between are "
              "judged by the response and ramp criteria; standby and fault exemptions are not)")
    responses = (f"from the command to 90 % of each step of {m['min_step_pct']:g} % of rated "
                 "or more")
    return {
        "tracking_rms_pct": steady + ", time-weighted, in % of rated",
        "tracking_max_pct": "the largest error in the same windows, in % of rated",
        "response_p50_s": responses,
        "response_p90_s": responses,
        "response_max_s": responses,
        "responses_late": f"steps not at 90 % within {m['settle_s']:g} s + step / ramp",
        "cap_violations": (f"true power averaged over 1 s above {rated:.0f} W + "
                           f"{m['cap_tolerance_pct']:g} % = "
                           f"{rated * (1 + m['cap_tolerance_pct'] / 100):.1f} W"),
        "ramp_violations": (f"true power moving more than {s['ramp_max_w_s']:.3g} W/s x "
                            f"{m['ramp_window_s']:g} s + {m['ramp_tolerance_pct']:g} % + 1 % of "
                            f"rated (sensor noise) = {_ramp_allowed_w(s):.1f} W between any two "
                            f"moments {m['ramp_window_s']:g} s apart"),
        "temp_violations": f"hottest true chip above {s['temp_max_c']:.0f} °C",
        "commands_unacked": "commands without an ack at the end of the run",
        "commands_rejected": "acks that say rejected",
        "telemetry_gaps": "missing telemetry seq numbers within one agent run",
        "reserve_failures": "reserve tests not reached in their window or not held (see above)",
        "agent_crashes": "agent exits the rig did not ask for",
        "faults_missed": "faults that expect a safety trip and got none",
    }


def _fault_section(faults: list[dict[str, Any]]) -> list[str]:
    if not faults:
        return []
    lines = ["## Faults", ""]
    for f in faults:
        end = f" to {f['end_s']:.1f} s" if f.get("end_s") is not None else ""
        line = f"* {f['t_s']:.1f} s{end}: {f['kind']} {f.get('label') or ''}".rstrip()
        if f.get("expect") == "trip":
            at = f.get("tripped_at_s")
            line += (f"; the agent tripped at {at:.1f} s" if at is not None
                     else "; the agent did NOT trip")
        lines.append(line)
    return [*lines, ""]


def _verdict_word(passed: bool | None) -> str:
    return "skipped (not deliverable at this speed)" if passed is None else (
        "pass" if passed else "FAIL")


def write_summary(summary: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """DIR/summary.json and DIR/summary.md."""
    out_dir.mkdir(parents=True, exist_ok=True)
    js = out_dir / "summary.json"
    js.write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
    md = out_dir / "summary.md"
    md.write_text(markdown(summary), encoding="utf-8")
    return js, md
