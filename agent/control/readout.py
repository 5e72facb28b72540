"""What the runtime reads out about itself: the figures telemetry publishes (`snapshot`) and the
one-line status (`status_line`). The measured figures come from the latest board sample only
while it is current (`measured`): a stale sample's are left out (None in the snapshot, "-" on the
status line) and the board is reported lost, on the status line with the sample's age."""

from __future__ import annotations

import math
from typing import Any

MEASURED_FIELDS = ("power_w", "vcore_mv", "temp_c", "board_temp_c", "fan_pct")


def hottest_c(sample: Any) -> float | None:
    """The hottest finite chip temperature of a board sample (None: none)."""
    temps = [t for t in (getattr(sample, "chip_temps_c", None) or [])
             if isinstance(t, int | float) and math.isfinite(t)]
    return max(temps) if temps else None


def measured(sample: Any, fresh: bool) -> dict[str, Any]:
    """The figures read from the board sample; all None unless it is current (`fresh`)."""
    if not fresh or sample is None:
        return dict.fromkeys(MEASURED_FIELDS)
    s = sample
    return {"power_w": getattr(s, "power_w", None), "vcore_mv": getattr(s, "vcore_mv", None),
            "temp_c": hottest_c(s), "board_temp_c": getattr(s, "board_temp_c", None),
            "fan_pct": getattr(s, "fan_pct", None)}


def snapshot(act: Any, chain: Any, figures: dict[str, Any], *, freq_mhz: float,
             energy_wh: float, fresh: bool) -> dict[str, Any]:
    """The telemetry snapshot of an actuation (None: none yet), the chain's stats (None: none
    yet) and the `measured` figures."""
    c = chain
    return {
        "mode": getattr(act, "mode", "starting"),
        "target_w": getattr(act, "target_w", None),
        "hashrate_ghs": c.hashrate_ghs if c is not None else None,
        "freq_mhz": freq_mhz,
        **figures,
        "hw_err": c.hw_errors if c is not None else 0,
        "chips_ok": c.chips_ok if c is not None else 0,
        "energy_wh": energy_wh,
        "board": "ok" if fresh else "lost",
        "mode_reason": getattr(act, "reason", None),
    }


def _num(v: Any, fmt: str, unit: str) -> str:
    return f"{v:{fmt}}{unit}" if isinstance(v, int | float) and math.isfinite(v) else "-"


def status_line(now: float, act: Any, c: Any, m: dict[str, Any], *, fresh: bool,
                sample_s: float | None, grid_state: Any) -> str:
    """One line of an actuation, the chain's stats `c`, the `measured` figures `m`, the board
    link (its sample's age once lost: `sample_s`) and the grid link's state."""
    rate = c.hashrate_ghs
    rate_text = f"{rate / 1000:.2f}TH/s" if rate >= 1000 else f"{rate:.1f}GH/s"
    mode = getattr(act, "mode", "starting")
    line = (
        f"mode={mode} "
        f"target={_num(getattr(act, 'target_w', None), '.1f', 'W')} "
        f"power={_num(m['power_w'], '.1f', 'W')} "
        f"hashrate={rate_text} "
        f"hottest={_num(m['temp_c'], '.1f', 'C')} "
        f"fan={_num(m['fan_pct'], '.0f', '%')} "
        f"freq={c.freq_mhz:.0f}MHz chain={c.state} chips={c.chips_ok}/{c.chips_expected} "
        f"hw={c.hw_errors} crc={c.crc_errors} "
    )
    if fresh:
        line += "board=ok"
    elif sample_s is None:
        line += "board=lost"
    else:
        line += f"board=lost({now - sample_s:.0f}s)"
    if isinstance(grid_state, str):
        line += f' grid="{grid_state}"' if " " in grid_state else f" grid={grid_state}"
    reason = getattr(act, "reason", None)
    if reason and (mode == "tripped" or not fresh):
        line += f' why="{reason}"'
    return line
