"""The rig's console output: `StatusLine` writes notes as lines and a live status line (phase,
setpoint, governor target, true power, chip temperature, mode, acks, active faults) that is
redrawn in place on a terminal and printed every 10 s otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TextIO

REDRAW_S = 0.25  # the status line at most this often
LINE_EVERY_S = 10.0  # without a terminal: one status line this often

ProgressHook = Callable[[str], None]


class StatusLine:
    """Notes and the status line on `out` (None: silent)."""

    def __init__(self, out: TextIO | None) -> None:
        self.out = out
        self._last_draw = 0.0
        self._last_line = 0.0

    def print(self, text: str, line: bool = False) -> None:
        """`text` over the status line; `line`: as a line of its own that stays."""
        out = self.out
        if out is None:
            return
        tty = hasattr(out, "isatty") and out.isatty()
        if tty:
            out.write("\r\x1b[2K" + text + ("\n" if line else ""))
        elif line:
            out.write(text + "\n")
        out.flush()

    def due(self) -> bool:
        """True when the status line may be drawn again (at most every REDRAW_S)."""
        now = time.monotonic()
        if now - self._last_draw < REDRAW_S:
            return False
        self._last_draw = now
        return True

    def show(self, head: str, last: dict[str, Any], power: Any, temp: Any, acks: int, sent: int,
             active: list[str]) -> None:
        """The status line: `head` (progress or warm-up), the agent's latest telemetry `last`,
        true power and temperature, acks of the commands sent, active faults."""
        text = (f"{head}  setpoint {_f0(last.get('setpoint_w'))} W  target "
                f"{_f0(last.get('target_w'))} W  power {_f1(power)} W  chip {_f1(temp)} °C  "
                f"{last.get('mode', '-')}  acks {acks}/{sent}"
                + (f"  fault: {', '.join(active)}" if active else ""))
        tty = self.out is not None and hasattr(self.out, "isatty") and self.out.isatty()
        if tty:
            self.print(text)
        elif self._last_draw - self._last_line >= LINE_EVERY_S:
            self._last_line = self._last_draw
            self.print(text, line=True)


def _f0(x: Any) -> str:
    return f"{x:.0f}" if isinstance(x, int | float) else "-"


def _f1(x: Any) -> str:
    return f"{x:.1f}" if isinstance(x, int | float) else "-"
