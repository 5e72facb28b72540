"""Fault injection: what a host sees on the ports when the plan says things go wrong."""

from __future__ import annotations

import json
import struct
import threading
import time

import pytest
import serial

from agent.chain.board import BoardClient
from agent.chain.driver import ChainDriver
from agent.chain.settings import ChainSettings
from agent.chain.work import LocalWorkSource, target_for
from agent.clock import SystemClock
from agent.hashing import sha256d
from firmware_bridge import asic, bringup
from hil.errors import FaultPlanError
from hil.faults import FaultPlan
from hil.hashboard import HashBoardEmulator
from tests.support.polling import wait_until

HEADER = bytes(range(80))
DIFFICULTY = 2.0**-26


def read_for(port: serial.Serial, seconds: float) -> bytes:
    data = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        data += port.read(max(1, port.in_waiting))
    return data


def wait_emulated_until(emu: HashBoardEmulator, t_s: float) -> None:
    """Until the emulator's clock reads `t_s` (however it lags the wall clock)."""
    wait_until(lambda: emu.time_s >= t_s, 30.0, f"{t_s} s of emulated time", poll_s=0.01)


def chip_ids(port: serial.Serial, seconds: float = 0.3) -> tuple[list, asic.ResponseParser]:
    parser = asic.ResponseParser("BM1370", reply_len=9)
    port.reset_input_buffer()
    port.write(asic.cmd_read(0x00))
    return parser.feed(read_for(port, seconds)), parser


def test_plan_file_silent_chip_then_corrupted_replies(tmp_path):
    plan = tmp_path / "plan.toml"
    plan.write_text(
        '[[fault]]\nkind = "chip_silent"\nat_s = 0.0\nduration_s = 1.0\nchip = 2\n\n'
        '[[fault]]\nkind = "reply_corrupt"\nat_s = 1.5\nduration_s = 0.8\nprobability = 1.0\n'
    )
    with HashBoardEmulator("BM1370", 3, seed=1, fault_plan=FaultPlan.load(plan)) as emu, \
            serial.Serial(emu.chain_path, 115200, timeout=0.05) as port:
        wait_emulated_until(emu, 0.05)
        replies, _ = chip_ids(port)
        assert len(replies) == 2
        wait_emulated_until(emu, 1.6)
        replies, parser = chip_ids(port)
        assert len(replies) < 3 and parser.crc_errors + parser.discarded_bytes > 0
        wait_emulated_until(emu, 2.4)
        replies, _ = chip_ids(port)
        assert len(replies) == 3
        state = emu.state()
    assert state["faults_injected"] == 2
    assert state["counters"]["frames_corrupted"] >= 3
    assert [f["kind"] for f in state["faults"]] == ["chip_silent", "reply_corrupt"]


def test_chain_hang_lasts_until_reset(tmp_path):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"faults": [{"kind": "chain_hang", "at_s": 0.2}]}))
    with HashBoardEmulator("BM1370", 2, seed=1, fault_plan=FaultPlan.load(plan)) as emu, \
            serial.Serial(emu.chain_path, 115200, timeout=0.05) as port:
        wait_emulated_until(emu, 0.3)
        assert chip_ids(port)[0] == []
        time.sleep(0.5)
        assert chip_ids(port)[0] == []  # still hung: only a reset ends it
        emu.reset_chain()
        assert len(chip_ids(port)[0]) == 2
        assert emu.state()["faults"][0]["cleared_at_s"] is not None


def test_serial_garbage_burst_then_the_chain_still_answers():
    with HashBoardEmulator("BM1370", 2, seed=1) as emu, serial.Serial(
        emu.chain_path, 115200, timeout=0.05
    ) as port:
        emu.inject_fault("serial_garbage", bytes=600)
        data = read_for(port, 0.3)
        assert len(data) >= 600
        assert len(chip_ids(port)[0]) == 2
        assert emu.state()["counters"]["garbage_bytes"] == 600


