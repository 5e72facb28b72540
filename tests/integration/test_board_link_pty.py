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
