"""The maps a device publishes: status and telemetry (spec sections 5 and 6), their CBOR encoding
and decoding (acks too), and the bounded telemetry buffer for link outages."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from typing import Any

import cbor2

from agent.grid.contract import CAPS_FIELDS, SEQ_MODULO, VERSION

# Fields the runtime's snapshot provides (spec section 6); GridSession adds the command fields.
SNAPSHOT_FIELDS = (
    "mode",
    "power_w",
    "target_w",
    "hashrate_ghs",
    "freq_mhz",
    "vcore_mv",
    "temp_c",
    "board_temp_c",
    "fan_pct",
    "hw_err",
    "chips_ok",
    "energy_wh",
)
#: optional keys a newer agent adds when it has them (spec section 7: consumers ignore keys they
#: do not know): the board link's state and why the mode is what it is, the pool's figures, and
#: the site controller's fleet figures
OPTIONAL_FIELDS = (
    "board",
    "mode_reason",
    "pool",
    "pool_accepted",
    "pool_rejected",
    "pool_stale",
    "pool_hashrate_ghs",
    # a site controller's (spec section 7): devices online and known, the power it can add or
    # shed now, and within 5 min at its ramp limit
    "devices",
    "devices_total",
    "flex_up_w",
    "flex_down_w",
    "flex_up_5m_w",
    "flex_down_5m_w",
)


def clean(value: Any) -> Any:
    """A value fit for the wire: None and non-finite floats become None, floats are rounded."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, float):
        return round(value, 3) if math.isfinite(value) else None
    if isinstance(value, (int, str, bytes)):
        return value
    return None


def encode(data: Mapping[str, Any]) -> bytes:
    """Device-to-operator maps are CBOR with text keys; absent values are left out."""
    return cbor2.dumps({k: v for k, v in data.items() if v is not None})


def decode_map(payload: bytes) -> dict[str, Any] | None:
    """A published map back from its CBOR; None for anything that is not one (never raises)."""
    try:
        data = cbor2.loads(payload)
    except Exception:
        return None
    return dict(data) if isinstance(data, Mapping) else None


def jsonable(value: Any) -> Any:
    """A decoded map fit for JSON output: bytes as hex, keys as text."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def _get(source: Any, name: str) -> Any:
    if isinstance(source, Mapping):
        return source.get(name)
    return getattr(source, name, None)


def caps_map(caps: Any) -> dict[str, Any]:
    """The `caps` of the status map from a mapping or an object with those attributes."""
    return {k: clean(_get(caps, k)) for k in CAPS_FIELDS if clean(_get(caps, k)) is not None}


def status_map(
    state: str, bd: int, fw: str, caps: Any, mode: str | None, ts_ms: int
) -> dict[str, Any]:
    """The retained status map of spec section 5 (`state` online or offline)."""
    status: dict[str, Any] = {"v": VERSION, "state": state, "bd": bd, "fw": fw}
    status["caps"] = caps_map(caps)
    if mode is not None:
        status["mode"] = mode
    status["ts"] = ts_ms
    return status


class TelemetryBuffer:
    """Numbers telemetry messages and holds them while the broker is unreachable.

    `seq` wraps at 2**32. When the buffer is full the oldest message is dropped and counted in
    `lost`; the count is stamped into each message when it is sent, so the operator can tell a gap
    in `seq` that the bound caused from one the network caused.
    """

    def __init__(self, capacity: int = 3600) -> None:
        self.capacity = max(1, capacity)
        self.seq = 0
        self.lost = 0
        self._queue: deque[dict[str, Any]] = deque()

    def __len__(self) -> int:
        return len(self._queue)

    def produce(self, snapshot: Any, ts_ms: int, extra: Mapping[str, Any] | None = None) -> None:
        """Queue one message built from the runtime's snapshot (mapping or object)."""
        msg: dict[str, Any] = {"v": VERSION, "seq": self.seq, "ts": ts_ms}
        for name in SNAPSHOT_FIELDS:
            msg[name] = clean(_get(snapshot, name))
        for name in OPTIONAL_FIELDS:
            value = clean(_get(snapshot, name))
            if value is not None:
                msg[name] = value
        for name, value in (extra or {}).items():
            msg[name] = clean(value)
        self.seq = (self.seq + 1) % SEQ_MODULO
        if len(self._queue) >= self.capacity:
            self._queue.popleft()
            self.lost += 1
        self._queue.append(msg)

    def peek(self) -> dict[str, Any] | None:
        """The oldest queued message with the current `lost` count stamped in."""
        if not self._queue:
            return None
        return {**self._queue[0], "lost": self.lost}

    def pop(self) -> None:
        self._queue.popleft()
