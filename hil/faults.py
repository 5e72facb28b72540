"""Fault plan of the board emulator: what goes wrong, when (emulated seconds), and for how long.

File format (TOML or JSON, chosen by the suffix; the same keys either way)::

    [[fault]]                 # JSON: {"faults": [{...}, ...]}
    kind = "reply_corrupt"    # see KINDS below
    at_s = 5.0                # emulated seconds after start
    duration_s = 2.0          # optional: omitted = until the end of the run
    probability = 0.2         # per reply frame, for reply_* kinds (default 1.0)

Kinds and their parameters:

* ``reply_corrupt`` / ``reply_truncate`` / ``reply_drop`` -- a reply frame gets one byte flipped,
  is cut short, or is lost; ``probability`` per frame, ``port`` = "chain" (default) or "board".
* ``chip_silent`` -- chip ``chip`` (index in chain order) stops answering and returns no nonces.
* ``chip_hw_errors`` -- chip ``chip`` (omitted: every chip) returns invalid nonces at ``rate_hz``
  (counted in its 0x4C error counter, like a real hardware error).
* ``chain_hang`` -- from ``at_s`` the whole chain stops answering until it is reset (the board's
  reset_chain over the board link) or power-cycled; ``duration_s`` is ignored.
* ``sensor_stuck`` -- sensor ``sensor`` (one of SENSORS; ``channel`` for chip_temp, omitted = all)
  keeps the reading it had when the fault started.
* ``sensor_invalid`` -- reading the sensor fails: ``mode`` "error" (default; the HAL raises
  OSError, as on an I2C error) or "out_of_range" (an impossible value: -273.2 degC, -1 otherwise).
* ``serial_garbage`` -- ``bytes`` random bytes (default 64) are written at ``at_s`` into ``port``
  ("chain" default, or "board"), between whole frames.

The same plan is built in code with `FaultPlan.add(Fault(...))` or `FaultPlan.inject(kind, ...)`.
"""

from __future__ import annotations

import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hil.errors import FaultPlanError

SENSORS = ("chip_temp", "board_temp", "vr_temp", "vin", "iin", "power", "fan_rpm", "vcore")
PORTS = ("chain", "board")
#: kind -> allowed parameters (besides kind, at_s, duration_s)
KINDS: dict[str, tuple[str, ...]] = {
    "reply_corrupt": ("probability", "port"),
    "reply_truncate": ("probability", "port"),
    "reply_drop": ("probability", "port"),
    "chip_silent": ("chip",),
    "chip_hw_errors": ("chip", "rate_hz"),
    "chain_hang": (),
    "sensor_stuck": ("sensor", "channel"),
    "sensor_invalid": ("sensor", "channel", "mode"),
    "serial_garbage": ("bytes", "port"),
}
ONE_SHOT = ("chain_hang", "serial_garbage")


@dataclass
class Fault:
    """One scheduled fault. `params` holds the kind's parameters (validated by `check`)."""

    kind: str
    at_s: float = 0.0
    duration_s: float | None = None
    params: dict[str, Any] = field(default_factory=dict)
    started: bool = False
    effects: int = 0  # frames damaged, nonces spoiled, readings frozen, ...
    cleared_at_s: float | None = None  # chain_hang: when a reset ended it

    def check(self, where: str = "fault") -> Fault:
        if self.kind not in KINDS:
            raise FaultPlanError(f"{where}: unknown kind {self.kind!r}; one of {', '.join(KINDS)}")
        if not _finite(self.at_s) or self.at_s < 0:
            raise FaultPlanError(f"{where}: at_s must be a number >= 0, got {self.at_s!r}")
        if self.duration_s is not None and (not _finite(self.duration_s) or self.duration_s <= 0):
            raise FaultPlanError(f"{where}: duration_s must be > 0, got {self.duration_s!r}")
        allowed = KINDS[self.kind]
        for key, value in self.params.items():
            if key not in allowed:
                raise FaultPlanError(f"{where}: {self.kind} takes no {key!r} (allowed: {allowed})")
            _check_param(where, key, value)
        if self.kind in ("sensor_stuck", "sensor_invalid") and "sensor" not in self.params:
            raise FaultPlanError(f"{where}: {self.kind} needs 'sensor' (one of {SENSORS})")
        if self.kind == "chip_silent" and "chip" not in self.params:
            raise FaultPlanError(f"{where}: chip_silent needs 'chip' (index in chain order)")
        if self.kind == "chip_hw_errors" and "rate_hz" not in self.params:
            raise FaultPlanError(f"{where}: chip_hw_errors needs 'rate_hz'")
        return self

    def active(self, now_s: float) -> bool:
        if now_s < self.at_s:
            return False
        if self.kind == "chain_hang":
            return self.cleared_at_s is None
        return self.duration_s is None or now_s < self.at_s + self.duration_s

    def as_dict(self, now_s: float) -> dict[str, Any]:
        return {
            "kind": self.kind, "at_s": self.at_s, "duration_s": self.duration_s,
            **self.params, "started": self.started, "active": self.active(now_s),
            "effects": self.effects, "cleared_at_s": self.cleared_at_s,
        }


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _check_param(where: str, key: str, value: Any) -> None:
    if key == "probability" and not (_finite(value) and 0.0 <= value <= 1.0):
        raise FaultPlanError(f"{where}: probability must be in [0, 1], got {value!r}")
    if key == "rate_hz" and not (_finite(value) and value >= 0):
        raise FaultPlanError(f"{where}: rate_hz must be >= 0, got {value!r}")
    if key in ("chip", "channel") and not (isinstance(value, int) and not isinstance(value, bool)
                                           and value >= 0):
        raise FaultPlanError(f"{where}: {key} must be an integer >= 0, got {value!r}")
    if key == "bytes" and not (isinstance(value, int) and 0 < value <= 65536):
        raise FaultPlanError(f"{where}: bytes must be an integer in 1..65536, got {value!r}")
    if key == "sensor" and value not in SENSORS:
        raise FaultPlanError(f"{where}: sensor must be one of {SENSORS}, got {value!r}")
    if key == "mode" and value not in ("error", "out_of_range"):
        raise FaultPlanError(f"{where}: mode must be 'error' or 'out_of_range', got {value!r}")
    if key == "port" and value not in PORTS:
        raise FaultPlanError(f"{where}: port must be one of {PORTS}, got {value!r}")


