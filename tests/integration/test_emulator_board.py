"""The board link of the emulator: the real bridge firmware over the plant, through a pty."""

from __future__ import annotations

import time

import serial

from firmware_bridge import asic, link
from hil.hashboard import HashBoardEmulator
from tests.support.polling import wait_emulated


class BoardHost:
    """Minimal host side of the board link (request -> reply by sequence number)."""

    def __init__(self, port: serial.Serial) -> None:
        self.port = port
        self.decoder = link.Decoder()
        self.seq = 0
        self.events: list[link.Message] = []

    def request(self, typ: int, payload: bytes = b"", timeout_s: float = 2.0) -> link.Message:
        self.seq = self.seq % 255 + 1
        self.port.write(link.encode(self.seq, typ, payload))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for msg in self.decoder.feed(self.port.read(max(1, self.port.in_waiting))):
                if msg.typ == link.T_EVENT:
                    self.events.append(msg)
                elif msg.seq == self.seq:
                    return msg
        raise AssertionError(f"no reply to request 0x{typ:02X}")

    def sensors(self) -> dict:
        msg = self.request(link.T_READ_SENSORS)
        assert msg.typ == link.T_READ_SENSORS | link.REPLY
        return link.unpack_sensors(msg.payload)


def run(emu: HashBoardEmulator, seconds: float) -> None:
    """Let `seconds` of the emulator's own time pass (it lags the wall clock when short of CPU)."""
    wait_emulated(lambda: emu.time_s, seconds)


def chain_answers(emu: HashBoardEmulator, port: serial.Serial) -> int:
    port.reset_input_buffer()
    port.write(asic.cmd_read(0x00))
    run(emu, 0.15)
    return len(asic.ResponseParser("BM1370", reply_len=9).feed(port.read(port.in_waiting)))


def test_sensors_follow_the_plant_and_commands_drive_it():
    with HashBoardEmulator("BM1370", 2, seed=1, speed=4.0) as emu, serial.Serial(
        emu.board_path, 115200, timeout=0.05
    ) as bport:
        host = BoardHost(bport)
        s = host.sensors()
        truth = emu.state()
        assert s["chain_powered"] is True
        assert len(s["chip_temps_dc"]) == 2
        assert abs(s["power_mw"] / 1000.0 - truth["board_power_w"]) < 0.5
        assert abs(s["vcore_mv"] - 1150) < 10
        assert host.request(link.T_SET_FAN, link.pack_u8(20)).typ == link.T_SET_FAN | link.REPLY
        assert host.request(link.T_SET_VCORE, link.pack_u16(1100)).typ & link.REPLY
        for _ in range(6):  # 6 s emulated (fan lag 1.5 s, regulator 50 ms), heartbeating
            run(emu, 1.0)
            host.request(link.T_HEARTBEAT)
        s = host.sensors()
        assert abs(s["fan_rpm"] - 0.2 * 6000) < 150
        assert abs(s["vcore_mv"] - 1100) < 6
        assert emu.state()["plant"]["fan_pct"] == 20


def test_chain_power_and_reset_over_the_board_link():
    with HashBoardEmulator("BM1370", 2, seed=1) as emu, serial.Serial(
        emu.board_path, 115200, timeout=0.05
    ) as bport, serial.Serial(emu.chain_path, 115200, timeout=0.05) as cport:
        host = BoardHost(bport)
        assert chain_answers(emu, cport) == 2
        emu.inject_fault("chain_hang")
        run(emu, 0.05)
        assert chain_answers(emu, cport) == 0
        assert host.request(link.T_CHAIN_RESET).typ == link.T_CHAIN_RESET | link.REPLY
        assert chain_answers(emu, cport) == 2
        assert host.request(link.T_CHAIN_POWER, link.pack_u8(0)).typ & link.REPLY
        run(emu, 0.1)
        assert chain_answers(emu, cport) == 0
        off = emu.state()
        assert off["asic_power_w"] == 0.0 and off["hashrate_ghs"] == 0.0
        assert host.request(link.T_CHAIN_POWER, link.pack_u8(1)).typ & link.REPLY
        run(emu, 0.1)
        assert chain_answers(emu, cport) == 2
        cport.write(asic.cmd_read(asic.REG_PLL0))
        run(emu, 0.1)
        pll = asic.ResponseParser("BM1370", reply_len=9).feed(cport.read(cport.in_waiting))
        assert [r.value for r in pll] == [asic.pll_value("BM1370", 50.0) | 0x80000000] * 2


def test_invalid_sensor_trips_the_bridge_which_idles_the_chain():
    with HashBoardEmulator("BM1370", 1, seed=1) as emu, serial.Serial(
        emu.board_path, 115200, timeout=0.05
    ) as bport:
        host = BoardHost(bport)
        host.request(link.T_HEARTBEAT)
        emu.inject_fault("sensor_invalid", sensor="vr_temp", duration_s=0.5)
        run(emu, 0.6)
        s = host.sensors()
        assert s["trip_reason"] == link.R_SENSOR
        assert s["chain_powered"] is False
        assert emu.state()["chain_powered"] is False
        assert any(m.typ == link.T_EVENT for m in host.events)
        run(emu, 0.1)
        assert host.request(link.T_CHAIN_POWER, link.pack_u8(1)).typ & link.REPLY  # cause gone
        assert emu.state()["chain_powered"] is True


def test_watchdog_trips_when_the_host_goes_silent():
    with HashBoardEmulator("BM1370", 1, seed=1, speed=10.0,
                           bridge_config={"heartbeat_timeout_ms": 2000}) as emu, serial.Serial(
        emu.board_path, 115200, timeout=0.05
    ) as bport:
        host = BoardHost(bport)
        host.request(link.T_HEARTBEAT)
        run(emu, 4.0)
        assert emu.state()["chain_powered"] is False
        assert host.sensors()["trip_reason"] == link.R_HEARTBEAT


def test_stuck_chip_temperature_over_the_link():
    with HashBoardEmulator("BM1370", 1, seed=1, speed=20.0) as emu, serial.Serial(
        emu.board_path, 115200, timeout=0.05
    ) as bport:
        host = BoardHost(bport)
        emu.inject_fault("sensor_stuck", sensor="chip_temp", channel=0)
        run(emu, 1.0)
        first = host.sensors()["chip_temps_dc"][0]
        emu.set_ambient_c(45.0)
        run(emu, 20.0)
        assert host.sensors()["chip_temps_dc"] == [first]
        assert emu.state()["chip_temp_c"][0] * 10 > first + 50


def test_reply_faults_on_the_board_port_damage_link_frames():
    with HashBoardEmulator("BM1370", 1, seed=1) as emu, serial.Serial(
        emu.board_path, 115200, timeout=0.05
    ) as bport:
        host = BoardHost(bport)
        emu.inject_fault("reply_corrupt", duration_s=0.3, port="board")
        run(emu, 0.05)
        bport.write(link.encode(9, link.T_HEARTBEAT))
        run(emu, 0.1)
        damaged = bport.read(64)
        assert len(damaged) == 7 + 6  # the heartbeat reply came, one bit flipped
        assert link.Decoder().feed(damaged) == []
        assert emu.state()["counters"]["frames_corrupted"] == 1
        run(emu, 0.3)
        assert host.request(link.T_HEARTBEAT).typ == link.T_HEARTBEAT | link.REPLY
