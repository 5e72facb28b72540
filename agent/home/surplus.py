"""Following the roof: the load to hold so that the home exports little and imports nothing.

The meter sees the home's net grid power, the miner's own load included, so the surplus left
for the miner is export + the miner's measured power at that moment. That estimate is filtered
asymmetrically: it falls quickly (a cloud: stop importing) and rises slowly (the sun is back:
do not chase a gap in the clouds), then the load to hold is the filtered surplus minus a margin,
within [min_w, max_w]. Below min_w the chain is better off than mining at a loss of grid energy:
`want_w` answers None (standby), with a least time on and off so it does not hunt. A meter that
has said nothing usable for `stale_s` is no meter: None as well, so the load goes down at the
governor's ramp. Nothing here writes to the governor (`agent.home.target` does).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class SurplusSettings:
    margin_w: float = 10.0  # held below the surplus
    rise_tau_s: float = 30.0  # the estimate follows a rising surplus with this time constant
    fall_tau_s: float = 2.0  # ... and a falling one with this
    stale_s: float = 30.0  # no usable meter reading this long: no load
    dwell_s: float = 60.0  # least time between switching the chain on and off


class SurplusFollower:
    """The surplus estimate from meter readings (`observe`) and the load to hold (`want_w`)."""

    def __init__(self, settings: SurplusSettings, min_w: float, max_w: float) -> None:
        self.settings = settings
        self.min_w = min_w
        self.max_w = max_w
        self.surplus_w: float | None = None  # filtered export + own load
        self.last_reading_s: float | None = None
        self.readings = 0
        self.on = False
        self._switched_s: float | None = None

    def observe(self, now_s: float, export_w: float, load_w: float | None) -> None:
        """A meter reading: `export_w` (negative: import) with the miner drawing `load_w` (None:
        unknown, then taken as nothing: the estimate errs low)."""
        raw = export_w + (load_w if load_w is not None and math.isfinite(load_w) else 0.0)
        s = self.settings
        if self.surplus_w is None or self.last_reading_s is None:
            self.surplus_w = raw
        else:
            dt = max(0.0, now_s - self.last_reading_s)
            tau = s.rise_tau_s if raw > self.surplus_w else s.fall_tau_s
            alpha = 1.0 if tau <= 0 else 1.0 - math.exp(-dt / tau)
            self.surplus_w += alpha * (raw - self.surplus_w)
        self.last_reading_s = now_s
        self.readings += 1

    def stale(self, now_s: float) -> bool:
        return self.last_reading_s is None or now_s - self.last_reading_s > self.settings.stale_s

    def want_w(self, now_s: float) -> float | None:
        """The load to hold now (W), or None: none (standby)."""
        s = self.settings
        if self.stale(now_s) or self.surplus_w is None:
            self._switch(now_s, False, force=True)
            return None
        wanted = self.surplus_w - s.margin_w
        if self.on and wanted < self.min_w:
            self._switch(now_s, False)
        elif not self.on and wanted >= self.min_w + s.margin_w:
            self._switch(now_s, True)
        if not self.on:
            return None
        return min(max(wanted, self.min_w), self.max_w)

    def _switch(self, now_s: float, on: bool, force: bool = False) -> None:
        if on == self.on:
            return
        if not force and self._switched_s is not None \
                and now_s - self._switched_s < self.settings.dwell_s:
            return
        self.on, self._switched_s = on, now_s