def fault_from_dict(entry: Any, where: str = "fault") -> Fault:
    """A checked Fault from a plan entry (dict with kind, at_s, duration_s and parameters)."""
    if not isinstance(entry, dict):
        raise FaultPlanError(f"{where}: expected a table/object, got {type(entry).__name__}")
    params = dict(entry)
    kind = params.pop("kind", None)
    at_s = params.pop("at_s", 0.0)
    duration_s = params.pop("duration_s", None)
    if not isinstance(kind, str):
        raise FaultPlanError(f"{where}: missing 'kind'")
    return Fault(kind, at_s, duration_s, params).check(where)


class FaultPlan:
    """Faults by time. The emulator asks `start_due(now_s)` each step and `active(kind, now_s)`
    where a fault applies; `inject` adds one while running (at_s None = now)."""

    KEEP_FINISHED = 50  # finished faults listed in as_list (all are counted)

    def __init__(self, faults: list[Fault] | None = None) -> None:
        self.faults: list[Fault] = []  # pending and running
        self.finished: list[Fault] = []  # the most recent KEEP_FINISHED that ended
        self.started_count = 0
        self.finished_count = 0
        for f in faults or []:
            self.add(f)

    def add(self, fault: Fault) -> Fault:
        fault.check(f"fault {len(self.faults) + self.finished_count}")
        self.faults.append(fault)
        return fault

    def inject(self, kind: str, at_s: float, duration_s: float | None = None,
               **params: Any) -> Fault:
        return self.add(Fault(kind, at_s, duration_s, params))

    @classmethod
    def from_dict(cls, data: Any) -> FaultPlan:
        if not isinstance(data, dict):
            raise FaultPlanError("fault plan: expected a table/object with 'fault' or 'faults'")
        unknown = set(data) - {"fault", "faults"}
        if unknown:
            raise FaultPlanError(f"fault plan: unknown keys {sorted(unknown)}")
        entries = data.get("fault", data.get("faults", []))
        if not isinstance(entries, list):
            raise FaultPlanError("fault plan: 'fault'/'faults' must be a list")
        return cls([fault_from_dict(e, f"fault {i}") for i, e in enumerate(entries)])

    @classmethod
    def load(cls, path: str | Path) -> FaultPlan:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise FaultPlanError(f"fault plan {p}: cannot read ({exc.strerror})") from None
        try:
            data = json.loads(text) if p.suffix.lower() == ".json" else tomllib.loads(text)
        except (ValueError, tomllib.TOMLDecodeError) as exc:
            kind = p.suffix or "TOML"
            raise FaultPlanError(f"fault plan {p}: not valid {kind} ({exc})") from None
        return cls.from_dict(data)

    def start_due(self, now_s: float) -> list[Fault]:
        """Faults whose start time has come and that were not started yet (marks them started)."""
        due = [f for f in self.faults if not f.started and f.at_s <= now_s]
        for f in due:
            f.started = True
        self.started_count += len(due)
        return due

    def retire(self, now_s: float) -> None:
        """Move faults that are over (one-shot bursts, ended windows, cleared hangs) to
        `finished`, so a long run with many injections stays cheap."""
        if not self.faults:
            return
        keep = []
        for f in self.faults:
            over = f.started and (f.kind == "serial_garbage" or not f.active(now_s))
            if over:
                self.finished.append(f)
                self.finished_count += 1
            else:
                keep.append(f)
        if len(keep) != len(self.faults):
            self.faults = keep
            del self.finished[: -self.KEEP_FINISHED]

    def active(self, kind: str, now_s: float) -> list[Fault]:
        return [f for f in self.faults if f.kind == kind and f.started and f.active(now_s)]

    def clear_hangs(self, now_s: float) -> None:
        """A chain reset or power cycle ends every started chain hang."""
        for f in self.faults:
            if f.kind == "chain_hang" and f.started and f.cleared_at_s is None:
                f.cleared_at_s = now_s

    def as_list(self, now_s: float) -> list[dict[str, Any]]:
        """Recently finished faults (oldest first), then running and pending ones."""
        return [f.as_dict(now_s) for f in self.finished + self.faults]
