"""Host side of the board link: `BoardClient` talks to the bridge firmware over a serial port.

Request/response with a sequence number, a per-attempt timeout and retries (the bridge answers a
retried request without acting twice). Timeouts, error replies and closed ports raise
`agent.errors.BoardLinkError`. The wire format is firmware_bridge/PROTOCOL.md. The control loop
reads its samples with `probe_sample` (one attempt: a board that does not answer costs one
time-out per tick); retries are for where waiting is fine (start-up, tools) and for writes.

A port that fails (a USB adapter unplugged, the emulator killed) is closed and, when the client
knows how to open it again (`reopen`, or a path it opened itself), reopened on a later request
with a back-off (0.5 s doubling to 10 s); meanwhile requests fail at once without touching the
port, and the client logs the loss, the return and at most one line a minute in between. Every
uptime the bridge reports is compared with the last one: an uptime that went backwards is a bridge
that restarted (`take_reboot`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent.chain.port import SerialPort, open_port
from agent.clock import Clock, SystemClock
from agent.errors import BoardLinkError, ConfigError
from firmware_bridge import link

log = logging.getLogger("gridminer.board")

DEFAULT_BAUD = 115200
REOPEN_MIN_S = 0.5  # first wait before a failed port is opened again; doubles up to the max
REOPEN_MAX_S = 10.0
DOWN_LOG_PERIOD_S = 60.0  # while the port stays down: at most one line this often
UPTIME_WRAP_MS = 1 << 32  # the bridge's uptime is a u32 of ms (49.7 days)


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
    at the wall when a `psu_efficiency` below 1 is given (config [board]). With `reopen` (a
    callable returning a freshly opened port; implied for a path) a failed port is closed and
    reopened with a back-off, and the client owns the port (`close` closes it)."""

    def __init__(
        self,
        serial_port: SerialPort | str,
        timeout_s: float = 0.25,
        retries: int = 2,
        clock: Clock | None = None,
        baudrate: int = DEFAULT_BAUD,
        psu_efficiency: float = 1.0,
        reopen: Callable[[], SerialPort] | None = None,
        reopen_min_s: float = REOPEN_MIN_S,
        reopen_max_s: float = REOPEN_MAX_S,
    ) -> None:
        if isinstance(serial_port, str):
            url = serial_port

            def open_url() -> SerialPort:
                try:
                    port: SerialPort = open_port(url, "board", baudrate, 0.02)
                except ConfigError as exc:
                    raise BoardLinkError(str(exc)) from exc
                return port

            reopen = reopen or open_url
            serial_port = open_url()
        self.port: SerialPort | None = serial_port
        self._owns_port = reopen is not None
        self._reopen = reopen
        self.timeout_s = float(timeout_s)
        self.retries = int(retries)
        self.clock = clock or SystemClock()
        self.psu_efficiency = float(psu_efficiency)
        self.reopen_min_s = float(reopen_min_s)
        self.reopen_max_s = float(reopen_max_s)
        self._decoder = link.Decoder()
        self._seq = 0
        self._lock = threading.Lock()
        self.events: list[tuple[float, str, str | None]] = []
        self.timeouts = 0
        self.error_replies = 0
        self.port_failures = 0  # the port raised (and was closed when it can be reopened)
        self.reopens = 0  # ... and was opened again
        self.reboots = 0  # the bridge's uptime went backwards
        self.last_reply_s: float | None = None  # clock.monotonic() of the last reply of any kind
        self.last_sample_s: float | None = None  # ... of the last good READ_SENSORS reply
        self.down_since_s: float | None = None  # the port failed then and is not back yet
        self._down_reason = ""
        self._reopen_at_s = 0.0
        self._reopen_wait_s = self.reopen_min_s
        self._reopen_failures = 0
        self._down_logged_s = 0.0
        self._uptime_ms: int | None = None
        self._reboot: str | None = None

    def close(self) -> None:
        port, self.port = self.port, None
        if self._owns_port and port is not None:
            port.close()

    def __enter__(self) -> BoardClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def rx_crc_errors(self) -> int:
        return self._decoder.crc_errors

    @property
    def link_down(self) -> bool:
        """The port failed and has not been opened again yet."""
        return self.down_since_s is not None

    def take_reboot(self) -> str | None:
        """Why the bridge is known to have restarted since the last call (its uptime went
        backwards), once; None otherwise. The bridge then forgot the fan, core voltage and chain
        power it was told and the chips may have lost their state: re-initialise both."""
        why, self._reboot = self._reboot, None
        return why

    # ---- requests ----------------------------------------------------------------------------

    def request(self, typ: int, payload: bytes = b"", attempts: int | None = None,
                timeout_s: float | None = None) -> link.Message:
        """Send one request and return its reply; BoardLinkError on timeout or an error reply.
        `attempts` (default: 1 + `retries`) bounds the tries, each waiting up to `timeout_s`
        (default and at most the client's)."""
        name = link.REQUEST_NAMES.get(typ, f"type 0x{typ:02X}")
        tries = self.retries + 1 if attempts is None else max(1, int(attempts))
        wait_s = self.timeout_s if timeout_s is None else min(float(timeout_s), self.timeout_s)
        with self._lock:
            port = self._usable_port(name)
            self._seq = (self._seq % 255) + 1  # 1..255; seq 0 is for unsolicited events
            seq = self._seq
            frame = link.encode(seq, typ, payload)
            for _attempt in range(tries):
                try:
                    port.write(frame)
                    reply = self._wait(port, seq, typ, wait_s)
                except (OSError, ValueError) as exc:  # pyserial raises SerialException(OSError)
                    self._port_failed(port, exc)
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
                f"board link {name}: no reply in {tries} x {wait_s:.2f} s")

    def _usable_port(self, name: str) -> SerialPort:
        """The open port, reopened when a failed one is due to be tried again; BoardLinkError
        at once while it is down."""
        if self.port is not None:
            return self.port
        if self._reopen is None:
            raise BoardLinkError(f"board link {name}: port closed")
        now = self.clock.monotonic()
        if now < self._reopen_at_s:
            raise BoardLinkError(f"board link {name}: port down ({self._down_reason}); "
                                 f"reopening in {self._reopen_at_s - now:.1f} s")
        try:
            port = self._reopen()
        except (BoardLinkError, ConfigError, OSError, ValueError) as exc:
            self._reopen_failures += 1
            self._down_reason = str(exc)
            self._reopen_at_s = now + self._reopen_wait_s
            self._reopen_wait_s = min(self._reopen_wait_s * 2, self.reopen_max_s)
            if now - self._down_logged_s >= DOWN_LOG_PERIOD_S:
                self._down_logged_s = now
                log.warning("board link still down after %.0f s (%d reopen attempts): %s",
                            now - (self.down_since_s or now), self._reopen_failures, exc)
            raise BoardLinkError(f"board link {name}: port down ({exc})") from exc
        log.info("board link: port reopened after %.1f s (%d attempts failed)",
                 now - (self.down_since_s or now), self._reopen_failures)
        self.port = port
        self.reopens += 1
        self._decoder = link.Decoder()
        self.down_since_s = None
        self._reopen_wait_s = self.reopen_min_s
        self._reopen_failures = 0
        return port

    def _port_failed(self, port: SerialPort, exc: BaseException) -> None:
        """The port raised: with a way to reopen it, close it and try again after a back-off."""
        self.port_failures += 1
        if self._reopen is None:
            return  # the caller's port: every request tries it again
        now = self.clock.monotonic()
        self.port = None
        self.down_since_s = now
        self._down_reason = str(exc)
        self._down_logged_s = now
        self._reopen_at_s = now + self._reopen_wait_s
        self._reopen_wait_s = min(self._reopen_wait_s * 2, self.reopen_max_s)
        log.warning("board link: port failed (%s); closing it, reopening in %.1f s", exc,
                    self._reopen_at_s - now)
        try:
            port.close()
        except Exception as close_exc:  # a vanished device may not even close cleanly
            log.debug("board link: closing the failed port: %s", close_exc)

    def _wait(self, port: SerialPort, seq: int, typ: int,
              timeout_s: float) -> link.Message | None:
        deadline = self.clock.monotonic() + timeout_s
        while True:
            data = port.read(max(1, getattr(port, "in_waiting", 0) or 0))
            if data:
                for msg in self._decoder.feed(data):
                    if msg.typ == link.T_EVENT:
                        self._event(msg)
                    elif msg.seq == seq and msg.typ in (typ | link.REPLY, link.T_ERROR):
                        self.last_reply_s = self.clock.monotonic()
                        return msg
            elif self.clock.monotonic() >= deadline:
                return None
            if self.clock.monotonic() >= deadline + timeout_s:  # a chatty line
                return None

    def _event(self, msg: link.Message) -> None:
        if len(msg.payload) == 2:
            state, reason = msg.payload[0], msg.payload[1]
            self.events.append((self.clock.monotonic(), link.STATE_NAMES.get(state, str(state)),
                                link.TRIP_NAMES.get(reason)))
            del self.events[:-32]

    def _uptime(self, uptime_ms: int) -> None:
        """Compare a reported uptime with the last one: backwards is a restarted bridge (a wrap
        of the u32 after 49.7 days is not)."""
        prev, self._uptime_ms = self._uptime_ms, uptime_ms
        if prev is None or uptime_ms >= prev:
            return
        if prev > UPTIME_WRAP_MS * 3 // 4 and uptime_ms < UPTIME_WRAP_MS // 4:
            return  # wrapped
        self.reboots += 1
        self._reboot = (f"the bridge restarted (its uptime went from {prev / 1000:.1f} s back to "
                        f"{uptime_ms / 1000:.1f} s)")
        log.warning("board link: %s", self._reboot)

    def _status(self, reply: link.Message, name: str) -> BridgeStatus:
        try:
            st = link.unpack_status(reply.payload)
        except ValueError as exc:
            raise BoardLinkError(f"board link {name}: bad reply: {exc}") from exc
        self._uptime(st["uptime_ms"])
        reason = st["trip_reason"]
        return BridgeStatus(link.STATE_NAMES.get(st["state"], str(st["state"])),
                            None if reason == link.R_NONE else link.TRIP_NAMES.get(reason),
                            st["uptime_ms"])

    # ---- the API the agent uses --------------------------------------------------------------

    def read_sample(self) -> BoardSample:
        """The sensors, retried as every request is (where waiting is fine: start-up, tools)."""
        return self._sample(self.request(link.T_READ_SENSORS))

    def probe_sample(self, timeout_s: float | None = None) -> BoardSample:
        """The sensors in one attempt, no retry, waiting up to `timeout_s` (at most the client's
        own): the control loop's read, which a board that does not answer must hold up for
        one short time-out only (the next tick reads again)."""
        return self._sample(self.request(link.T_READ_SENSORS, attempts=1, timeout_s=timeout_s))

    def _sample(self, reply: link.Message) -> BoardSample:
        now = self.clock.monotonic()
        try:
            sample = sample_from_payload(reply.payload, now, self.psu_efficiency)
        except ValueError as exc:
            raise BoardLinkError(f"board link read_sensors: bad reply: {exc}") from exc
        self._uptime(sample.uptime_ms)
        self.last_sample_s = now
        return sample

    def heartbeat(self) -> BridgeStatus:
        return self._status(self.request(link.T_HEARTBEAT), "heartbeat")

    def clear_trip(self, reason: str | int) -> BridgeStatus:
        """Acknowledge the bridge's latched trip `reason` (a name of link.TRIP_NAMES or its code)
        without powering the chain; BoardLinkError ("tripped") while its cause remains, and
        ("unknown_type") from a bridge older than the request."""
        code = reason if isinstance(reason, int) else next(
            (c for c, n in link.TRIP_NAMES.items() if n == reason), None)
        if code is None or code == link.R_NONE:
            raise BoardLinkError(f"board link clear_trip: no trip reason {reason!r}")
        return self._status(self.request(link.T_CLEAR_TRIP, link.pack_u8(code)), "clear_trip")

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
