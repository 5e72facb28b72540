"""DIR/report.png of a site run: the site target the grid operator asked for, the measured site
power under gridminer and under the baseline, the devices online, and the commands each sent
its devices per second; faults and the regulation segment marked, the verdict and the key
figures in the title (the conventions of `hil.report.plot`: legends beside the panels, matplotlib
imported only when drawing)."""

from __future__ import annotations

from typing import Any

from hil.report.plot import PLOT_WIDTH_IN
from hil.report.summary import as_text
from hil.site.report import SiteRecording, references

COLORS = {"gridminer": "#1f77b4", "baseline": "#ff7f0e", "target": "#2ca02c"}
FAULT_COLORS = {"kill_devices": "#d62728", "site_kill": "#7f7f7f"}


def plot_site(rec: SiteRecording, summary: dict[str, Any], path: Any) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(PLOT_WIDTH_IN + 2.6, 8.5), sharex=True,
                             gridspec_kw={"height_ratios": [3, 1.1, 1.1]})
    ax_p, ax_o, ax_c = axes
    names = [n for n in ("gridminer", "baseline") if n in rec.passes]
    for ax in axes:
        _marks(ax, rec)
    refs = references(rec, "gridminer")
    end = max(float(rec.passes[n]["end_s"]) for n in names)
    if refs:
        xs = [r.t_s for r in refs] + [end]
        ys = [r.power_w / 1000 for r in refs] + [refs[-1].power_w / 1000]
        ax_p.step(xs, ys, where="post", color=COLORS["target"], lw=2.0,
                  label="site target (grid operator)", zorder=3)
    for name in names:
        pts = rec.power(name).points()
        ax_p.plot([t for t, _ in pts], [v / 1000 for _, v in pts], color=COLORS[name],
                  lw=1.2 if name == "gridminer" else 1.0, zorder=5 if name == "gridminer" else 4,
                  label=f"measured site power, {_who(name)}")
        on = rec.online(name).points()
        ax_o.plot([t for t, _ in on], [v for _, v in on], color=COLORS[name], lw=1.2,
                  label=f"devices online, {_who(name)}")
        ax_c.plot(*_rate(rec.passes[name]["device_commands"], end), color=COLORS[name],
                  lw=1.0, label=f"device commands / s, {_who(name)}")
    ax_p.axhline(rec.rating_w / 1000, color="black", lw=0.8, ls=":", label="site rating")
    for a, b in summary["gridminer"]["ramp_episodes"]:
        ax_p.axvspan(a, b + 0.2, color="red", alpha=0.35)
    ax_p.set_ylabel("site power (kW)")
    ax_p.set_ylim(bottom=0, top=rec.rating_w / 1000 * 1.1)
    ax_o.set_ylabel("devices online")
    ax_o.set_ylim(bottom=0, top=rec.devices * 1.1)
    ax_c.set_ylabel("commands / s")
    ax_c.set_xlim(0, end)
    played = f", played at {rec.speed:g}x" if rec.speed != 1 else ""
    ax_c.set_xlabel(f"time (s) from scenario start{played}")
    for ax in axes:
        ax.grid(True, alpha=0.3)
        _legend_beside(ax)
    fig.suptitle(_title(rec, summary), fontsize=9.5)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _legend_beside(ax: Any) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=7, framealpha=0.9,
                  borderaxespad=0.0)


def _who(name: str) -> str:
    return "gridminer" if name == "gridminer" else "baseline (today's tools)"


def _marks(ax: Any, rec: SiteRecording) -> None:
    """Device losses, the controller's absence, the regulation segment."""
    for f in rec.passes["gridminer"]["faults"]:
        color = FAULT_COLORS.get(str(f["kind"]), "grey")
        if f["kind"] == "site_kill":
            ax.axvspan(float(f["t_s"]), float(f["end_s"]), color=color, alpha=0.2)
        else:
            ax.axvline(float(f["t_s"]), color=color, lw=1.5, alpha=0.6)
    for seg in rec.regulation:
        ax.axvspan(seg["t0_s"] / rec.speed, seg["t1_s"] / rec.speed, color="#9467bd",
                   alpha=0.07)


def _rate(times: list[float], end_s: float) -> tuple[list[float], list[float]]:
    """Commands per second, one point a second."""
    counts = [0] * (int(end_s) + 1)
    for t in times:
        if 0 <= t <= end_s:
            counts[int(t)] += 1
    return [i + 0.5 for i in range(len(counts))], [float(c) for c in counts]


def _title(rec: SiteRecording, s: dict[str, Any]) -> str:
    gm, base = s["gridminer"], s["baseline"]
    scores = ", ".join(as_text(r.get("score")) for r in gm["regulation"]) or "n/a"
    text = (f"gridminer site: {rec.scenario} — {'PASS' if s['passed'] else 'FAIL'}   "
            f"{rec.devices} devices, {rec.rating_w / 1e6:.2f} MW; tracking RMS "
            f"{as_text(gm['tracking_rms_pct'], ' %')} (max {as_text(gm['tracking_max_pct'], ' %')})"
            f", step p90 {as_text(gm['steps']['p90_s'], ' s')}, ramp violations "
            f"{gm['ramp_violations']}, RegD score {scores}")
    if base is not None:
        text += (f"\nbaseline (today's fleet tools): tracking RMS "
                 f"{as_text(base['tracking_rms_pct'], ' %')}, step p90 "
                 f"{as_text(base['steps']['p90_s'], ' s')}, RegD score "
                 f"{', '.join(as_text(r.get('score')) for r in base['regulation']) or 'n/a'}")
    return text
