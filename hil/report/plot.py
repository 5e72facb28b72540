"""DIR/report.png of a HIL run: a strip of the commands sent (named events labelled), then
three panels over time: power (the operator's setpoint, the governor's target, the true board
power and the wall power through the PSU, the fastest path the declared ramp allows after each
command, reserve-test windows), chip and ambient temperature, hashrate; faults and violations
marked, the verdict in the title, legends beside the panels so they cover no trace. A scenario
that plays a compressed day is drawn against its time of day. matplotlib is imported only when a
plot is drawn (the agent's own install does without it).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hil.report.metrics import Step, reference_steps
from hil.report.recording import Recording, hour_at
from hil.report.summary import as_text

FAULT_COLORS = {
    "broker_outage": "#9467bd",
    "serial_garbage": "#8c564b",
    "chip_death": "#d62728",
    "stuck_sensor": "#e377c2",
    "agent_kill": "#7f7f7f",
}
EVENT_OPS = ("curtail", "resume", "standby")
EVENT_KINDS = ("reserve", "release")
LABEL_ROWS = (0.38, 0.62, 0.86)  # heights of the event labels in the command strip
LABEL_CHAR_IN = 0.058  # about one character of the 7 pt labels, inches
PLOT_WIDTH_IN = 11.0  # the panels' width (the legends sit to their right)


def _reference_line(rec: Recording, steps: Sequence[Step]) -> tuple[list[float], list[float]]:
    xs: list[float] = []
    ys: list[float] = []
    for s in steps:
        xs += [s.t_s, s.end_s]
        ys += [s.reference_w, s.reference_w]
    return xs, ys


def _legend(ax: Any) -> None:
    """Beside the panel, not over its traces."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=7, framealpha=0.9,
                  borderaxespad=0.0)


