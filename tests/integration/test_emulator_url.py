"""pyserial URLs `asicemu://` and `asicboard://`: the same emulator in-process, no pty."""

from __future__ import annotations

import time

import pytest
import serial

import hil  # noqa: F401  (registers the URL handlers)
from firmware_bridge import asic, bringup, link
from hil.hashboard import EMULATORS, HashBoardEmulator


def read_n(port, n: int, timeout_s: float = 2.0) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout_s
    while len(data) < n and time.monotonic() < deadline:
        data += port.read(n - len(data))
    return data


def test_url_creates_an_emulator_and_the_board_url_shares_it(no_leaks):
    chain = serial.serial_for_url("asicemu://rig1?family=BM1366&chips=3&seed=7&difficulty=2**-26",
                                  timeout=0.2)
    try:
        assert "rig1" in EMULATORS
        for frame, _ in bringup.enumeration_frames("BM1366"):
            chain.write(frame)
        ids = asic.ResponseParser("BM1366").feed(read_n(chain, 33))
        assert [r.value for r in ids] == [0x13660000] * 3
        board = serial.serial_for_url("asicboard://rig1", timeout=0.2)
        try:
            board.write(link.encode(1, link.T_READ_SENSORS))
            reply = link.Decoder().feed(read_n(board, 7 + 27 + 6))
            assert link.unpack_sensors(reply[0].payload)["chain_powered"] is True
        finally:
            board.close()
        assert chain.emulator is not None and chain.emulator.state()["chips"] == 3
    finally:
        chain.close()
    assert "rig1" not in EMULATORS  # stopped with its last port


def test_board_url_first_then_chain_url_share_one_emulator():
    board = serial.serial_for_url("asicboard://rig3?family=BM1368&chips=2", timeout=0.2)
    try:
        with serial.serial_for_url("asicemu://rig3?chips=9", timeout=0.2) as chain:
            assert chain.emulator is board.emulator
            chain.write(asic.cmd_read(0x00))
            ids = asic.ResponseParser("BM1368", reply_len=9).feed(read_n(chain, 18))
            assert [r.value for r in ids] == [0x13680000] * 2
        assert "rig3" in EMULATORS
    finally:
        board.close()
    assert "rig3" not in EMULATORS


def test_url_attaches_to_an_emulator_started_in_process():
    with HashBoardEmulator("BM1370", 2, seed=1, transport="socket", name="bench2") as emu:
        with serial.serial_for_url("asicemu://bench2", timeout=0.2) as port:
            port.write(asic.cmd_read(0x00))
            assert len(asic.ResponseParser("BM1370", reply_len=9).feed(read_n(port, 18))) == 2
        assert emu.is_running()  # closing a port does not stop an emulator it did not make


@pytest.mark.parametrize("url", ["asicemu://x?colour=red", "asicemu://?chips=zero",
                                 "asicemu://?family=BM9999", "asicboard://y?chips=0"])
def test_bad_urls_are_rejected_with_a_reason(url):
    with pytest.raises(serial.SerialException):
        serial.serial_for_url(url)
