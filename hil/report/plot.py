"""DIR/report.png of a HIL run: three panels over time (power: the operator's setpoint, the
governor's target and the true power; chip and ambient temperature; hashrate) with commands,
faults and violations marked, and the verdict in the title. matplotlib is imported only when a
plot is drawn (the agent's own install does without it).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hil.report.metrics import Step, reference_steps
from hil.report.recording import Recording
from hil.report.summary import as_text

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

    fig, axes = plt.subplots(3, 1, figsize=(12, 8.5), sharex=True,
                             gridspec_kw={"height_ratios": [3, 1.4, 1.2]})
    ax_p, ax_t, ax_h = axes
    t_start = min([0.0] + [t for t in rec.truth_power_w.t_s[:1]])

    _power_panel(ax_p, rec)
    _command_marks(ax_p, rec)
    _fault_marks(axes, rec)
    for a, b in summary["violation_episodes"]["ramp"] + summary["violation_episodes"]["cap"]:
        ax_p.axvspan(a, (b or a) + 0.2, color="red", alpha=0.35)
    _legend(ax_p, ncol=5, loc="lower left")
    _temperature_panel(ax_t, rec, summary)
    _hashrate_panel(ax_h, rec)
    ax_h.set_xlim(t_start, rec.end_s)

    fig.suptitle(_title(rec, summary), fontsize=9.5)
    for ax in axes:
        ax.grid(True, alpha=0.3)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _power_panel(ax: Any, rec: Recording) -> None:
    """The operator's setpoint (the reference), the governor's target, the true power."""
    xs, ys = _reference_line(rec, reference_steps(rec))
    if xs:
        ax.plot(xs, ys, color="#2ca02c", lw=2.2, label="setpoint (operator)", zorder=3)
    tgt = rec.telemetry_series("target_w").points()
    if tgt:
        ax.step([p[0] for p in tgt], [p[1] for p in tgt], where="post", color="#ff7f0e",
                lw=1.2, ls="--", label="governor target (agent)", zorder=4)
    pw = rec.truth_power_w.points()
    if pw:
        ax.plot([p[0] for p in pw], [p[1] for p in pw], color="#1f77b4", lw=1.3,
                label=f"measured power ({rec.truth_source})", zorder=5)
    ax.axhline(rec.rated_w, color="black", lw=0.8, ls=":", label="rated power (cap)")
    ax.set_ylabel("power (W)")
    ax.set_ylim(bottom=0, top=rec.rated_w * 1.18)


def _command_marks(ax: Any, rec: Recording) -> None:
    """A tick for every command; curtail/resume/standby, reserve tests, named and rejected
    commands also get a labelled line."""
    for c in rec.commands:
        t = float(c["t_s"])
        rejected = c.get("result") == "rejected" or c.get("error")
        named = c.get("kind") == "command" and c.get("label") not in (None, "", c.get("op"))
        if c.get("op") in ("curtail", "resume", "standby") or c.get("kind") in (
            "reserve", "release"
        ) or rejected or named:
            color = "red" if rejected else "#2ca02c"
            ax.axvline(t, color=color, lw=0.8, ls="-.", alpha=0.8)
            ax.text(t, rec.rated_w * 1.16, " " + str(c.get("label") or c.get("op")),
                    rotation=90, va="top", ha="left", fontsize=7, color=color)
    cmd_t = [float(c["t_s"]) for c in rec.commands]
    ax.plot(cmd_t, [rec.rated_w * 1.02] * len(cmd_t), "|", color="#2ca02c", ms=6,
            label="command sent")


def _fault_marks(axes: Sequence[Any], rec: Recording) -> None:
    """Each fault as a band (or a line when short) on every panel, labelled on the first."""
    for ax in axes:
        for f in rec.faults:
            color = FAULT_COLORS.get(str(f["kind"]), "grey")
            end = f.get("end_s")
            end = float(end) if end is not None else rec.end_s
            if end - float(f["t_s"]) < 0.5:
                ax.axvline(float(f["t_s"]), color=color, lw=1.5, alpha=0.6)
            else:
                ax.axvspan(float(f["t_s"]), end, color=color, alpha=0.13)
    for f in rec.faults:
        axes[0].text(float(f["t_s"]), rec.rated_w * 0.3, " " + str(f.get("label") or f["kind"]),
                     rotation=90, va="bottom", ha="left", fontsize=7,
                     color=FAULT_COLORS.get(str(f["kind"]), "grey"))


def _temperature_panel(ax: Any, rec: Recording, summary: dict[str, Any]) -> None:
    """The hottest chip (true and as the agent saw it), ambient, the hard limit."""
    temp = rec.truth_temp_c.points()
    if temp:
        ax.plot([p[0] for p in temp], [p[1] for p in temp], color="#d62728", lw=1.2,
                label=f"hottest chip ({rec.truth_source})")
    tel_t = rec.telemetry_series("temp_c").points()
    if tel_t and rec.truth_source != "telemetry":
        ax.plot([p[0] for p in tel_t], [p[1] for p in tel_t], color="#ff9896", lw=0.9,
                ls="--", label="hottest chip (agent)")
    amb = rec.ambient_c.points()
    if amb:
        ax.step([p[0] for p in amb], [p[1] for p in amb], where="post", color="#17becf",
                lw=1.0, label="ambient")
    ax.axhline(rec.temp_max_c, color="black", lw=0.8, ls=":", label="hard limit")
    for a, b in summary["violation_episodes"]["temp"]:
        ax.axvspan(a, (b or a) + 0.2, color="red", alpha=0.35)
    ax.set_ylabel("temperature (°C)")
    _legend(ax, ncol=4)


def _hashrate_panel(ax: Any, rec: Recording) -> None:
    """The agent's hashrate from verified nonces, and the emulator's."""
    hr = rec.telemetry_series("hashrate_ghs").points()
    if hr:
        ax.plot([p[0] for p in hr], [p[1] for p in hr], color="#8c564b", lw=1.1,
                label="hashrate, verified nonces (agent)")
    hr_true = rec.truth_hashrate_ghs.points()
    if hr_true and rec.truth_source != "telemetry":
        ax.plot([p[0] for p in hr_true], [p[1] for p in hr_true], color="#c49c94", lw=0.9,
                ls="--", label="hashrate (emulator)")
    ax.set_ylabel("hashrate (GH/s)")
    ax.set_xlabel("time (s) from scenario start" + (
        f", scenario played at {rec.speed:g}x" if rec.speed != 1 else ""))
    _legend(ax, ncol=2)


def _title(rec: Recording, summary: dict[str, Any]) -> str:
    v = summary["violations"]
    c = summary["commands"]
    return (
        f"gridminer HIL: {rec.scenario} — {'PASS' if summary['passed'] else 'FAIL'}   "
        f"tracking RMS {as_text(summary['tracking_rms_pct'], ' %')} (max "
        f"{as_text(summary['tracking_max_pct'], ' %')}) of {rec.rated_w:.0f} W, "
        f"response p90 {as_text(summary['response_s']['p90'], ' s')}, "
        f"violations cap/ramp/temp {v['cap']}/{v['ramp']}/{v['temp']}, "
        f"commands acked {c['acked']}/{c['sent']}"
    )
