"""The home of a `[home]` run (hil.rig.home): how much of the roof's surplus the miner absorbed
and how much grid energy it took, in the summary (`home_summary`, `home_section`) and in
DIR/home.png (`plot_home`: the roof, the house, the surplus, the miner and the grid over the
hours of the home's day).

Energies are over the played run (rig seconds, from the scenario's start): the surplus is what
the roof makes beyond the house's own load; the miner absorbs the part of it the miner draws;
whatever else the miner draws it takes from the grid (the smaller the better).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from hil.report.recording import Recording


def _integral_wh(t_s: list[float], values: list[float]) -> float:
    """Left-rectangle integral of W over s, in Wh."""
    total = 0.0
    for i in range(1, len(t_s)):
        total += values[i - 1] * (t_s[i] - t_s[i - 1])
    return total / 3600.0


def home_summary(rec: Recording) -> dict[str, Any] | None:
    """The home's energies (None: not a [home] run)."""
    home = rec.meta.get("home")
    if not home or not home.get("t_s"):
        return None
    rows = [(t, r, h, m, g) for t, r, h, m, g in zip(
        home["t_s"], home["roof_w"], home["house_w"], home["miner_w"], home["grid_w"],
        strict=True) if 0.0 <= t <= rec.end_s]
    if len(rows) < 2:
        return None
    t_s = [r[0] for r in rows]
    surplus = [max(0.0, roof - house) for _, roof, house, _, _ in rows]
    miner = [r[3] for r in rows]
    absorbed = [min(m, s) for m, s in zip(miner, surplus, strict=True)]
    taken = [max(0.0, m - s) for m, s in zip(miner, surplus, strict=True)]
    surplus_wh = _integral_wh(t_s, surplus)
    absorbed_wh = _integral_wh(t_s, absorbed)
    miner_wh = _integral_wh(t_s, miner)
    miner_grid_wh = _integral_wh(t_s, taken)
    return {
        "surplus_wh": round(surplus_wh, 4),
        "absorbed_wh": round(absorbed_wh, 4),
        "absorbed_pct": round(100.0 * absorbed_wh / surplus_wh, 1) if surplus_wh > 0 else None,
        "miner_wh": round(miner_wh, 4),
        "miner_grid_wh": round(miner_grid_wh, 4),
        "miner_grid_pct": round(100.0 * miner_grid_wh / miner_wh, 1) if miner_wh > 0 else None,
        "miner_from_surplus_pct": round(100.0 * absorbed_wh / miner_wh, 1)
        if miner_wh > 0 else None,
        "grid_import_wh": round(_integral_wh(t_s, [max(0.0, r[4]) for r in rows]), 4),
        "exported_wh": round(_integral_wh(t_s, [max(0.0, -r[4]) for r in rows]), 4),
        "meter_messages": home.get("published"),
        "silent_w": _silent_w(home, rec.speed),
    }


def _silent_w(home: dict[str, Any], speed: float) -> float | None:
    """The miner's most true power in the last quarter of the meter's silence (None: the run
    has none): by then the agent has called the meter stale and brought the load down."""
    silent = home.get("silent")
    if not silent:
        return None
    start_s, length_s = silent[0] / speed, silent[1] / speed
    t0, t1 = start_s + 0.75 * length_s, start_s + length_s
    inside = [m for t, m in zip(home["t_s"], home["miner_w"], strict=True) if t0 <= t < t1]
    return round(max(inside), 2) if inside else None


def home_figures(summary: dict[str, Any]) -> dict[str, float | None]:
    """The home criteria's figures (hil.scenario.CRITERIA), None without a [home] part."""
    h = summary.get("home") or {}
    return {"home_grid_pct": h.get("miner_grid_pct"), "home_silent_w": h.get("silent_w")}


