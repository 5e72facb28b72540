"""Board HALs for the bridge: the interface, a simulated board, an in-memory UART, and the
unix-port UART over a tty path.

The HAL interface (what `Bridge` calls; the emulator implements the same):
    chip_temps_dc() -> list   board_temp_dc() -> int   vr_temp_dc() -> int   vin_mv() -> int
    iin_ma() -> int   power_mw() -> int   fan_rpm() -> int   vcore_mv() -> int
    set_fan_pct(pct)   set_vcore_mv(mv)   set_chain_power(on)   reset_chain()   chain_write(data)
Readers raise OSError on a bus failure. Runs unchanged on CPython and MicroPython.
"""
# MicroPython-first: %-formatting (f-string support varies by port) and no `raise ... from`
# (MicroPython warns on exception chaining).
# ruff: noqa: UP031



class SimHal:
    """A simulated board with settable readings: the unix-port device and the tests use it.

    `fail` holds names of readers that raise OSError ("chip_temps_dc", "vr_temp_dc", ...);
    `written` collects chain_write data; `calls` lists setter calls in order."""

    def __init__(self, channels=1):
        self.chip_temps = [450] * channels
        self.board_temp = 400
        self.vr_temp = 500
        self.vin = 5000
        self.iin = 3000
        self.power = 15000
        self.rpm = 3000
        self.vcore = 1150
        self.fan_pct = 0
        self.vcore_set = 0
        self.chain_on = False
        self.resets = 0
        self.fail = []
        self.written = []
        self.calls = []

    def _get(self, name, value):
        if name in self.fail:
            raise OSError(5, "simulated %s failure" % name)
        return value

    def chip_temps_dc(self):
        return self._get("chip_temps_dc", list(self.chip_temps))

    def board_temp_dc(self):
        return self._get("board_temp_dc", self.board_temp)

    def vr_temp_dc(self):
        return self._get("vr_temp_dc", self.vr_temp)

    def vin_mv(self):
        return self._get("vin_mv", self.vin)

    def iin_ma(self):
        return self._get("iin_ma", self.iin)

    def power_mw(self):
        return self._get("power_mw", self.power if self.chain_on else 500)

    def fan_rpm(self):
        return self._get("fan_rpm", self.rpm)

    def vcore_mv(self):
        return self._get("vcore_mv", self.vcore if self.chain_on else 0)

    def set_fan_pct(self, pct):
        self.calls.append(("set_fan_pct", pct))
        self.fan_pct = pct
        self.rpm = 60 * pct

    def set_vcore_mv(self, mv):
        self.calls.append(("set_vcore_mv", mv))
        self.vcore_set = mv
        self.vcore = mv

    def set_chain_power(self, on):
        self.calls.append(("set_chain_power", on))
        self.chain_on = bool(on)

    def reset_chain(self):
        self.calls.append(("reset_chain", None))
        self.resets += 1

    def chain_write(self, data):
        self.calls.append(("chain_write", bytes(data)))
        self.written.append(bytes(data))


class MemoryUart:
    """machine.UART-like in-memory port: the peer appends to `rx` (what the device reads) and
    takes `tx` (what the device wrote)."""

    def __init__(self):
        self.rx = b""
        self.tx = b""

    def any(self):
        return len(self.rx)

    def read(self, n=-1):
        if not self.rx:
            return None
        if n is None or n < 0:
            n = len(self.rx)
        out = self.rx[:n]
        self.rx = self.rx[n:]
        return out

    def write(self, data):
        self.tx += bytes(data)
        return len(data)

    def take(self):
        out = self.tx
        self.tx = b""
        return out


class PathUart:
    """machine.UART-like port over a tty or fifo path, for the unix port (the link UART of a
    board emulated on a pty). Non-blocking reads through select.poll."""

    def __init__(self, path):
        import select

        self._f = open(path, "r+b")  # noqa: SIM115 (kept open: it is the port)
        self._poll = select.poll()
        self._poll.register(self._f, select.POLLIN)

    def any(self):
        return 1 if self._poll.poll(0) else 0

    def read(self, n=-1):
        # MicroPython's read(n) blocks until n bytes: take single bytes while the tty has data
        limit = n if n and n > 0 else 256
        out = b""
        while len(out) < limit and self._poll.poll(0):
            b = self._f.read(1)
            if not b:
                break
            out += b
        return out or None

    def write(self, data):
        n = self._f.write(data)
        try:
            self._f.flush()  # CPython buffers; MicroPython's tty flush is EINVAL (unbuffered)
        except OSError:
            pass
        return n


# ---- real boards: machine.I2C / PWM / Pin / UART ---------------------------------------------


def _i16(v):
    return v - 0x10000 if v & 0x8000 else v