def test_hw_error_fault_returns_invalid_nonces_and_counts_them():
    with HashBoardEmulator("BM1370", 2, seed=1, difficulty=DIFFICULTY) as emu, serial.Serial(
        emu.chain_path, 115200, timeout=0.05
    ) as port:
        frames = bringup.enumeration_frames("BM1370") + bringup.setup_frames("BM1370", 2, 4096)
        for frame, _ in frames:
            port.write(frame)
        port.write(asic.pll_frame("BM1370", 525.0))
        port.write(asic.job_frame("BM1370", 24, HEADER))
        emu.inject_fault("chip_hw_errors", chip=1, rate_hz=40.0)
        parser = asic.ResponseParser("BM1370")
        nonces = [r for r in parser.feed(read_for(port, 1.0)) if r.kind == "nonce"]
        port.write(asic.cmd_read(0x4C))
        errors = [r for r in parser.feed(read_for(port, 0.3)) if r.kind == "register"]
    target = target_for(DIFFICULTY)
    bad = {}
    for r in nonces:
        full = (struct.pack("<I", int.from_bytes(HEADER[:4], "little") | r.version_bits)
                + HEADER[4:76] + struct.pack("<I", r.nonce))
        ok = int.from_bytes(sha256d(full), "little") <= target
        chip = r.chip_addr_field // 128
        bad.setdefault(chip, []).append(not ok)
    assert sum(bad.get(1, [])) > 15  # ~40 per second from chip 1
    assert sum(bad.get(0, [])) == 0  # ~0.5 valid nonces/s at ticket 4096, no errors
    assert errors[1].value > errors[0].value  # 0x4C of chip 1 counts them (x ticket)


def test_sensor_faults_freeze_or_fail_the_reading():
    emu = HashBoardEmulator("BM1370", 1, seed=1)
    emu.plant.fan_pct = 0
    emu.advance(100)
    live0 = emu.hal.chip_temps_dc()[0]
    emu.inject_fault("sensor_stuck", sensor="chip_temp", duration_s=20.0)
    emu.advance(1)
    stuck = emu.hal.chip_temps_dc()[0]
    emu.set_ambient_c(60.0)
    emu.advance(1000)
    assert emu.hal.chip_temps_dc()[0] == stuck
    assert emu.plant.sensors.chip_temps_dc[0] > live0 + 20  # the real chip kept heating
    emu.inject_fault("sensor_invalid", sensor="power", duration_s=1.0)
    emu.advance(1)
    with pytest.raises(OSError):
        emu.hal.power_mw()
    emu.advance(150)
    assert emu.hal.power_mw() > 0
    emu.inject_fault("sensor_invalid", sensor="chip_temp", channel=0, mode="out_of_range")
    emu.advance(1)
    assert emu.hal.chip_temps_dc() == [-2732]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"kind": "meteor"}, "unknown kind"),
        ({"kind": "reply_drop", "probability": 2}, "probability"),
        ({"kind": "sensor_stuck", "sensor": "humidity"}, "sensor must be one of"),
        ({"kind": "chip_hw_errors", "chip": 0}, "needs 'rate_hz'"),
        ({"kind": "chain_hang", "at_s": -1}, "at_s"),
        ({"kind": "serial_garbage", "colour": "red"}, "takes no 'colour'"),
    ],
)
def test_invalid_fault_plan_entries_are_rejected_with_a_reason(entry, message):
    with pytest.raises(FaultPlanError, match=message):
        FaultPlan.from_dict({"faults": [entry]})


def test_dropped_and_truncated_replies():
    with HashBoardEmulator("BM1370", 3, seed=1) as emu, serial.Serial(
        emu.chain_path, 115200, timeout=0.05
    ) as port:
        emu.inject_fault("reply_drop", duration_s=0.3)
        wait_emulated_until(emu, 0.02)
        port.write(asic.cmd_read(0x00))
        assert read_for(port, 0.15) == b""
        wait_emulated_until(emu, 0.35)
        emu.inject_fault("reply_truncate", duration_s=0.3)
        wait_emulated_until(emu, 0.37)
        port.write(asic.cmd_read(0x00))
        data = read_for(port, 0.15)
        assert 3 <= len(data) < 27  # every frame cut short
        assert len(asic.ResponseParser("BM1370", reply_len=9).feed(data)) == 0
        counters = emu.state()["counters"]
    assert counters["frames_dropped"] == 3 and counters["frames_truncated"] == 3


