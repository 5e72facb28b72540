"""Bridge firmware over a simulated board: link service, watchdog, thermal and sensor trips."""

import pytest

from firmware_bridge import link
from firmware_bridge.asic import pll_frame
from firmware_bridge.bridge import Bridge
from firmware_bridge.hal import MemoryUart, SimHal


class Rig:
    def __init__(self, config=None, channels=2):
        self.now = 0
        self.hal = SimHal(channels)
        self.uart = MemoryUart()
        self.bridge = Bridge(self.uart, self.hal, config, lambda: self.now)
        self.dec = link.Decoder()
        self.seq = 0

    def advance(self, ms, step=50):
        for _ in range(ms // step):
            self.now += step
            self.bridge.poll()

    def request(self, typ, payload=b"", seq=None):
        self.seq = (self.seq + 1) & 0xFF if seq is None else seq
        self.uart.rx += link.encode(self.seq, typ, payload)
        self.bridge.poll()
        msgs = self.dec.feed(self.uart.take())
        replies = [m for m in msgs if m.typ != link.T_EVENT]
        assert len(replies) == 1 and replies[0].seq == self.seq
        return replies[0]

    def sensors(self):
        m = self.request(link.T_READ_SENSORS)
        assert m.typ == link.T_READ_SENSORS | link.REPLY
        return link.unpack_sensors(m.payload)

    def power_on(self):
        return self.request(link.T_CHAIN_POWER, b"\x01")


def idled(hal, family="BM1370"):
    """The chain was parked at 50 MHz, then powered off, in that order."""
    names = [c[0] for c in hal.calls]
    i = names.index("chain_write")
    return (hal.calls[i][1] == pll_frame(family, 50)
            and ("set_chain_power", False) in hal.calls[i + 1 :] and not hal.chain_on)


def test_heartbeat_reports_state_and_uptime():
    rig = Rig()
    rig.advance(1000)
    m = rig.request(link.T_HEARTBEAT)
    st = link.unpack_status(m.payload)
    assert st == {"state": link.S_ACTIVE, "trip_reason": link.R_NONE, "uptime_ms": 1000}


def test_sensors_reply_carries_the_hal_readings():
    rig = Rig()
    rig.hal.chip_temps = [612, 598]
    rig.power_on()
    s = rig.sensors()
    assert s["chip_temps_dc"] == [612, 598] and s["vin_mv"] == 5000 and s["chain_powered"]
    assert s["state"] == link.S_ACTIVE and s["trip_reason"] == link.R_NONE


def test_setters_reach_the_hal_and_reply_the_applied_value():
    rig = Rig()
    assert link.unpack_u8(rig.request(link.T_SET_FAN, b"\x3c").payload) == 60
    assert link.unpack_u16(rig.request(link.T_SET_VCORE, link.pack_u16(1150)).payload) == 1150
    assert rig.request(link.T_CHAIN_RESET).typ == link.T_CHAIN_RESET | link.REPLY
    assert rig.hal.fan_pct == 60 and rig.hal.vcore_set == 1150 and rig.hal.resets == 1


@pytest.mark.parametrize(("typ", "payload", "code"), [
    (link.T_SET_FAN, b"\x65", link.E_RANGE),
    (link.T_SET_VCORE, link.pack_u16(2500), link.E_RANGE),
    (link.T_SET_VCORE, b"\x01", link.E_BAD_LENGTH),
    (link.T_CHAIN_POWER, b"\x02", link.E_RANGE),
    (link.T_HEARTBEAT, b"\x00", link.E_BAD_LENGTH),
    (0x33, b"", link.E_UNKNOWN_TYPE),
])
def test_bad_requests_get_error_replies(typ, payload, code):
    rig = Rig()
    m = rig.request(typ, payload)
    assert m.typ == link.T_ERROR and link.unpack_error(m.payload) == (typ, code)


def test_retry_with_the_same_seq_is_not_executed_twice():
    rig = Rig()
    rig.request(link.T_CHAIN_RESET, seq=7)
    rig.request(link.T_CHAIN_RESET, seq=7)
    assert rig.hal.resets == 1
    rig.request(link.T_CHAIN_RESET, seq=8)
    assert rig.hal.resets == 2


def test_watchdog_is_not_armed_before_the_agent_talks():
    rig = Rig({"heartbeat_timeout_ms": 1000})
    rig.advance(5000)
    assert rig.bridge.state == link.S_IDLE and rig.hal.calls == []


def test_watchdog_idles_the_chain_and_reports_why():
    rig = Rig({"heartbeat_timeout_ms": 1000})
    rig.power_on()
    for _ in range(5):  # heartbeats keep it alive
        rig.advance(800)
        rig.request(link.T_HEARTBEAT)
    assert rig.hal.chain_on
    rig.advance(1200)
    assert idled(rig.hal)
    events = [m for m in rig.dec.feed(rig.uart.take()) if m.typ == link.T_EVENT]
    assert [tuple(m.payload) for m in events] == [(link.S_TRIPPED, link.R_HEARTBEAT)]
    st = link.unpack_status(rig.request(link.T_HEARTBEAT).payload)
    assert (st["state"], st["trip_reason"]) == (link.S_TRIPPED, link.R_HEARTBEAT)
    # the agent is back and nothing else is wrong: power on clears the trip
    assert rig.power_on().typ == link.T_CHAIN_POWER | link.REPLY
    assert rig.hal.chain_on and rig.bridge.state == link.S_ACTIVE


def test_chip_over_temperature_trips_and_power_on_waits_for_cooling():
    rig = Rig({"trip_temp_dc": 900, "resume_temp_dc": 800})
    rig.power_on()
    rig.hal.chip_temps = [650, 905]
    rig.advance(300)
    assert idled(rig.hal) and rig.hal.fan_pct == 100
    s = rig.sensors()
    assert (s["state"], s["trip_reason"]) == (link.S_TRIPPED, link.R_CHIP_TEMP)
    rig.hal.chip_temps = [650, 850]  # below the trip, above the resume limit
    m = rig.power_on()
    assert link.unpack_error(m.payload) == (link.T_CHAIN_POWER, link.E_TRIPPED)
    assert link.unpack_u8(rig.request(link.T_SET_FAN, b"\x20").payload) == 100
    rig.hal.chip_temps = [650, 790]
    assert rig.power_on().typ == link.T_CHAIN_POWER | link.REPLY and rig.hal.chain_on


def test_regulator_over_temperature_trips():
    rig = Rig()
    rig.power_on()
    rig.hal.vr_temp = 1250
    rig.advance(300)
    assert idled(rig.hal) and rig.bridge.trip_reason == link.R_VR_TEMP


@pytest.mark.parametrize("fault", ["oserror", "out_of_range"])
def test_sensor_failure_trips_a_powered_chain(fault):
    rig = Rig()
    rig.power_on()
    if fault == "oserror":
        rig.hal.fail.append("vin_mv")
    else:
        rig.hal.chip_temps = [450, 3000]
    rig.advance(300)
    assert idled(rig.hal) and rig.bridge.trip_reason == link.R_SENSOR
    s = rig.sensors()
    assert s["vin_mv"] is None if fault == "oserror" else s["chip_temps_dc"][1] is None
    assert link.unpack_error(rig.power_on().payload) == (link.T_CHAIN_POWER, link.E_TRIPPED)


def test_sensor_failure_with_the_chain_off_is_reported_not_tripped():
    rig = Rig()
    rig.request(link.T_HEARTBEAT)
    rig.hal.fail.append("chip_temps_dc")
    rig.advance(300)
    assert rig.bridge.state == link.S_ACTIVE and rig.sensors()["chip_temps_dc"] == []


def test_hal_error_on_a_setter_is_an_error_reply():
    rig = Rig()

    def broken(pct):
        raise OSError(5, "i2c")

    rig.hal.set_fan_pct = broken
    m = rig.request(link.T_SET_FAN, b"\x10")
    assert link.unpack_error(m.payload) == (link.T_SET_FAN, link.E_HARDWARE)


def test_garbage_on_the_link_is_skipped():
    rig = Rig()
    rig.uart.rx += b"\x00\xa5\x5a\x40garbage\xa5"
    m = rig.request(link.T_HEARTBEAT)
    assert m.typ == link.T_HEARTBEAT | link.REPLY
    assert rig.bridge.decoder.discarded_bytes > 0


def test_bad_config_is_rejected():
    with pytest.raises(ValueError):
        Bridge(MemoryUart(), SimHal(), {"family": "BM9"}, lambda: 0)
    with pytest.raises(ValueError):
        Bridge(MemoryUart(), SimHal(), {"heartbeat_timeout_ms": "5s"}, lambda: 0)


def test_bm1397_idles_with_its_own_pll_encoding():
    rig = Rig({"family": "BM1397", "heartbeat_timeout_ms": 500})
    rig.power_on()
    rig.advance(1000)
    assert idled(rig.hal, "BM1397")


def test_a_chain_powered_at_boot_is_protected_before_any_request():
    rig = Rig({"chain_powered_at_boot": True})
    rig.hal.chain_on = True  # the board's power-on state
    rig.hal.fail.append("vin_mv")  # a sensor trips a powered chain only
    rig.advance(300)
    assert idled(rig.hal) and rig.bridge.trip_reason == link.R_SENSOR
    with pytest.raises(ValueError, match="true or false"):
        Bridge(MemoryUart(), SimHal(), {"chain_powered_at_boot": 1}, lambda: 0)


def _trip_on_heartbeat(rig):
    rig.power_on()
    rig.advance(1200)
    assert rig.bridge.state == link.S_TRIPPED and not rig.hal.chain_on


def test_clear_trip_acknowledges_a_latched_trip_without_powering_the_chain():
    """A restarted agent acknowledges the watchdog trip its predecessor left: the latch clears,
    the chain stays off until the agent powers it (at its own pace)."""
    rig = Rig({"heartbeat_timeout_ms": 1000})
    _trip_on_heartbeat(rig)
    calls = len(rig.hal.calls)
    m = rig.request(link.T_CLEAR_TRIP, bytes((link.R_HEARTBEAT,)))
    assert m.typ == link.T_CLEAR_TRIP | link.REPLY
    st = link.unpack_status(m.payload)
    assert (st["state"], st["trip_reason"]) == (link.S_ACTIVE, link.R_NONE)
    assert not rig.hal.chain_on and ("set_chain_power", True) not in rig.hal.calls[calls:]
    s = rig.sensors()
    assert (s["state"], s["trip_reason"], s["chain_powered"]) == (link.S_ACTIVE, link.R_NONE,
                                                                 False)
    # not tripped: nothing to clear, the status comes back as it is
    st = link.unpack_status(rig.request(link.T_CLEAR_TRIP, bytes((link.R_HEARTBEAT,))).payload)
    assert st["state"] == link.S_ACTIVE


def test_clear_trip_is_refused_while_the_cause_remains_or_for_another_reason():
    rig = Rig({"trip_temp_dc": 900, "resume_temp_dc": 800})
    rig.power_on()
    rig.hal.chip_temps = [650, 905]
    rig.advance(300)
    assert rig.bridge.trip_reason == link.R_CHIP_TEMP
    rig.hal.chip_temps = [650, 850]  # below the trip, above the resume limit
    m = rig.request(link.T_CLEAR_TRIP, bytes((link.R_CHIP_TEMP,)))
    assert link.unpack_error(m.payload) == (link.T_CLEAR_TRIP, link.E_TRIPPED)
    rig.hal.chip_temps = [650, 700]
    m = rig.request(link.T_CLEAR_TRIP, bytes((link.R_HEARTBEAT,)))  # not the latched one
    assert link.unpack_error(m.payload) == (link.T_CLEAR_TRIP, link.E_TRIPPED)
    for bad in (link.R_NONE, 0x77):
        m = rig.request(link.T_CLEAR_TRIP, bytes((bad,)))
        assert link.unpack_error(m.payload) == (link.T_CLEAR_TRIP, link.E_RANGE)
    m = rig.request(link.T_CLEAR_TRIP, b"")
    assert link.unpack_error(m.payload) == (link.T_CLEAR_TRIP, link.E_BAD_LENGTH)
    m = rig.request(link.T_CLEAR_TRIP, bytes((link.R_CHIP_TEMP,)))
    assert link.unpack_status(m.payload)["state"] == link.S_ACTIVE and not rig.hal.chain_on
