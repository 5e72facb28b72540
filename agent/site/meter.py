"""The site meter at the point of connection, read from an MQTT topic: what the grid settles on.

A reading is a CBOR or JSON map with `power_w`, or the bare number as text ("1234.5"); anything
else, negative or not finite, is counted and ignored. A reading older than `stale_s` is none."""

from __future__ import annotations

import json
import math
from typing import Any

from agent.grid.telemetry import decode_map


def reading_w(payload: bytes) -> float | None:
    """The power in W a meter message carries, or None."""
    data: Any = decode_map(payload)
    if data is None:
        try:
            text = payload.decode("utf-8").strip()
            data = json.loads(text) if text.startswith("{") else float(text)
        except (UnicodeDecodeError, ValueError):
            return None
    if isinstance(data, dict):
        data = data.get("power_w")
    if isinstance(data, bool) or not isinstance(data, (int, float)):
        return None
    value = float(data)
    return value if math.isfinite(value) and value >= 0 else None


class Meter:
    def __init__(self, topic: str, stale_s: float = 3.0) -> None:
        self.topic = topic
        self.stale_s = stale_s
        self.power_w: float | None = None
        self.seen_s: float | None = None
        self.ignored = 0

    def update(self, payload: bytes, now_s: float) -> None:
        value = reading_w(payload)
        if value is None:
            self.ignored += 1
            return
        self.power_w, self.seen_s = value, now_s

    def value_w(self, now_s: float) -> float | None:
        if self.seen_s is None or now_s - self.seen_s > self.stale_s:
            return None
        return self.power_w