def deliver_late(emu: HashBoardEmulator, delay_s: float) -> None:
    """The host's bytes reach the emulator `delay_s` after they were written, as they do through
    a loaded kernel: a pty has no wire, its drain returns at once and the other side reads the
    bytes whenever the kernel has handed them over."""
    port = emu.port("chain")
    real_read = port.read
    held: list[tuple[float, bytes]] = []

    def read() -> bytes:
        now = time.monotonic()
        data = real_read()
        if data:
            held.append((now, data))
        due = [d for t, d in held if now - t >= delay_s]
        held[:] = [(t, d) for t, d in held if now - t < delay_s]
        return b"".join(due)

    port.read = read  # type: ignore[method-assign]


def test_a_baud_switch_after_a_drain_holds_when_the_kernel_delivers_the_bytes_late():
    """The baud-switch frame goes out at the old rate, the host drains and switches; on a loaded
    machine the emulator may look at the host's new rate twice before the frame reaches it. The
    frame was sent at the old rate all the same: the chips switch and answer at the new one (a
    garbled switch frame left them at 115 kBd and the re-initialisation failed)."""
    with HashBoardEmulator("BM1370", 4, seed=1) as emu:
        deliver_late(emu, 0.03)
        clock = SystemClock()
        board = BoardClient(emu.board_path)
        driver = ChainDriver(serial.serial_for_url(emu.chain_path, 115200, timeout=0.05),
                             ChainSettings(family="BM1370", chips=4, start_attempts=1), clock,
                             LocalWorkSource(clock), board=board, wake=threading.Event())
        try:
            for _ in range(3):  # reset, enumerate, configure, switch, verify
                driver.bring_up(timeout_s=5.0)
                assert emu.state()["chain"]["baud"] > 900_000
        finally:
            driver.close()
            board.close()


def test_a_killed_board_coming_back_is_brought_up_again_through_reopened_ports(tmp_path):
    """Both ports of the board vanish (the emulator killed) and come back behind the same paths
    (a new emulator, as a board re-enumerating on USB): the driver's chain port and the board
    client are opened again, and the re-initialisation, retried within seconds, hashes again."""
    from agent.app import open_serial

    paths = {name: tmp_path / f"tty{name}" for name in ("chain", "board")}
    first = HashBoardEmulator("BM1370", 4, seed=1).start()
    second: HashBoardEmulator | None = None
    for name, path in paths.items():
        path.symlink_to(first.chain_path if name == "chain" else first.board_path)

    def reopen_chain():
        return open_serial(str(paths["chain"]), "chain", 115200, 0.05)

    clock = SystemClock()
    board = BoardClient(str(paths["board"]), timeout_s=0.2)
    driver = ChainDriver(reopen_chain(), ChainSettings(family="BM1370", chips=4,
                                                       hung_timeout_s=1.0),
                         clock, LocalWorkSource(clock), board=board, wake=threading.Event(),
                         reopen=reopen_chain)

    def run_until(cond, timeout_s):
        end = time.monotonic() + timeout_s
        while time.monotonic() < end and not cond():
            now = clock.monotonic()
            driver.poll(now)
            driver.wait(min(driver.next_deadline_s(now) - now, 0.05))
        return cond()

    try:
        driver.bring_up(timeout_s=5.0)
        first.stop()
        assert run_until(lambda: driver.state == "failed", 10.0)  # hung, then no board
        second = HashBoardEmulator("BM1370", 4, seed=2).start()
        for name, path in paths.items():
            path.unlink()
            path.symlink_to(second.chain_path if name == "chain" else second.board_path)
        t_back = time.monotonic()
        assert run_until(lambda: driver.hashing, 15.0), (driver.state, driver.error)
        assert time.monotonic() - t_back < 10.0
        assert board.reopens == 1 and second.state()["chain"]["resets"] >= 1
        assert run_until(lambda: second.state()["nonces_emitted"] > 0, 5.0)
    finally:
        driver.close()
        board.close()
        first.stop()
        if second is not None:
            second.stop()