def _linear11(v):
    # PMBus LINEAR11: 5-bit signed exponent, 11-bit signed mantissa
    exp = (v >> 11) & 0x1F
    mant = v & 0x7FF
    if exp & 0x10:
        exp -= 0x20
    if mant & 0x400:
        mant -= 0x800
    return mant * (2.0**exp)


class MachineHal:
    """HAL of a Bitaxe-style board from machine objects: EMC2101 (chip diode, board temperature,
    fan), INA260 (input V/I/P), TPS546 (core voltage, regulator temperature), GPIO power enable
    and reset, and a UART tap into the chain's command input. `i2c` is a machine.I2C-like object
    (readfrom_mem/writeto_mem); pins are machine.Pin-like (value); `chain_uart` has write."""

    def __init__(self, i2c, power_pin=None, reset_pin=None, chain_uart=None, fan_pwm=None,
                 emc2101=0x4C, ina260=0x40, tps546=0x24, domains=1, sleep_ms=None):
        self.i2c = i2c
        self.power_pin = power_pin
        self.reset_pin = reset_pin
        self.chain_uart = chain_uart
        self.fan_pwm = fan_pwm  # machine.PWM-like (duty_u16); else the EMC2101 drives the fan
        self.emc = emc2101
        self.ina = ina260
        self.tps = tps546
        self.domains = domains  # TPS546 Vout = vcore * domains
        self._sleep_ms = sleep_ms
        self._vout_exp = None

    def _r8(self, addr, reg):
        return self.i2c.readfrom_mem(addr, reg, 1)[0]

    def _r16be(self, addr, reg):
        b = self.i2c.readfrom_mem(addr, reg, 2)
        return (b[0] << 8) | b[1]

    def _r16le(self, addr, reg):
        b = self.i2c.readfrom_mem(addr, reg, 2)
        return b[0] | (b[1] << 8)

    def chip_temps_dc(self):
        msb = self._r8(self.emc, 0x01)
        lsb = self._r8(self.emc, 0x10)
        eighths = ((msb - 256 if msb & 0x80 else msb) << 3) | (lsb >> 5)
        return [(eighths * 10) // 8]

    def board_temp_dc(self):
        t = self._r8(self.emc, 0x00)
        return (t - 256 if t & 0x80 else t) * 10

    def fan_rpm(self):
        tach = self._r8(self.emc, 0x46) | (self._r8(self.emc, 0x47) << 8)
        return 0 if tach in (0, 0xFFFF) else 5400000 // tach

    def set_fan_pct(self, pct):
        if self.fan_pwm is not None:
            self.fan_pwm.duty_u16((pct * 65535) // 100)
        else:
            self.i2c.writeto_mem(self.emc, 0x4C, bytes(((pct * 63) // 100,)))

    def vin_mv(self):
        return (self._r16be(self.ina, 0x02) * 125) // 100  # 1.25 mV/LSB

    def iin_ma(self):
        return (_i16(self._r16be(self.ina, 0x01)) * 125) // 100  # 1.25 mA/LSB

    def power_mw(self):
        return self._r16be(self.ina, 0x03) * 10  # 10 mW/LSB

    def _exp(self):
        if self._vout_exp is None:
            e = self._r8(self.tps, 0x20) & 0x1F  # VOUT_MODE
            self._vout_exp = e - 32 if e & 0x10 else e
        return self._vout_exp

    def vcore_mv(self):
        v = self._r16le(self.tps, 0x8B) * (2.0 ** self._exp())  # READ_VOUT, ULINEAR16
        return int(v * 1000 / self.domains + 0.5)

    def vr_temp_dc(self):
        return int(_linear11(self._r16le(self.tps, 0x8D)) * 10)  # READ_TEMPERATURE_1

    def set_vcore_mv(self, mv):
        if mv == 0:
            self.i2c.writeto_mem(self.tps, 0x01, b"\x00")  # OPERATION off
            return
        raw = int(mv * self.domains / 1000.0 / (2.0 ** self._exp()) + 0.5)
        self.i2c.writeto_mem(self.tps, 0x21, bytes((raw & 0xFF, (raw >> 8) & 0xFF)))
        self.i2c.writeto_mem(self.tps, 0x01, b"\x80")  # OPERATION on

    def set_chain_power(self, on):
        if self.power_pin is not None:
            self.power_pin.value(1 if on else 0)

    def reset_chain(self):
        if self.reset_pin is None:
            return
        self.reset_pin.value(0)
        if self._sleep_ms is not None:
            self._sleep_ms(100)
        self.reset_pin.value(1)

    def chain_write(self, data):
        if self.chain_uart is not None:
            self.chain_uart.write(data)
