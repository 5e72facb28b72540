"""The emulated board as the bridge firmware sees it: `EmulatedBoardHal` answers the firmware's
HAL calls (sensors, fan, core-voltage regulator, chain power and reset) from the plant, and
`BoardUart` is the firmware's UART on the emulator's board-link port."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from hil.pty import PtyPort, SocketPort

if TYPE_CHECKING:
    from hil.hashboard import HashBoardEmulator


class BoardUart:
    """machine.UART-like view of the board port for the bridge firmware (read/write/any)."""

    def __init__(self, port: PtyPort | SocketPort,
                 damage: Callable[[list[bytes], str], bytes] | None = None) -> None:
        self.port = port
        self._damage = damage
        self._rx = bytearray()

    def pull(self) -> int:
        data = self.port.read()
        self._rx += data
        return len(data)

    def any(self) -> int:
        return len(self._rx)

    def read(self, n: int | None = None) -> bytes | None:
        if not self._rx:
            return None
        n = len(self._rx) if n is None else n
        out = bytes(self._rx[:n])
        del self._rx[:n]
        return out

    def write(self, data: bytes) -> int:
        frame = bytes(data)
        self.port.write(self._damage([frame], "board") if self._damage else frame)
        return len(data)


class EmulatedBoardHal:
    """The BoardHal of firmware_bridge over the plant: what the bridge firmware sees and drives.

    Readings are the plant's sampled sensors (noise, quantisation, sample period); faults make a
    reading stick (`sensor_stuck`) or fail with OSError like an I2C error (`sensor_invalid`)."""

    def __init__(self, emu: HashBoardEmulator) -> None:
        self._emu = emu
        self._frozen: dict[tuple[str, int], Any] = {}
        self.calls: dict[str, int] = {}

    def _read(self, sensor: str, live: Any, channel: int = -1) -> Any:
        emu = self._emu
        now = emu.time_s
        for f in emu.faults.active("sensor_invalid", now):
            if f.params["sensor"] == sensor and f.params.get("channel", channel) == channel:
                f.effects += 1
                if f.params.get("mode", "error") == "out_of_range":
                    return -2732 if sensor.endswith("temp") else -1
                raise OSError(5, f"emulated {sensor} sensor failure")
        key = (sensor, channel)
        for f in emu.faults.active("sensor_stuck", now):
            if f.params["sensor"] == sensor and f.params.get("channel", channel) == channel:
                f.effects += 1
                return self._frozen.setdefault(key, live)
        self._frozen.pop(key, None)
        return live

    def chip_temps_dc(self) -> list:
        s = self._emu.plant.sensors
        return [self._read("chip_temp", t, ch) for ch, t in enumerate(s.chip_temps_dc)]

    def board_temp_dc(self) -> int:
        return self._read("board_temp", self._emu.plant.sensors.board_temp_dc)

    def vr_temp_dc(self) -> int:
        return self._read("vr_temp", self._emu.plant.sensors.vr_temp_dc)

    def vin_mv(self) -> int:
        return self._read("vin", self._emu.plant.sensors.vin_mv)

    def iin_ma(self) -> int:
        return self._read("iin", self._emu.plant.sensors.iin_ma)

    def power_mw(self) -> int:
        return self._read("power", self._emu.plant.sensors.power_mw)

    def fan_rpm(self) -> int:
        return self._read("fan_rpm", self._emu.plant.sensors.fan_rpm)

    def vcore_mv(self) -> int:
        return self._read("vcore", self._emu.plant.sensors.vcore_mv)

    def set_fan_pct(self, pct: int) -> None:
        self._emu.plant.fan_pct = min(max(int(pct), 0), 100)

    def set_vcore_mv(self, mv: int) -> None:
        self._emu.plant.vcore_set_mv = max(0, int(mv))

    def set_chain_power(self, on: bool) -> None:
        self._emu.plant.chain_powered = bool(on)
        self._emu.sync_chain_power()

    def reset_chain(self) -> None:
        self._emu.reset_chain()

    def chain_write(self, data: bytes) -> None:
        self._emu.chain.feed(bytes(data), self._emu.time_s)
