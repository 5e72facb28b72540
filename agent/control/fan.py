"""The fan loop: PI on the hottest chip temperature (reverse acting: hotter -> faster).

Like ESP-Miner's fan task (spec bm13xx-protocol.md section 7.4): a target temperature (60 degC by
default), an output between the minimum speed and 100 %, an exponential average of the input,
a fixed 70 % while no valid temperature is known, and 100 % on a trip (set by the governor and
the envelope). The integral is clamped so the output leaves saturation soon after the error turns.
"""

from __future__ import annotations

import math


class FanController:
    """PI fan controller; `update(dt_s, temp_c)` returns the fan duty in percent."""

    def __init__(
        self,
        target_temp_c: float = 60.0,
        min_pct: int = 25,
        kp_pct_c: float = 5.0,
        ki_pct_c_s: float = 0.5,
        startup_pct: int = 70,
        ema_alpha: float = 0.2,
    ) -> None:
        self.target_temp_c = target_temp_c
        self.min_pct = min_pct
        self.kp_pct_c = kp_pct_c
        self.ki_pct_c_s = ki_pct_c_s
        self.startup_pct = startup_pct
        self.ema_alpha = ema_alpha
        self._temp_c: float | None = None
        self._integral_pct: float = float(startup_pct)
        self.pct: int = startup_pct

    def reset(self, pct: float | None = None) -> None:
        """Forget the filtered temperature; restart the integral from `pct` (default: startup)."""
        self._temp_c = None
        self._integral_pct = float(self.startup_pct if pct is None else pct)

    def update(self, dt_s: float, temp_c: float | None) -> int:
        """One step: `temp_c` is the hottest valid chip temperature (None: no valid reading)."""
        if temp_c is None or not math.isfinite(temp_c):
            self._temp_c = None
            self.pct = self.startup_pct
            return self.pct
        if self._temp_c is None:
            self._temp_c = temp_c
        else:
            self._temp_c += self.ema_alpha * (temp_c - self._temp_c)
        error = self._temp_c - self.target_temp_c
        lo, hi = float(self.min_pct), 100.0
        p = self.kp_pct_c * error
        integral = self._integral_pct + self.ki_pct_c_s * error * max(0.0, dt_s)
        out = p + integral
        if (out > hi and error > 0) or (out < lo and error < 0):
            integral = self._integral_pct  # saturated: integrate no further that way
        self._integral_pct = min(hi, max(lo, integral))  # and never beyond the output range
        self.pct = round(min(hi, max(lo, p + integral)))
        return self.pct
