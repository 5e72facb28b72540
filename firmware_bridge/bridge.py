"""Bridge firmware main loop: serves the board link and is the last line of defence.

`Bridge(link_uart, hal, config, ticks_ms)` runs over duck-typed objects (machine.UART/I2C/PWM/Pin
through a HAL on the MCU; fakes or the emulator's plant on CPython). On its own it idles the chain
(PLL0 to 50 MHz through `hal.chain_write`, then chain power off) and reports why, when:
* the agent sent no request for `heartbeat_timeout_ms` (armed by the agent's first request),
* a chip, regulator or board temperature is above its trip limit (the fan also goes to 100 %),
* a sensor fails (OSError) or reads out of range while the chain is powered.
The trip latches (state "tripped", trip_reason); a CHAIN_POWER on request clears it only when the
cause is gone (temperatures below the resume limits, every sensor valid), and so does CLEAR_TRIP
naming the latched reason, without powering the chain (a restarted agent acknowledging a trip
from before its start).
Runs unchanged on CPython and MicroPython.
"""
# MicroPython-first: %-formatting (f-string support varies by port) and no `raise ... from`
# (MicroPython warns on exception chaining).
# ruff: noqa: UP031


import time

from firmware_bridge import link
from firmware_bridge.asic import pll_frame
from firmware_bridge.chips import profile


def _plain_diff(a, b):
    return a - b


# MicroPython's ticks_diff is wrap-safe; CPython ticks (tests, emulator) are plain integers
_ticks_diff = getattr(time, "ticks_diff", None) or _plain_diff


DEFAULTS: dict = {
    "family": "BM1370",
    "heartbeat_timeout_ms": 5000,
    "trip_temp_dc": 900,  # chip
    "resume_temp_dc": 800,
    "vr_trip_temp_dc": 1200,
    "vr_resume_temp_dc": 1000,
    "board_trip_temp_dc": 1000,
    "board_resume_temp_dc": 850,
    "temp_min_dc": -400,  # readings outside [min, max] are invalid
    "temp_max_dc": 1500,
    "vin_max_mv": 30000,
    "iin_max_ma": 40000,
    "power_max_mw": 500000,
    "fan_rpm_max": 30000,
    "vcore_min_mv": 1000,  # SET_VCORE range (0 = off is always allowed)
    "vcore_max_mv": 1500,
    "sensor_period_ms": 250,
    "sensor_fail_limit": 1,  # consecutive failed scans before a sensor trip
    "idle_freq_mhz": 50,
    "poll_ms": 5,
    "chain_powered_at_boot": False,  # the board powers the chain at boot: protect it at once
}

_THERMAL = (link.R_CHIP_TEMP, link.R_VR_TEMP, link.R_BOARD_TEMP)
_MUTATING = (link.T_SET_FAN, link.T_SET_VCORE, link.T_CHAIN_POWER, link.T_CHAIN_RESET,
             link.T_CLEAR_TRIP)


def make_config(config=None):
    """DEFAULTS updated with `config` (a dict or None); ValueError on unknown keys or bad values.
    The device config file's "link" and "hal" sections are allowed and ignored here."""
    cfg = dict(DEFAULTS)
    if config is None:
        return cfg
    if not isinstance(config, dict):
        raise ValueError("bridge config must be a dict, got %r" % (type(config),))
    for key in config:
        if key in ("link", "hal"):
            continue
        if key not in DEFAULTS:
            raise ValueError("unknown bridge config key %r" % (key,))
        value = config[key]
        if key == "family":
            profile(value)
        elif isinstance(DEFAULTS[key], bool):
            if not isinstance(value, bool):
                raise ValueError("bridge config %s must be true or false, got %r" % (key, value))
        elif not isinstance(value, int) or isinstance(value, bool):
            raise ValueError("bridge config %s must be an int, got %r" % (key, value))
        cfg[key] = value
    if cfg["heartbeat_timeout_ms"] <= 0 or cfg["sensor_period_ms"] <= 0:
        raise ValueError("heartbeat_timeout_ms and sensor_period_ms must be > 0")
    return cfg


