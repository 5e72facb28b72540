"""Stand-ins for the governor behind GridSession, shared by the unit tests, the integration
fixtures and tests/bench/bench_grid.py: the status caps, the governor's decision and a sink
that records what it was told."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

CAPS = {"min_w": 100, "max_w": 3000, "ramp_max_w_s": 500, "chips": 4, "chip_model": "BM1370",
        "hashrate_max_ghs": 5000.0}


@dataclass
class Decision:
    applied_w: float
    limited_by: str | None = None
    eta_s: float | None = None


class RecordingSink:
    """A governor stand-in that records what it was told (thread-safe) and answers with the
    target, clamped to `max_w` (then limited by "thermal"), reached in `eta_s` seconds."""

    def __init__(self, max_w: float = CAPS["max_w"], eta_s: float | None = 1.5) -> None:
        self.calls: list[tuple[str, Any, Any]] = []
        self.changed = threading.Event()
        self.max_w = max_w
        self.eta_s = eta_s

    def apply(self, op: str, power_w: Any, ramp_w_s: Any) -> Decision:
        self.calls.append((op, power_w, ramp_w_s))
        self.changed.set()
        target = {"curtail": 100.0, "standby": 0.0, "resume": 2500.0}.get(op, power_w)
        if target > self.max_w:
            return Decision(self.max_w, "thermal", 3.0)
        return Decision(float(target), None, self.eta_s)

    def caps(self) -> dict:
        return CAPS