def home_section(s: dict[str, Any], as_text: Callable[..., str]) -> list[str]:
    """The summary.md section of a [home] run."""
    h = s.get("home")
    if not h:
        return []
    return [
        "## Home: following the roof's surplus", "",
        "| figure | value |", "|---|---|",
        f"| surplus (roof beyond the house) | {as_text(h['surplus_wh'], ' Wh')} |",
        f"| absorbed by the miner | {as_text(h['absorbed_wh'], ' Wh')} "
        f"({as_text(h['absorbed_pct'], ' %')} of the surplus) |",
        f"| taken from the grid by the miner | {as_text(h['miner_grid_wh'], ' Wh')} of its "
        f"{as_text(h['miner_wh'], ' Wh')} ({as_text(h['miner_from_surplus_pct'], ' %')} "
        "from the surplus) |",
        f"| the home's import / export | {as_text(h['grid_import_wh'], ' Wh')} / "
        f"{as_text(h['exported_wh'], ' Wh')} |",
        f"| the miner's most power late in the meter's silence | "
        f"{as_text(h['silent_w'], ' W')} |",
        f"| meter messages | {h['meter_messages']} |",
        "",
    ]


def plot_home(rec: Recording, summary: dict[str, Any], path: Path) -> Path | None:
    """DIR/home.png: roof, house, surplus, miner and the miner's grid draw against the hour."""
    home, figures = rec.meta.get("home"), summary.get("home")
    if not home or not figures:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [row for row in zip(home["t_s"], home["hour"], home["roof_w"], home["house_w"],
                               home["miner_w"], strict=True) if row[0] >= 0.0]
    hour = [r[1] for r in rows]
    roof = [r[2] for r in rows]
    house = [r[3] for r in rows]
    surplus = [max(0.0, r - h) for r, h in zip(roof, house, strict=True)]
    miner = [r[4] for r in rows]
    fig, ax = plt.subplots(figsize=(11.0, 4.6))
    ax.fill_between(hour, 0, roof, color="#ffd54f", alpha=0.5, label="roof (solar)")
    ax.plot(hour, house, color="#6d4c41", lw=1.0, ls="--", label="house's own load")
    ax.plot(hour, surplus, color="#f57f17", lw=1.4, label="surplus (roof - house)")
    ax.plot(hour, miner, color="#1565c0", lw=1.6, label="miner (true board power)")
    ax.fill_between(hour, surplus, miner, where=[m > s for m, s in zip(miner, surplus,
                                                                        strict=True)],
                    color="#c62828", alpha=0.45, interpolate=True,
                    label="miner's draw from the grid")
    silent = home.get("silent")
    if silent:
        start_h = _hour_at(home, silent[0] / rec.speed)
        end_h = _hour_at(home, (silent[0] + silent[1]) / rec.speed)
        ax.axvspan(start_h, end_h, color="#9e9e9e", alpha=0.25, label="meter silent")
    for c in rec.commands:  # signed grid commands win over the roof while they last
        at_h = _hour_at(home, float(c["t_s"]))
        ax.axvline(at_h, color="#6a1b9a", lw=1.0, ls=":")
        ax.annotate(c.get("label") or c["op"], (at_h, 1.0), xycoords=("data", "axes fraction"),
                    xytext=(3, -12), textcoords="offset points", fontsize=7, color="#6a1b9a")
    ax.set_xlabel("hour of the home's day")
    ax.set_ylabel("W")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8)
    ax.set_title(
        f"{rec.scenario}: the miner absorbed {figures['absorbed_pct']} % of the surplus "
        f"({figures['absorbed_wh']:.3g} of {figures['surplus_wh']:.3g} Wh) and took "
        f"{figures['miner_grid_wh']:.3g} Wh from the grid", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _hour_at(home: dict[str, Any], t_s: float) -> float:
    """The home's hour at rig time `t_s` (the recorded hour nearest to it)."""
    pairs = list(zip(home["t_s"], home["hour"], strict=True))
    return min(pairs, key=lambda p: abs(p[0] - t_s))[1]