class Reading:
    """One sensor scan: values (None when invalid) and whether any sensor failed."""

    def __init__(self):
        self.chip_temps_dc = []
        self.board_temp_dc = None
        self.vr_temp_dc = None
        self.vin_mv = None
        self.iin_ma = None
        self.power_mw = None
        self.fan_rpm = None
        self.vcore_mv = None
        self.failed = []  # names of sensors that raised or read out of range


class Bridge:
    """The bridge firmware. `poll()` does one non-blocking pass; `run()` loops forever."""

    def __init__(self, link_uart, hal, config, ticks_ms):
        self.uart = link_uart
        self.hal = hal
        self.cfg = make_config(config)
        self.family = profile(self.cfg["family"]).family
        self.ticks_ms = ticks_ms
        self.decoder = link.Decoder()
        self.state = link.S_IDLE
        self.trip_reason = link.R_NONE
        self.chain_powered = self.cfg["chain_powered_at_boot"]  # as last commanded
        self.fan_pct = None
        self.vcore_set_mv = None
        now = ticks_ms()
        self.uptime_ms = 0  # accumulated, so it survives ticks wrap-around
        self._last_poll_ms = now
        self.last_request_ms = now
        self.last_scan_ms = now - self.cfg["sensor_period_ms"]
        self.sensor_failures = 0
        self.reading = None
        self.trips = 0
        self.requests = 0
        self.errors = 0
        self.hal_errors = 0
        self._last_key = None
        self._last_reply = b""

    # ---- loop -----------------------------------------------------------------------------

    def poll(self):
        """Serve pending requests, scan sensors when due, run the watchdog."""
        now = self.ticks_ms()
        d = _ticks_diff(now, self._last_poll_ms)
        if d > 0:
            self.uptime_ms += d
        self._last_poll_ms = now
        n = self.uart.any()
        if n:
            data = self.uart.read(n)
            if data:
                for msg in self.decoder.feed(data):
                    self._handle(msg, self.ticks_ms())
        now = self.ticks_ms()
        if _ticks_diff(now, self.last_scan_ms) >= self.cfg["sensor_period_ms"]:
            self.last_scan_ms = now
            self.check(self.scan())
        if self.state == link.S_ACTIVE and _ticks_diff(now, self.last_request_ms) > self.cfg[
            "heartbeat_timeout_ms"
        ]:
            self.trip(link.R_HEARTBEAT)

    def run(self):
        """Poll forever (the device entry point)."""
        sleep_ms = getattr(time, "sleep_ms", None) or (lambda ms: time.sleep(ms / 1000.0))
        period = self.cfg["poll_ms"]
        while True:
            self.poll()
            sleep_ms(period)

    # ---- protection -----------------------------------------------------------------------

    def _read(self, r, name, fn, lo, hi):
        try:
            v = fn()
        except OSError:
            self.hal_errors += 1
            r.failed.append(name)
            return None
        return self._valid(r, name, v, lo, hi)

    def _valid(self, r, name, v, lo, hi):
        if isinstance(v, float) and v == v:
            v = int(v + 0.5) if v >= 0 else -int(-v + 0.5)
        if not isinstance(v, int) or isinstance(v, bool) or v < lo or v > hi:
            r.failed.append(name)
            return None
        return v

    def scan(self):
        """Read every sensor through the HAL; never raises."""
        c = self.cfg
        r = Reading()
        tmin = c["temp_min_dc"]
        tmax = c["temp_max_dc"]
        try:
            temps = self.hal.chip_temps_dc()
            if not isinstance(temps, (list, tuple)):
                raise OSError("chip_temps_dc returned %r" % (temps,))
            for ch in range(len(temps)):
                r.chip_temps_dc.append(self._valid(r, "chip_temp%d" % ch, temps[ch], tmin, tmax))
        except OSError:
            self.hal_errors += 1
            r.failed.append("chip_temp")
        r.board_temp_dc = self._read(r, "board_temp", self.hal.board_temp_dc, tmin, tmax)
        r.vr_temp_dc = self._read(r, "vr_temp", self.hal.vr_temp_dc, tmin, tmax)
        r.vin_mv = self._read(r, "vin", self.hal.vin_mv, 0, c["vin_max_mv"])
        r.iin_ma = self._read(r, "iin", self.hal.iin_ma, 0, c["iin_max_ma"])
        r.power_mw = self._read(r, "power", self.hal.power_mw, 0, c["power_max_mw"])
        r.fan_rpm = self._read(r, "fan_rpm", self.hal.fan_rpm, 0, c["fan_rpm_max"])
        r.vcore_mv = self._read(r, "vcore", self.hal.vcore_mv, 0, 5000)
        self.reading = r
        return r

    def _over(self, r):
        # the first thermal trip reason of a reading, or R_NONE
        c = self.cfg
        for t in r.chip_temps_dc:
            if t is not None and t > c["trip_temp_dc"]:
                return link.R_CHIP_TEMP
        if r.vr_temp_dc is not None and r.vr_temp_dc > c["vr_trip_temp_dc"]:
            return link.R_VR_TEMP
        if r.board_temp_dc is not None and r.board_temp_dc > c["board_trip_temp_dc"]:
            return link.R_BOARD_TEMP
        return link.R_NONE

    def check(self, r):
        """Trip on over-temperature, or on failed sensors while the chain is powered."""
        reason = self._over(r)
        if reason:
            self.trip(reason)
            return
        if r.failed and self.chain_powered:
            self.sensor_failures += 1
            if self.sensor_failures >= self.cfg["sensor_fail_limit"]:
                self.trip(link.R_SENSOR)
        else:
            self.sensor_failures = 0

    def _cause_gone(self, r):
        c = self.cfg
        if r.failed:
            return False
        for t in r.chip_temps_dc:
            if t is not None and t > c["resume_temp_dc"]:
                return False
        if r.vr_temp_dc is not None and r.vr_temp_dc > c["vr_resume_temp_dc"]:
            return False
        return not (r.board_temp_dc is not None and r.board_temp_dc > c["board_resume_temp_dc"])

    def _clear_latch(self, now):
        """Before the chain may be powered: a fresh scan; a latched trip clears if its cause is
        gone. False while a temperature is over its trip limit or a latched cause remains."""
        r = self.scan()
        self.last_scan_ms = now
        if self._over(r):
            self.check(r)
            return False
        if self.state == link.S_TRIPPED:
            if not self._cause_gone(r):
                return False
            self.state = link.S_ACTIVE
            self.trip_reason = link.R_NONE
            self.sensor_failures = 0
        return True

    def trip(self, reason):
        """Idle the chain (PLL0 to the idle frequency, then power off), latch the reason, tell the
        agent (EVENT frame). A thermal trip also sets the fan to 100 %."""
        if reason in _THERMAL:
            self._hal("set_fan_pct", 100)
            self.fan_pct = 100
        if self.state == link.S_TRIPPED:
            return
        self._hal("chain_write", pll_frame(self.family, self.cfg["idle_freq_mhz"]))
        self._hal("set_chain_power", False)
        self.chain_powered = False
        self.state = link.S_TRIPPED
        self.trip_reason = reason
        self.trips += 1
        self._send(0, link.T_EVENT, link.pack_event(self.state, reason))

    def _hal(self, name, arg):
        try:
            getattr(self.hal, name)(arg)
            return True
        except OSError:
            self.hal_errors += 1
            return False

    # ---- requests -------------------------------------------------------------------------

    def _send(self, seq, typ, payload=b""):
        frame = link.encode(seq, typ, payload)
        try:
            self.uart.write(frame)
        except OSError:
            self.hal_errors += 1
        return frame

    def _error(self, msg, code):
        self.errors += 1
        return self._send(msg.seq, link.T_ERROR, link.pack_error(msg.typ, code))

    def _handle(self, msg, now):
        self.requests += 1
        self.last_request_ms = now
        if self.state == link.S_IDLE:
            self.state = link.S_ACTIVE
        key = (msg.seq, msg.typ, msg.payload)
        if msg.typ in _MUTATING and key == self._last_key:
            try:  # a retry of the request just served: same reply, no second action
                self.uart.write(self._last_reply)
            except OSError:
                self.hal_errors += 1
            return
        reply = self._dispatch(msg, now)
        self._last_key = key
        self._last_reply = reply

    def _dispatch(self, msg, now):
        t = msg.typ
        p = msg.payload
        ok = t | link.REPLY
        if t == link.T_HEARTBEAT:
            if p:
                return self._error(msg, link.E_BAD_LENGTH)
            return self._send(
                msg.seq, ok, link.pack_status(self.state, self.trip_reason, self.uptime_ms))
        if t == link.T_READ_SENSORS:
            if p:
                return self._error(msg, link.E_BAD_LENGTH)
            r = self.scan()
            self.last_scan_ms = now
            self.check(r)
            return self._send(msg.seq, ok, link.pack_sensors(self.sensors_dict(r, now)))
        if t == link.T_SET_FAN:
            if len(p) != 1:
                return self._error(msg, link.E_BAD_LENGTH)
            pct = p[0]
            if pct > 100:
                return self._error(msg, link.E_RANGE)
            if self.state == link.S_TRIPPED and self.trip_reason in _THERMAL:
                pct = 100  # keep cooling while thermally tripped
            if not self._hal("set_fan_pct", pct):
                return self._error(msg, link.E_HARDWARE)
            self.fan_pct = pct
            return self._send(msg.seq, ok, link.pack_u8(pct))
        if t == link.T_SET_VCORE:
            if len(p) != 2:
                return self._error(msg, link.E_BAD_LENGTH)
            mv = link.unpack_u16(p)
            if mv != 0 and not self.cfg["vcore_min_mv"] <= mv <= self.cfg["vcore_max_mv"]:
                return self._error(msg, link.E_RANGE)
            if not self._hal("set_vcore_mv", mv):
                return self._error(msg, link.E_HARDWARE)
            self.vcore_set_mv = mv
            return self._send(msg.seq, ok, link.pack_u16(mv))
        if t == link.T_CHAIN_POWER:
            if len(p) != 1:
                return self._error(msg, link.E_BAD_LENGTH)
            if p[0] > 1:
                return self._error(msg, link.E_RANGE)
            on = p[0] == 1
            if on and not self._clear_latch(now):
                return self._error(msg, link.E_TRIPPED)
            if not self._hal("set_chain_power", on):
                return self._error(msg, link.E_HARDWARE)
            self.chain_powered = on
            return self._send(msg.seq, ok, link.pack_u8(1 if on else 0))
        if t == link.T_CHAIN_RESET:
            if p:
                return self._error(msg, link.E_BAD_LENGTH)
            try:
                self.hal.reset_chain()
            except OSError:
                self.hal_errors += 1
                return self._error(msg, link.E_HARDWARE)
            return self._send(msg.seq, ok)
        if t == link.T_CLEAR_TRIP:
            if len(p) != 1:
                return self._error(msg, link.E_BAD_LENGTH)
            if p[0] == link.R_NONE or p[0] not in link.TRIP_NAMES:
                return self._error(msg, link.E_RANGE)
            if self.state == link.S_TRIPPED and (
                    p[0] != self.trip_reason or not self._clear_latch(now)):
                return self._error(msg, link.E_TRIPPED)  # another trip, or the cause is not gone
            return self._send(
                msg.seq, ok, link.pack_status(self.state, self.trip_reason, self.uptime_ms))
        if t == link.T_INFO:
            if p:
                return self._error(msg, link.E_BAD_LENGTH)
            c = self.cfg
            r = self.reading
            info = {
                "family": self.family, "channels": len(r.chip_temps_dc) if r else 0,
                "heartbeat_timeout_ms": c["heartbeat_timeout_ms"],
                "trip_temp_dc": c["trip_temp_dc"],
                "vr_trip_temp_dc": c["vr_trip_temp_dc"],
                "board_trip_temp_dc": c["board_trip_temp_dc"],
                "vcore_min_mv": c["vcore_min_mv"], "vcore_max_mv": c["vcore_max_mv"],
            }
            return self._send(msg.seq, ok, link.pack_info(info))
        return self._error(msg, link.E_UNKNOWN_TYPE)

    def sensors_dict(self, r, now):
        return {
            "state": self.state,
            "trip_reason": self.trip_reason,
            "chain_powered": self.chain_powered,
            "fan_pct": self.fan_pct,
            "board_temp_dc": r.board_temp_dc,
            "vr_temp_dc": r.vr_temp_dc,
            "vin_mv": r.vin_mv,
            "iin_ma": r.iin_ma,
            "power_mw": r.power_mw,
            "fan_rpm": r.fan_rpm,
            "vcore_mv": r.vcore_mv,
            "uptime_ms": self.uptime_ms,
            "chip_temps_dc": r.chip_temps_dc,
        }
