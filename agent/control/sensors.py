"""The sensor judgement the safety envelope uses: whether a board sample's readings can be
believed. A reading that is NaN or out of range, or a sample without power, is rejected at once
(`SensorJudge.readings`). Over time (`watch`): a whole sample bit-identical for `sensor_frozen_s`
while the chain is powered is frozen; so is one chip temperature unchanged for `sensor_frozen_s`
while the board power swung by `FROZEN_SWING_SHARE` of max power (a stuck channel among live
ones could hide the hottest chip; it stays suspect until its reading changes). A chip channel
that has read while the chain was powered and then reads nothing for `sensor_frozen_s` while it
is powered is missing (it could hide the hottest chip as well); it stays expected across the
power cycle, so after a trip's release it must read again within `sensor_frozen_s` of the
power-on. No valid chip temperature at all is missing too (`missing`). Such sensor trips get
`SENSOR_TRIP_LIMIT` - 1 retries: the `SENSOR_TRIP_LIMIT`-th within `SENSOR_TRIP_WINDOW_S` is
final (`trip`), so a board cannot cycle trip/ramp forever."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

from agent.config import EnvelopeConfig

TEMP_RANGE_C = (-40.0, 200.0)
VIN_RANGE_V = (0.0, 60.0)
IIN_RANGE_A = (0.0, 1000.0)
VCORE_RANGE_MV = (0.0, 5000.0)
FROZEN_SWING_SHARE = 0.10  # a live chip sensor follows a power swing this large (share of max)
SENSOR_TRIPS = ("sensor_missing", "sensor_frozen")  # faults that could hide the hottest chip
SENSOR_TRIP_LIMIT = 3  # the third such trip within the window latches for good
SENSOR_TRIP_WINDOW_S = 3600.0


class BoardReading(Protocol):
    """What the envelope and the governor read of `agent.chain.board.BoardSample`."""

    ts_s: float
    chip_temps_c: list[float | None]
    board_temp_c: float | None
    vr_temp_c: float | None
    vin_v: float | None
    iin_a: float | None
    power_w: float | None
    fan_rpm: float | None
    fan_pct: float | None
    vcore_mv: float | None
    chain_powered: bool
    bridge_state: Any
    trip_reason: Any


def finite(x: Any) -> bool:
    """A real number, not a bool, not NaN or infinite."""
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


@dataclass
class _Watch:
    """One chip temperature channel: the reading held since `since_s`, and the power range seen
    meanwhile."""

    temp_c: float
    since_s: float
    power_lo_w: float
    power_hi_w: float


class _StuckChannels:
    """Chip temperature channels that keep one reading while the board power swings."""

    def __init__(self, frozen_s: float, swing_w: float) -> None:
        self.frozen_s = frozen_s
        self.swing_w = swing_w
        self._watch: dict[int, _Watch] = {}
        self._stuck: dict[int, _Watch] = {}  # latched until the reading changes

    def observe(self, now_s: float, temps_c: list[float | None], power_w: float) -> str | None:
        """Follow one sample; the fault of the first stuck channel, or None."""
        for ch, t in enumerate(temps_c):
            stuck = self._stuck.get(ch)
            if stuck is not None and (t is None or t == stuck.temp_c):
                continue  # suspect until it reads something else
            self._stuck.pop(ch, None)
            w = self._watch.get(ch)
            if t is None:
                self._watch.pop(ch, None)
            elif w is None or t != w.temp_c:
                self._watch[ch] = _Watch(t, now_s, power_w, power_w)
            else:
                w.power_lo_w, w.power_hi_w = min(w.power_lo_w, power_w), max(w.power_hi_w, power_w)
                if now_s - w.since_s > self.frozen_s and \
                        w.power_hi_w - w.power_lo_w >= self.swing_w:
                    self._stuck[ch] = w
        for table in (self._watch, self._stuck):  # a shorter sample: missing channels forgotten
            for ch in [ch for ch in table if ch >= len(temps_c)]:
                del table[ch]
        if not self._stuck:
            return None
        ch, w = min(self._stuck.items())
        return (f"sensor_frozen: chip_temps_c[{ch}] stuck at {w.temp_c:g} C for "
                f"{now_s - w.since_s:.1f} s while power moved {w.power_hi_w - w.power_lo_w:.0f} W")


class _DarkChannels:
    """Chip temperature channels that read while the chain was powered and now read nothing."""

    def __init__(self, dark_s: float) -> None:
        self.dark_s = dark_s
        self._expected: set[int] = set()  # read while powered once: kept across power cycles
        self._dark_since: dict[int, float] = {}

    def observe(self, now_s: float, temps_c: list[float | None], powered: bool) -> str | None:
        """Follow one sample; the fault of the first channel dark for too long, or None."""
        if not powered:
            self._dark_since.clear()  # only a powered chain must report (grace from power-on)
        for ch, t in enumerate(temps_c):
            if t is not None:
                self._dark_since.pop(ch, None)
                if powered:
                    self._expected.add(ch)
        if not powered:
            return None
        dark = [ch for ch in sorted(self._expected) if ch >= len(temps_c) or temps_c[ch] is None]
        for ch in dark:
            since = self._dark_since.setdefault(ch, now_s)
            if now_s - since > self.dark_s:
                return (f"sensor_missing: chip_temps_c[{ch}] unreadable for {now_s - since:.1f} s "
                        f"while the chain is powered")
        return None


class SensorJudge:
    """Judges the board's sensors sample by sample for the envelope: each method returns the
    fault it finds (None: none); `trip` counts the sensor trips that follow."""

    def __init__(self, cfg: EnvelopeConfig, max_power_w: float) -> None:
        self.cfg = cfg
        self.max_power_w = max_power_w
        self._frozen_key: tuple[Any, ...] | None = None
        self._frozen_since_s: float | None = None
        self._stuck = _StuckChannels(cfg.sensor_frozen_s, FROZEN_SWING_SHARE * max_power_w)
        self._dark = _DarkChannels(cfg.sensor_frozen_s)
        self._chip_temp_seen_s: float | None = None
        self._chain_on_since_s: float | None = None
        self._trips_s: deque[float] = deque()  # sensor trips within the window

    def readings(self, s: BoardReading) -> tuple[str | None, list[float]]:
        """NaN and range checks of one new sample: (the fault, the valid chip temperatures)."""
        temps: list[float] = []
        for i, t in enumerate(s.chip_temps_c or []):
            if t is None:
                continue
            if not finite(t):
                return f"sensor_nan: chip_temps_c[{i}]={t}", []
            if not TEMP_RANGE_C[0] <= t <= TEMP_RANGE_C[1]:
                return f"sensor_range: chip_temps_c[{i}]={t}", []
            temps.append(float(t))
        max_p = max(3.0 * self.max_power_w, self.max_power_w + 50.0)
        ranges = {
            "board_temp_c": TEMP_RANGE_C,
            "vr_temp_c": TEMP_RANGE_C,
            "vin_v": VIN_RANGE_V,
            "iin_a": IIN_RANGE_A,
            "vcore_mv": VCORE_RANGE_MV,
            "power_w": (0.0, max_p),
        }
        for name, (lo, hi) in ranges.items():
            v = getattr(s, name, None)
            if v is None:
                if name == "power_w":
                    return "sensor_missing: power_w", []
                continue
            if not finite(v):
                return f"sensor_nan: {name}={v}", []
            if not lo <= v <= hi:
                return f"sensor_range: {name}={v}", []
        return None, temps

    def watch(self, now_s: float, s: BoardReading, power: float | None,
              has_temps: bool) -> str | None:
        """Follow one new sample over time: frozen readings, stuck or dark chip channels."""
        # frozen: bit-identical readings for too long while the chain is powered
        key = (tuple(s.chip_temps_c or ()), s.board_temp_c, s.vr_temp_c, s.vin_v, s.iin_a,
               s.power_w)
        if not s.chain_powered or key != self._frozen_key:
            self._frozen_key = key if s.chain_powered else None
            self._frozen_since_s = now_s
        elif self._frozen_since_s is not None and \
                now_s - self._frozen_since_s > self.cfg.sensor_frozen_s:
            return f"sensor_frozen: identical readings for {now_s - self._frozen_since_s:.1f} s"
        if power is not None:
            stuck = self._stuck.observe(now_s, list(s.chip_temps_c or ()), power)
            if stuck is not None:
                return stuck
        if has_temps:  # with no channel at all, `missing` speaks
            return self._dark.observe(now_s, list(s.chip_temps_c or ()), bool(s.chain_powered))
        self._dark.observe(now_s, [], bool(s.chain_powered))
        return None

    def missing(self, now_s: float, chain_powered: bool, temps_valid: bool) -> str | None:
        """No valid chip temperature while the chain is powered, for too long."""
        if not chain_powered:
            self._chain_on_since_s = None
            return None
        if self._chain_on_since_s is None:
            self._chain_on_since_s = now_s
            self._chip_temp_seen_s = None
        if temps_valid:
            self._chip_temp_seen_s = now_s
        elif self._chip_temp_seen_s is not None:
            if now_s - self._chip_temp_seen_s > self.cfg.sensor_stale_s:
                return "sensor_missing: no valid chip temperature"
        elif now_s - self._chain_on_since_s > self.cfg.sensor_frozen_s:
            return "sensor_missing: no chip temperature since the chain was powered"
        return None

    def trip(self, now_s: float, fault: str) -> tuple[str, bool]:
        """A trip on `fault` latches: count it if it is a sensor trip. Returns the trip reason
        and whether it is final (the one that used up the retries)."""
        if fault.split(":")[0] not in SENSOR_TRIPS:
            return fault, False
        trips = self._trips_s
        trips.append(now_s)
        while trips and now_s - trips[0] > SENSOR_TRIP_WINDOW_S:
            trips.popleft()
        if len(trips) < SENSOR_TRIP_LIMIT:
            return fault, False
        return (f"{fault} ({len(trips)} sensor trips within {SENSOR_TRIP_WINDOW_S / 60:g} min: "
                f"stays tripped until the agent restarts)"), True
