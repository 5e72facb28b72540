"""The fleet as the site controller knows it: each device's latest retained status and telemetry
(spec sections 5 and 6), learned from the site broker. Pure bookkeeping, no MQTT: the controller
feeds it every message; anything that is not a well-formed map is counted and ignored."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

from agent.grid.contract import RESERVED_DEVICES
from agent.grid.telemetry import decode_map

EFFICIENCY_TAU_S = 120.0  # measured J/TH is averaged over this long ...
FULL_LOAD_FRAC = 0.8  # ... from readings at this share of max_w or more (comparable devices)


def _number(value: Any) -> float | None:
    """A finite, non-negative number from a map, else None (bool is no number)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) and value >= 0 else None


@dataclass
class DeviceRecord:
    """One device's latest status and telemetry; times are the controller's monotonic seconds."""

    device: str
    online: bool = False
    mode: str | None = None
    min_w: float = 0.0
    max_w: float = 0.0
    ramp_max_w_s: float = 0.0
    chips: int = 0
    hashrate_max_ghs: float = 0.0
    power_w: float | None = None
    target_w: float | None = None
    setpoint_w: float | None = None
    hashrate_ghs: float | None = None
    energy_wh: float | None = None
    seen_s: float | None = None  # last telemetry
    j_th_avg: float | None = None  # measured efficiency, averaged over EFFICIENCY_TAU_S

    @property
    def has_caps(self) -> bool:
        return 0 <= self.min_w <= self.max_w and self.max_w > 0 and self.ramp_max_w_s >= 1

    def answering(self, now_s: float, stale_s: float) -> bool:
        """Online with telemetry younger than `stale_s`."""
        return self.online and self.seen_s is not None and now_s - self.seen_s <= stale_s

    @property
    def j_th(self) -> float:
        """Efficiency in J/TH near full load: measured power over verified hashrate, averaged
        over minutes from readings at FULL_LOAD_FRAC of max_w or more (a miner's efficiency
        moves with its load, so readings at different loads do not compare devices), else its
        rating (max_w over hashrate_max_ghs); infinite when neither is known (placed last)."""
        if self.j_th_avg is not None:
            return self.j_th_avg
        if self.hashrate_max_ghs > 0 and self.max_w > 0:
            return self.max_w / (self.hashrate_max_ghs / 1000.0)
        return math.inf


class Roster:
    """Every device of one site seen on the broker, by id (the reserved ids left out)."""

    def __init__(self, site: str, prefix: str) -> None:
        self.site = site
        self.prefix = prefix
        self.devices: dict[str, DeviceRecord] = {}
        self.ignored: Counter[str] = Counter()  # why messages were ignored

    def update(self, topic: str, payload: bytes, now_s: float) -> str | None:
        """Take one status or telemetry message; returns its kind, or None if ignored."""
        parts = topic.split("/")
        if len(parts) != 4 or parts[0] != self.prefix or parts[1] != self.site:
            return None
        device, kind = parts[2], parts[3]
        if kind not in ("status", "telemetry") or device in RESERVED_DEVICES:
            return None
        data = decode_map(payload)
        if data is None:
            if not payload and kind == "status":  # a retained status cleared: device gone
                self.devices.pop(device, None)
                return kind
            self.ignored[f"{kind}_undecodable"] += 1
            return None
        record = self.devices.get(device) or DeviceRecord(device)
        if kind == "status":
            if not self._take_status(record, data):
                self.ignored["status_bad_caps"] += 1
                return None
        else:
            self._take_telemetry(record, data, now_s)
        self.devices[device] = record
        return kind

    @staticmethod
    def _take_status(record: DeviceRecord, data: dict[str, Any]) -> bool:
        caps = data.get("caps")
        state = data.get("state")
        if not isinstance(caps, dict) or state not in ("online", "offline"):
            return False
        numbers = {k: _number(caps.get(k)) for k in ("min_w", "max_w", "ramp_max_w_s")}
        if any(v is None for v in numbers.values()):
            return False
        record.online = state == "online"
        record.min_w, record.max_w = numbers["min_w"] or 0.0, numbers["max_w"] or 0.0
        record.ramp_max_w_s = numbers["ramp_max_w_s"] or 0.0
        record.chips = int(_number(caps.get("chips")) or 0)
        record.hashrate_max_ghs = _number(caps.get("hashrate_max_ghs")) or 0.0
        if isinstance(data.get("mode"), str):
            record.mode = data["mode"]
        return True

    @staticmethod
    def _take_telemetry(record: DeviceRecord, data: dict[str, Any], now_s: float) -> None:
        if isinstance(data.get("mode"), str):
            record.mode = data["mode"]
        record.power_w = _number(data.get("power_w"))
        record.target_w = _number(data.get("target_w"))
        record.setpoint_w = _number(data.get("setpoint_w"))
        record.hashrate_ghs = _number(data.get("hashrate_ghs"))
        record.energy_wh = _number(data.get("energy_wh"))
        power, hashrate = record.power_w, record.hashrate_ghs
        if (power is not None and power >= FULL_LOAD_FRAC * record.max_w > 0 and hashrate
                and hashrate > 1e-3 and record.mode == "mining"):
            j_th = power / (hashrate / 1000.0)
            if record.j_th_avg is None:
                record.j_th_avg = j_th
            else:
                dt_s = 1.0 if record.seen_s is None else min(10.0, max(0.0, now_s - record.seen_s))
                weight = dt_s / EFFICIENCY_TAU_S
                record.j_th_avg += (j_th - record.j_th_avg) * min(1.0, weight)
        record.seen_s = now_s

    # ---- views --------------------------------------------------------------------------------
    def online(self) -> list[DeviceRecord]:
        return [r for r in self.devices.values() if r.online and r.has_caps]

    def answering(self, now_s: float, stale_s: float) -> list[DeviceRecord]:
        return [r for r in self.online() if r.answering(now_s, stale_s)]

    def measured_w(self, now_s: float, stale_s: float) -> float | None:
        """The sum of the answering devices' latest power (None if none answers)."""
        powers = [r.power_w for r in self.answering(now_s, stale_s) if r.power_w is not None]
        return sum(powers) if powers else None

    def hashrate_ghs(self, now_s: float, stale_s: float) -> float:
        return sum(r.hashrate_ghs or 0.0 for r in self.answering(now_s, stale_s))
