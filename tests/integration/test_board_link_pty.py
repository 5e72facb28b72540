"""BoardClient over a real pseudo-terminal, the Bridge firmware running in a thread."""

import os
import select
import threading
import time
import tty

import pytest

from agent.chain.board import BoardClient
from agent.errors import BoardLinkError
from firmware_bridge.bridge import Bridge
from firmware_bridge.hal import SimHal


class FdUart:
    """machine.UART-like view of a pty master for the bridge."""

    def __init__(self, fd):
        self.fd = fd

    def any(self):
        return 1 if select.select([self.fd], [], [], 0)[0] else 0

    def read(self, n=-1):
        try:
            return os.read(self.fd, 256 if n is None or n < 0 else n) or None
        except OSError:
            return None

    def write(self, data):
        return os.write(self.fd, data)


@pytest.fixture
def board():
    master, slave = os.openpty()
    tty.setraw(slave)
    hal = SimHal(2)
    start = time.monotonic()
    bridge = Bridge(FdUart(master), hal, {"heartbeat_timeout_ms": 400},
                    lambda: int((time.monotonic() - start) * 1000))
    stop = threading.Event()

    def loop():
        while not stop.is_set():
            bridge.poll()
            time.sleep(0.002)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    client = BoardClient(os.ttyname(slave), timeout_s=0.2, retries=1)
    yield client, hal, bridge
    client.close()
    stop.set()
    thread.join(2)
    os.close(master)
    os.close(slave)


def test_requests_over_a_real_pty(board):
    client, hal, _ = board
    assert client.set_chain_power(True) and hal.chain_on
    assert client.set_fan_pct(70) == 70
    s = client.read_sample()
    assert s.chip_temps_c == [45.0, 45.0] and s.bridge_state == "active"
    for _ in range(20):
        assert client.heartbeat().bridge_state == "active"


def test_watchdog_trips_when_the_agent_goes_silent(board):
    client, hal, bridge = board
    client.set_chain_power(True)
    deadline = time.monotonic() + 3.0
    while bridge.state != 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not hal.chain_on and hal.written  # parked at 50 MHz, then powered off
    s = client.read_sample()
    assert (s.bridge_state, s.trip_reason) == ("tripped", "heartbeat_timeout")
    assert ("tripped", "heartbeat_timeout") in [e[1:] for e in client.events]
    assert client.set_chain_power(True) and hal.chain_on


def test_client_times_out_when_nobody_answers():
    master, slave = os.openpty()
    tty.setraw(slave)
    try:
        client = BoardClient(os.ttyname(slave), timeout_s=0.05, retries=1)
        with pytest.raises(BoardLinkError, match="no reply"):
            client.heartbeat()
        client.close()
    finally:
        os.close(master)
        os.close(slave)


def test_a_board_that_restarts_is_noticed_by_its_uptime():
    """The real bridge firmware on the emulated board: a power cut reboots it (the fan, core
    voltage and chain power it was told are forgotten); the client says so once."""
    from hil.hashboard import HashBoardEmulator

    with HashBoardEmulator("BM1370", 2, seed=2) as emu:
        client = BoardClient(emu.board_path, timeout_s=0.2)
        try:
            time.sleep(0.3)
            client.set_fan_pct(40)
            client.read_sample()
            assert client.take_reboot() is None
            emu.power_cut()
            s = client.read_sample()
            assert s.fan_pct is None  # forgotten
            why = client.take_reboot()
            assert why is not None and "restarted" in why
            client.heartbeat()
            assert client.take_reboot() is None and client.reboots == 1
        finally:
            client.close()


def test_a_board_link_that_vanishes_is_reopened_when_it_comes_back(tmp_path, caplog):
    """The emulator killed (the port's other side gone, as an unplugged adapter) and started
    again behind the same path: the client reopens the port with a back-off, requests meanwhile
    fail at once, and the log says it once rather than five times a second."""
    from hil.hashboard import HashBoardEmulator

    link_path = tmp_path / "ttyBOARD"  # a stable name, as udev gives a USB adapter
    first = HashBoardEmulator("BM1370", 2, seed=2).start()
    link_path.symlink_to(first.board_path)
    client = BoardClient(str(link_path), timeout_s=0.2)
    second = None
    try:
        time.sleep(0.3)
        client.read_sample()
        first.stop()
        failures = 0
        t0 = time.monotonic()
        with caplog.at_level("INFO", logger="gridminer.board"):
            while time.monotonic() - t0 < 3.0:  # five reads a second, the port gone
                with pytest.raises(BoardLinkError):
                    client.read_sample()
                failures += 1
                time.sleep(0.2)
            assert client.link_down
            second = HashBoardEmulator("BM1370", 2, seed=3).start()
            link_path.unlink()
            link_path.symlink_to(second.board_path)
            t_back = time.monotonic()
            sample = None
            while sample is None and time.monotonic() - t_back < 10.0:
                try:
                    sample = client.read_sample()
                except BoardLinkError:
                    time.sleep(0.2)
        assert sample is not None and not client.link_down and client.reopens == 1
        assert client.last_sample_s is not None and client.last_sample_s >= t_back
        assert time.monotonic() - t_back < 6.0  # the back-off is capped: back within seconds
        lines = [r.getMessage() for r in caplog.records if r.name == "gridminer.board"]
        assert failures >= 10 and len(lines) <= 3, lines
    finally:
        client.close()
        first.stop()
        if second is not None:
            second.stop()
