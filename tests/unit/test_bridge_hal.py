"""firmware_bridge.hal.MachineHal register decoding over a fake machine.I2C."""

from firmware_bridge.hal import MachineHal


class FakeI2C:
    def __init__(self, regs):
        self.regs = regs  # (addr, reg) -> bytes
        self.writes = []

    def readfrom_mem(self, addr, reg, n):
        return self.regs[(addr, reg)][:n]

    def writeto_mem(self, addr, reg, data):
        self.writes.append((addr, reg, bytes(data)))


class Pin:
    def __init__(self):
        self.values = []

    def value(self, v):
        self.values.append(v)


def test_sensor_decoding():
    i2c = FakeI2C({
        (0x4C, 0x01): b"\x3a", (0x4C, 0x10): b"\x60",  # 58 + 3/8 C
        (0x4C, 0x00): b"\x29",  # 41 C
        (0x4C, 0x46): b"\x10", (0x4C, 0x47): b"\x27",  # tach 0x2710 = 10000 -> 540 rpm
        (0x40, 0x02): b"\x0f\xa0",  # 4000 * 1.25 mV = 5000 mV
        (0x40, 0x01): b"\x09\xc4",  # 2500 * 1.25 mA = 3125 mA
        (0x40, 0x03): b"\x07\xd0",  # 2000 * 10 mW = 20 W
        (0x24, 0x20): b"\x17",  # VOUT_MODE exponent -9
        (0x24, 0x8B): bytes((0x33, 0x02)),  # 563 / 512 = 1.0996 V
        (0x24, 0x8D): bytes((0x37, 0x00)),  # LINEAR11 exp 0, 55 C
    })
    hal = MachineHal(i2c)
    assert hal.chip_temps_dc() == [583]
    assert hal.board_temp_dc() == 410
    assert hal.fan_rpm() == 540
    assert (hal.vin_mv(), hal.iin_ma(), hal.power_mw()) == (5000, 3125, 20000)
    assert hal.vcore_mv() == 1100
    assert hal.vr_temp_dc() == 550


def test_actuators():
    i2c = FakeI2C({(0x24, 0x20): b"\x17"})
    power, reset, slept = Pin(), Pin(), []
    hal = MachineHal(i2c, power, reset, sleep_ms=slept.append)
    hal.set_fan_pct(100)
    hal.set_vcore_mv(1150)
    hal.set_chain_power(True)
    hal.reset_chain()
    assert (0x4C, 0x4C, bytes((63,))) in i2c.writes
    assert (0x24, 0x21, bytes((0x4D, 0x02))) in i2c.writes  # 1.15 V * 512 = 588.8 -> 589
    assert power.values == [1] and reset.values == [0, 1] and slept == [100]
