"""The board emulator driven only through its pseudo-terminals, as a host drives /dev/ttyUSB0."""

from __future__ import annotations

import json
import os
import random
import socket
import struct
import time

import pytest
import serial

from agent.chain.work import target_for
from agent.hashing import sha256d
from firmware_bridge import asic, bringup
from firmware_bridge.chips import profile
from hil.hashboard import HashBoardEmulator

HEADER = bytes.fromhex(
    "04000020fc102bd0ea11470daf05a8e133a8a8505e21a2122b7f01000000000000000000"
    "6d0359c451434605c52a5a9ce074340be47c2c63840731f9edf1db3f26b1cdd9a9f16f643aae051747896e27"
)
DIFFICULTY = 2.0**-26


def read_frames(port: serial.Serial, size: int, count: int, timeout_s: float = 3.0) -> bytes:
    """Read `count` frames of `size` bytes (ESP-Miner style), up to `timeout_s`."""
    want = size * count
    data = b""
    deadline = time.monotonic() + timeout_s
    while len(data) < want and time.monotonic() < deadline:
        data += port.read(want - len(data))
    return data


def send(port: serial.Serial, frames) -> None:
    for frame, delay_ms in frames:
        port.write(frame)
        if delay_ms:
            time.sleep(min(delay_ms, 20) / 1000.0)  # shortened: the chips take line rate


@pytest.mark.parametrize("family", ["BM1366", "BM1368", "BM1370"])
def test_init_sequence_nonces_and_baud_switch_over_the_pty(family, no_leaks):
    chips = 3
    prof = profile(family)
    with HashBoardEmulator(family, chips, difficulty=DIFFICULTY, seed=2) as emu, serial.Serial(
        emu.chain_path, 115200, timeout=0.2
    ) as port:
        send(port, bringup.enumeration_frames(family))
        ids = asic.ResponseParser(family).feed(read_frames(port, 11, chips))
        assert [r.value for r in ids] == [prof.chip_id_value] * chips
        send(port, bringup.setup_frames(family, chips, difficulty=1))
        send(port, bringup.ramp_frames(family, 50.0, prof.default_freq_mhz))
        send(port, bringup.after_ramp_frames(family, prof.default_freq_mhz, chips))
        frame, host_baud = bringup.baud_frame(family)
        port.write(frame)
        port.flush()
        port.baudrate = host_baud
        port.write(asic.cmd_read(asic.REG_PLL0))
        parser = asic.ResponseParser(family)
        pll = parser.feed(read_frames(port, 11, chips))
        assert [(r.chip_addr, r.value) for r in pll] == [
            (a, asic.pll_value(family, prof.default_freq_mhz) | 0x80000000)
            for a in bringup.chip_addresses(chips)
        ]
        job_id = (2 * prof.job_id_step) % 128
        port.write(asic.job_frame(family, job_id, HEADER))
        nonces = [r for r in parser.feed(read_frames(port, 11, 30)) if r.kind == "nonce"]
        state = emu.state()
    assert len(nonces) == 30
    target = target_for(DIFFICULTY)
    for r in nonces:
        full = (struct.pack("<I", int.from_bytes(HEADER[:4], "little") | r.version_bits)
                + HEADER[4:76] + struct.pack("<I", r.nonce))
        assert int.from_bytes(sha256d(full), "little") <= target
        assert r.job_id == job_id
        assert r.small_core == (r.version_bits >> 13) & (prof.small_cores_per_core - 1)
    assert state["chain"]["baud"] == asic.uart_baud(2)
    assert state["ports"]["chain"]["host_baud"] == host_baud
    assert state["freq_mhz"] == [prof.default_freq_mhz] * chips


def test_random_bytes_never_stop_it_answering(no_leaks):
    rng = random.Random(9)
    with HashBoardEmulator("BM1370", 4, difficulty=DIFFICULTY, seed=1) as emu, serial.Serial(
        emu.chain_path, 115200, timeout=0.2
    ) as port, serial.Serial(emu.board_path, 115200, timeout=0.2) as board:
        for _ in range(32):
            port.write(bytes(rng.getrandbits(8) for _ in range(2048)))
            board.write(bytes(rng.getrandbits(8) for _ in range(256)))
        time.sleep(0.3)
        port.reset_input_buffer()
        port.write(asic.cmd_read(0x00))
        data = read_frames(port, 9, 4)
        replies = asic.ResponseParser("BM1370", reply_len=9).feed(data)
        if len(replies) < 4:  # the noise may have enabled version rolling: 11-byte replies
            replies = asic.ResponseParser("BM1370").feed(data + read_frames(port, 1, 8))
        assert [r.value >> 16 for r in replies] == [0x1370] * 4
        assert emu.state()["chain"]["parser"]["discarded_bytes"] > 30000
        assert emu.is_running()


