"""Host side of the board link: `BoardClient` talks to the bridge firmware over a serial port.

Request/response with a sequence number, a per-attempt timeout and retries (the bridge answers a
retried request without acting twice). Timeouts, error replies and closed ports raise
`agent.errors.BoardLinkError`. The wire format is firmware_bridge/PROTOCOL.md.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from agent.chain.port import SerialPort, open_port
from agent.clock import Clock, SystemClock
from agent.errors import BoardLinkError, ConfigError
from firmware_bridge import link

DEFAULT_BAUD = 115200


@dataclass
class BoardSample:
    """One READ_SENSORS reply in SI-ish units; None where the bridge reported no valid reading."""

    ts_s: float  # agent monotonic clock when the reply arrived
    chip_temps_c: list[float | None] = field(default_factory=list)
    board_temp_c: float | None = None
    vr_temp_c: float | None = None
    vin_v: float | None = None
    iin_a: float | None = None
    power_w: float | None = None  # the board's input, or the wall's with a PSU efficiency
    fan_rpm: int | None = None
    fan_pct: int | None = None
    vcore_mv: int | None = None
    chain_powered: bool = False
    bridge_state: str = "idle"  # idle | active | tripped
    trip_reason: str | None = None  # heartbeat_timeout | chip_over_temp | vr_over_temp | ...
    uptime_ms: int = 0

    @property
    def max_chip_temp_c(self) -> float | None:
        valid = [t for t in self.chip_temps_c if t is not None]
        return max(valid) if valid else None


@dataclass
class BridgeStatus:
    """HEARTBEAT reply."""

    bridge_state: str
    trip_reason: str | None
    uptime_ms: int


def _scaled(value: int | None, scale: float) -> float | None:
    return None if value is None else value / scale


def sample_from_payload(payload: bytes, ts_s: float, psu_efficiency: float = 1.0) -> BoardSample:
    """BoardSample from a READ_SENSORS reply payload (ValueError if malformed); `power_w` is the
    wall's (board input / `psu_efficiency`)."""
    s = link.unpack_sensors(payload)
    return BoardSample(
        ts_s=ts_s,
        chip_temps_c=[_scaled(t, 10.0) for t in s["chip_temps_dc"]],
        board_temp_c=_scaled(s["board_temp_dc"], 10.0),
        vr_temp_c=_scaled(s["vr_temp_dc"], 10.0),
        vin_v=_scaled(s["vin_mv"], 1000.0),
        iin_a=_scaled(s["iin_ma"], 1000.0),
        power_w=_scaled(s["power_mw"], 1000.0 * psu_efficiency),
        fan_rpm=s["fan_rpm"],
        fan_pct=s["fan_pct"],
        vcore_mv=s["vcore_mv"],
        chain_powered=s["chain_powered"],
        bridge_state=link.STATE_NAMES.get(s["state"], f"state{s['state']}"),
        trip_reason=None if s["trip_reason"] == link.R_NONE
        else link.TRIP_NAMES.get(s["trip_reason"], f"reason{s['trip_reason']}"),
        uptime_ms=s["uptime_ms"],
    )