def plot(rec: Recording, summary: dict[str, Any], path: Path) -> Path:
    """DIR/report.png: commands; setpoint, target, board and wall power; chip temperature;
    hashrate; with faults, violations and reserve windows marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(4, 1, figsize=(PLOT_WIDTH_IN + 2.6, 9.5), sharex=True,
                             gridspec_kw={"height_ratios": [0.75, 3, 1.4, 1.2]})
    ax_c, ax_p, ax_t, ax_h = axes
    t_start = min([0.0] + [t for t in rec.truth_power_w.t_s[:1]])

    _fault_marks(axes, rec)
    _command_strip(ax_c, rec, t_start)
    _power_panel(ax_p, rec)
    _ramp_paths(ax_p, rec)
    _reserve_windows(ax_p, summary)
    for a, b in summary["violation_episodes"]["ramp"] + summary["violation_episodes"]["cap"]:
        ax_p.axvspan(a, (b or a) + 0.2, color="red", alpha=0.35)
    _legend(ax_p)
    _temperature_panel(ax_t, rec, summary)
    _hashrate_panel(ax_h, rec)
    ax_h.set_xlim(t_start, rec.end_s)
    _time_axis(ax_h, ax_c, rec, t_start)

    fig.suptitle(_title(rec, summary), fontsize=9.5)
    for ax in axes[1:]:
        ax.grid(True, alpha=0.3)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _power_panel(ax: Any, rec: Recording) -> None:
    """The operator's setpoint (the reference), the governor's target, the true board power and
    the wall power through the PSU."""
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
    wall = rec.wall_power_w.points()
    if wall and any(abs(w - (rec.truth_power_w.at(t) or w)) > 0.05 for t, w in wall):
        ax.plot([p[0] for p in wall], [p[1] for p in wall], color="#7f7f7f", lw=0.9,
                label="wall power (incl. PSU)", zorder=2)
    ax.axhline(rec.rated_w, color="black", lw=0.8, ls=":", label="rated power (cap)")
    ax.set_ylabel("power (W)")
    top = max([rec.rated_w] + [p[1] for p in wall])
    ax.set_ylim(bottom=0, top=top * 1.08)


def _ramp_paths(ax: Any, rec: Recording) -> None:
    """After each step, the fastest path the ramp allows (the command's or the declared one):
    the true power may lag it, never lead it."""
    label = "fastest path the ramp allows"
    for s in reference_steps(rec):
        if s.start_w is None or abs(s.reference_w - s.start_w) < 0.5 or s.one_sided:
            continue
        t_end = s.t_s + abs(s.reference_w - s.start_w) / s.ramp_w_s
        ax.plot([s.t_s, min(t_end, s.end_s)],
                [s.start_w, s.start_w + (s.reference_w - s.start_w)
                 * (min(t_end, s.end_s) - s.t_s) / (t_end - s.t_s)],
                color="#9467bd", lw=1.0, ls=(0, (1, 1.2)), zorder=6, label=label)
        label = "_"


def _reserve_windows(ax: Any, summary: dict[str, Any]) -> None:
    """Each reserve test: its response window, then the band it must hold for the hold time."""
    for t in summary.get("reserve") or []:
        if t.get("skipped") or t.get("band_w") is None:
            continue
        t0 = float(t["t_s"])
        t1 = t0 + float(t["response_window_s"])
        ax.axvspan(t0, t1, color="#ffbb78", alpha=0.35, lw=0, label="reserve: response window")
        ax.fill_between([t1, t1 + float(t["hold_s"])], t["target_w"] - t["band_w"],
                        t["target_w"] + t["band_w"], color="#ff7f0e", alpha=0.18, lw=0,
                        label="reserve: band to hold")


def _command_strip(ax: Any, rec: Recording, t_start: float) -> None:
    """A tick for every command sent (red: rejected or not sent); curtail/resume/standby,
    reserve tests, named and rejected commands and faults labelled, on rows that do not
    overlap."""
    ax.set_ylim(0, 1)
    ax.set_yticks([])
    ax.set_ylabel("commands", rotation=0, ha="right", va="center", fontsize=8)
    for side in ("left", "right"):
        ax.spines[side].set_visible(False)
    ok = [float(c["t_s"]) for c in rec.commands if not _refused(c)]
    bad = [float(c["t_s"]) for c in rec.commands if _refused(c)]
    ax.plot(ok, [0.12] * len(ok), "|", color="#2ca02c", ms=9, mew=1.2)
    ax.plot(bad, [0.12] * len(bad), "|", color="red", ms=9, mew=1.2)
    s_per_in = max(rec.end_s - t_start, 1e-9) / PLOT_WIDTH_IN
    free_from = [-float("inf")] * len(LABEL_ROWS)
    labels = [(float(c["t_s"]), str(c.get("label") or c.get("op")), "red" if _refused(c)
               else "#2ca02c") for c in rec.commands if _named(c)]
    labels += [(float(f["t_s"]), str(f.get("label") or f["kind"]),
                FAULT_COLORS.get(str(f["kind"]), "grey")) for f in rec.faults]
    for t, text, color in sorted(labels):
        width_s = (len(text) + 2) * LABEL_CHAR_IN * s_per_in
        at_end = t + width_s > rec.end_s  # a label near the end reads leftwards
        start = t - width_s if at_end else t
        row = next((i for i, free in enumerate(free_from) if free <= start),
                   min(range(len(LABEL_ROWS)), key=lambda i: free_from[i]))
        ax.plot([t, t], [0.2, LABEL_ROWS[row] - 0.06], color=color, lw=0.6, alpha=0.6)
        ax.text(t, LABEL_ROWS[row], text, fontsize=7, color=color, va="center",
                ha="right" if at_end else "left")
        free_from[row] = max(t, start + width_s)


def _refused(c: dict[str, Any]) -> bool:
    return bool(c.get("result") == "rejected" or c.get("error"))


def _named(c: dict[str, Any]) -> bool:
    """A command worth a label: an event of its own rather than one point of a curve."""
    named = c.get("kind") == "command" and c.get("label") not in (None, "", c.get("op"))
    return bool(c.get("op") in EVENT_OPS or c.get("kind") in EVENT_KINDS or _refused(c)
                or named)


def _fault_marks(axes: Sequence[Any], rec: Recording) -> None:
    """Each fault as a band (or a line when short) on every panel (labelled in the strip)."""
    for ax in axes:
        for f in rec.faults:
            color = FAULT_COLORS.get(str(f["kind"]), "grey")
            end = f.get("end_s")
            end = float(end) if end is not None else rec.end_s
            if end - float(f["t_s"]) < 0.5:
                ax.axvline(float(f["t_s"]), color=color, lw=1.5, alpha=0.6)
            else:
                ax.axvspan(float(f["t_s"]), end, color=color, alpha=0.13)


def _time_axis(ax: Any, ax_top: Any, rec: Recording, t_start: float) -> None:
    """The x axis: the scenario's time of day when it plays a compressed day (seconds of the
    run along the top), else seconds from the scenario's start."""
    played = f", played at {rec.speed:g}x" if rec.speed != 1 else ""
    if len(rec.day_clock) < 2:
        ax.set_xlabel("time (s) from scenario start" + played)
        return
    clock = [(float(t), float(h)) for t, h in rec.day_clock]
    back = [(h, t) for t, h in clock]
    first, last = hour_at(clock, t_start), hour_at(clock, rec.end_s)
    step = 1 if last - first <= 16 else 2
    hours = [h for h in range(int(first) + 1, int(last) + 1) if h % step == 0]
    ax.set_xticks([hour_at(back, h) for h in hours])
    ax.set_xticklabels([f"{h % 24:02d}:00" for h in hours])
    ax.set_xlabel(f"time of day in the scenario (a compressed day: {_hhmm(first)} to "
                  f"{_hhmm(last)} in {rec.end_s:.0f} s{played})")
    top = ax_top.secondary_xaxis("top")
    top.set_xlabel("seconds from scenario start", fontsize=8)
    top.tick_params(labelsize=7)


def _hhmm(hour: float) -> str:
    minutes = round(hour * 60)
    return f"{minutes // 60 % 24:02d}:{minutes % 60:02d}"


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
    _legend(ax)


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
    _legend(ax)


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