def test_status_file_and_state_report_the_true_state(tmp_path, no_leaks):
    status = tmp_path / "status.json"
    with HashBoardEmulator("BM1366", 2, seed=3, status_file=str(status), speed=5.0) as emu:
        time.sleep(0.5)
        emu.set_ambient_c(31.5)
        time.sleep(0.3)
        state = emu.state()
        on_disk = json.loads(status.read_text())
    assert state["ambient_c"] == 31.5
    assert on_disk["ambient_c"] == 31.5
    assert 1.5 < state["time_s"] < 6.0  # speed 5: emulated time runs 5x the wall clock
    for key in ("wall_power_w", "chip_temp_c", "freq_mhz", "nonces_emitted", "faults",
                "time_s", "chain_path", "board_path", "lag_s"):
        assert key in on_disk
    assert on_disk["freq_mhz"] == [50.0, 50.0]
    assert on_disk["wall_power_w"] > on_disk["board_power_w"] > 0
    assert status.exists()  # a given status file stays after stop


def test_control_socket_sets_ambient_and_injects_faults(tmp_path, no_leaks):
    ctl = str(tmp_path / "ctl.sock")
    with HashBoardEmulator("BM1370", 2, seed=1, control_path=ctl) as emu, socket.socket(
        socket.AF_UNIX
    ) as sock:
        sock.connect(ctl)
        sock.settimeout(2.0)
        stream = sock.makefile("rwb")

        def ask(obj) -> dict:
            stream.write((obj if isinstance(obj, bytes) else json.dumps(obj).encode()) + b"\n")
            stream.flush()
            return json.loads(stream.readline())

        assert ask({"cmd": "set_ambient_c", "value": 40}) == {"ok": True}
        reply = ask({"cmd": "inject_fault", "fault": {"kind": "chip_silent", "chip": 1}})
        assert reply["ok"] and reply["fault"]["kind"] == "chip_silent"
        assert ask(b"not json")["ok"] is False
        assert "kind" in ask({"cmd": "inject_fault", "fault": {"kind": "meteor"}})["error"]
        state = ask({"cmd": "state"})["state"]
        stream.close()
        assert state["ambient_c"] == 40.0
        with serial.Serial(emu.chain_path, 115200, timeout=0.3) as port:
            time.sleep(0.05)
            port.write(asic.cmd_read(0x00))
            replies = asic.ResponseParser("BM1370", reply_len=9).feed(read_frames(port, 9, 2, 0.5))
        assert len(replies) == 1  # chip 1 stopped answering
    assert not os.path.exists(ctl)


def test_the_host_must_follow_the_chips_baud_rate(no_leaks):
    with HashBoardEmulator("BM1370", 2, seed=1) as emu, serial.Serial(
        emu.chain_path, 9600, timeout=0.2
    ) as port:
        port.write(asic.cmd_read(0x00))
        assert asic.ResponseParser("BM1370", reply_len=9).feed(read_frames(port, 9, 2, 0.4)) == []
        port.baudrate = 115200
        port.write(asic.cmd_read(0x00))
        assert len(asic.ResponseParser("BM1370", reply_len=9).feed(read_frames(port, 9, 2))) == 2
        frame, host_baud = bringup.baud_frame("BM1370")
        port.write(frame)
        port.flush()
        time.sleep(0.1)  # the host forgets to switch: the chips now talk at ~1 Mbd
        port.write(asic.cmd_read(0x00))
        assert asic.ResponseParser("BM1370", reply_len=9).feed(read_frames(port, 9, 2, 0.4)) == []
        port.baudrate = host_baud
        port.reset_input_buffer()
        port.write(asic.cmd_read(0x00))
        assert len(asic.ResponseParser("BM1370", reply_len=9).feed(read_frames(port, 9, 2))) == 2
        assert emu.state()["counters"]["baud_mismatch_bytes"] > 0