class BoardClient:
    """Client of the bridge firmware on `serial_port` (a pyserial port, or a path/URL to open).

    Every call is one request; `timeout_s` per attempt, `retries` more attempts with the same seq.
    Unsolicited trip events are kept in `events` (newest last, at most 32). Samples count power
    at the wall when a `psu_efficiency` below 1 is given (config [board])."""

    def __init__(
        self,
        serial_port: SerialPort | str,
        timeout_s: float = 0.25,
        retries: int = 2,
        clock: Clock | None = None,
        baudrate: int = DEFAULT_BAUD,
        psu_efficiency: float = 1.0,
    ) -> None:
        self._owns_port = isinstance(serial_port, str)
        if isinstance(serial_port, str):
            try:
                self.port: SerialPort = open_port(serial_port, "board", baudrate, 0.02)
            except ConfigError as exc:
                raise BoardLinkError(str(exc)) from exc
        else:
            self.port = serial_port
        self.timeout_s = float(timeout_s)
        self.retries = int(retries)
        self.clock = clock or SystemClock()
        self.psu_efficiency = float(psu_efficiency)
        self._decoder = link.Decoder()
        self._seq = 0
        self._lock = threading.Lock()
        self.events: list[tuple[float, str, str | None]] = []
        self.timeouts = 0
        self.error_replies = 0

    def close(self) -> None:
        if self._owns_port:
            self.port.close()

    def __enter__(self) -> BoardClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def rx_crc_errors(self) -> int:
        return self._decoder.crc_errors

    # ---- requests ----------------------------------------------------------------------------

    def request(self, typ: int, payload: bytes = b"") -> link.Message:
        """Send one request and return its reply; BoardLinkError on timeout or an error reply."""
        name = link.REQUEST_NAMES.get(typ, f"type 0x{typ:02X}")
        with self._lock:
            self._seq = (self._seq % 255) + 1  # 1..255; seq 0 is for unsolicited events
            seq = self._seq
            frame = link.encode(seq, typ, payload)
            for _attempt in range(self.retries + 1):
                try:
                    self.port.write(frame)
                    reply = self._wait(seq, typ)
                except (OSError, ValueError) as exc:  # pyserial raises SerialException(OSError)
                    raise BoardLinkError(f"board link {name}: port failed: {exc}") from exc
                if reply is None:
                    self.timeouts += 1
                    continue
                if reply.typ == link.T_ERROR:
                    self.error_replies += 1
                    try:
                        _req, code = link.unpack_error(reply.payload)
                    except ValueError:
                        code = -1
                    raise BoardLinkError(
                        f"board link {name}: bridge error {link.ERROR_NAMES.get(code, code)}")
                return reply
            raise BoardLinkError(
                f"board link {name}: no reply in {self.retries + 1} x {self.timeout_s:.2f} s")

    def _wait(self, seq: int, typ: int) -> link.Message | None:
        deadline = self.clock.monotonic() + self.timeout_s
        while True:
            data = self.port.read(max(1, getattr(self.port, "in_waiting", 0) or 0))
            if data:
                for msg in self._decoder.feed(data):
                    if msg.typ == link.T_EVENT:
                        self._event(msg)
                    elif msg.seq == seq and msg.typ in (typ | link.REPLY, link.T_ERROR):
                        return msg
            elif self.clock.monotonic() >= deadline:
                return None
            if self.clock.monotonic() >= deadline + self.timeout_s:  # a chatty line
                return None

    def _event(self, msg: link.Message) -> None:
        if len(msg.payload) == 2:
            state, reason = msg.payload[0], msg.payload[1]
            self.events.append((self.clock.monotonic(), link.STATE_NAMES.get(state, str(state)),
                                link.TRIP_NAMES.get(reason)))
            del self.events[:-32]

    # ---- the API the agent uses --------------------------------------------------------------

    def read_sample(self) -> BoardSample:
        reply = self.request(link.T_READ_SENSORS)
        try:
            return sample_from_payload(reply.payload, self.clock.monotonic(), self.psu_efficiency)
        except ValueError as exc:
            raise BoardLinkError(f"board link read_sensors: bad reply: {exc}") from exc

    def heartbeat(self) -> BridgeStatus:
        reply = self.request(link.T_HEARTBEAT)
        try:
            st = link.unpack_status(reply.payload)
        except ValueError as exc:
            raise BoardLinkError(f"board link heartbeat: bad reply: {exc}") from exc
        reason = st["trip_reason"]
        return BridgeStatus(link.STATE_NAMES.get(st["state"], str(st["state"])),
                            None if reason == link.R_NONE else link.TRIP_NAMES.get(reason),
                            st["uptime_ms"])

    def set_fan_pct(self, pct: float) -> int:
        """Set the fan duty; returns what the bridge applied (100 while thermally tripped)."""
        pct = round(pct)
        if not 0 <= pct <= 100:
            raise BoardLinkError(f"fan pct must be 0..100, got {pct}")
        return link.unpack_u8(self.request(link.T_SET_FAN, link.pack_u8(pct)).payload)

    def set_vcore_mv(self, mv: float) -> int:
        mv = round(mv)
        if not 0 <= mv <= 0xFFFF:
            raise BoardLinkError(f"vcore must be 0..65535 mV, got {mv}")
        return link.unpack_u16(self.request(link.T_SET_VCORE, link.pack_u16(mv)).payload)

    def set_chain_power(self, on: bool) -> bool:
        """Chain power; BoardLinkError ("tripped") if the bridge refuses to power on."""
        return bool(link.unpack_u8(self.request(link.T_CHAIN_POWER,
                                                link.pack_u8(1 if on else 0)).payload))

    def reset_chain(self) -> None:
        self.request(link.T_CHAIN_RESET)

    def info(self) -> dict[str, Any]:
        reply = self.request(link.T_INFO)
        try:
            return link.unpack_info(reply.payload)
        except ValueError as exc:
            raise BoardLinkError(f"board link info: bad reply: {exc}") from exc
