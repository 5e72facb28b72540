"""agent.chain.board.BoardClient against the real Bridge over an in-process fake port, and
agent.chain.port.open_port, the way both serial links are opened."""

import logging

import pytest

from agent.chain.board import BoardClient
from agent.chain.port import open_port
from agent.clock import FakeClock
from agent.control.alerts import AlertLog
from agent.control.boardlink import BoardLink
from agent.control.runtime import RuntimeCounters
from agent.errors import BoardLinkError, ConfigError
from firmware_bridge.bridge import Bridge
from firmware_bridge.hal import MemoryUart, SimHal


class FakePort:
    """pyserial-like port wired to a Bridge; `drop` replies are lost, `garbage` is prepended."""

    def __init__(self, clock, config=None):
        self.clock = clock
        self.hal = SimHal(2)
        self.uart = MemoryUart()
        self.bridge = Bridge(self.uart, self.hal, config, lambda: int(clock.monotonic() * 1000))
        self.rx = b""
        self.drop = 0
        self.garbage = b""
        self.timeout = 0.02
        self.writes = 0

    @property
    def in_waiting(self):
        return len(self.rx)

    def write(self, data):
        self.writes += 1
        self.uart.rx += data
        self.bridge.poll()
        out = self.uart.take()
        if self.drop:
            self.drop -= 1
        else:
            self.rx += self.garbage + out
        return len(data)

    def read(self, n=1):
        if not self.rx:
            self.clock.advance(self.timeout)
            return b""
        out, self.rx = self.rx[:n], self.rx[n:]
        return out


@pytest.fixture
def rig():
    clock = FakeClock()
    port = FakePort(clock)
    return BoardClient(port, timeout_s=0.1, retries=2, clock=clock), port


def test_read_sample_scales_units(rig):
    client, port = rig
    port.hal.chip_temps = [612, 598]
    port.hal.vin, port.hal.iin, port.hal.board_temp = 12000, 1500, 415
    client.set_chain_power(True)
    s = client.read_sample()
    assert s.chip_temps_c == [61.2, 59.8] and s.board_temp_c == 41.5
    assert s.vin_v == 12.0 and s.iin_a == 1.5 and s.power_w == 15.0
    assert s.chain_powered and s.bridge_state == "active" and s.trip_reason is None
    assert s.max_chip_temp_c == 61.2


def test_a_psu_efficiency_makes_the_sample_power_the_walls(rig):
    _, port = rig
    client = BoardClient(port, timeout_s=0.1, retries=2, clock=port.clock, psu_efficiency=0.8)
    port.hal.vin, port.hal.iin = 12000, 1500
    client.set_chain_power(True)
    s = client.read_sample()
    assert s.vin_v == 12.0 and s.iin_a == 1.5 and s.power_w == pytest.approx(18.75)


def test_setters(rig):
    client, port = rig
    assert client.set_fan_pct(55) == 55 and port.hal.fan_pct == 55
    assert client.set_vcore_mv(1200) == 1200 and port.hal.vcore_set == 1200
    client.reset_chain()
    assert port.hal.resets == 1
    assert client.heartbeat().bridge_state == "active"
    assert client.info()["family"] == "BM1370"


def test_lost_reply_is_retried_without_acting_twice(rig):
    client, port = rig
    port.drop = 1
    client.reset_chain()
    assert port.hal.resets == 1 and port.writes == 2 and client.timeouts == 1


def test_no_reply_raises_board_link_error(rig):
    client, port = rig
    port.drop = 10
    with pytest.raises(BoardLinkError, match="no reply"):
        client.heartbeat()
    assert port.writes == 3


def test_error_reply_raises_with_the_reason(rig):
    client, _ = rig
    with pytest.raises(BoardLinkError, match="out_of_range"):
        client.set_vcore_mv(3000)
    with pytest.raises(BoardLinkError):
        client.set_fan_pct(101)


def test_garbage_before_replies_is_skipped(rig):
    client, port = rig
    port.garbage = b"\xa5\x5a\x10\xff\x00\xaa"
    for _ in range(5):
        assert client.heartbeat().bridge_state == "active"


def test_trip_is_reported_in_samples_and_events(rig):
    client, port = rig
    client.set_chain_power(True)
    port.hal.chip_temps = [950, 500]
    s = client.read_sample()
    assert s.bridge_state == "tripped" and s.trip_reason == "chip_over_temp" and not s.chain_powered
    assert [e[1:] for e in client.events] == [("tripped", "chip_over_temp")]
    with pytest.raises(BoardLinkError, match="tripped"):
        client.set_chain_power(True)


def test_closed_port_is_a_board_link_error():
    class Broken:
        def write(self, data):
            raise OSError(5, "port closed")

        def read(self, n=1):
            return b""

    with pytest.raises(BoardLinkError, match="port failed"):
        BoardClient(Broken(), clock=FakeClock()).heartbeat()


def test_bad_path_is_a_board_link_error():
    with pytest.raises(BoardLinkError, match="cannot open"):
        BoardClient("/nonexistent/tty")


def test_a_port_that_cannot_be_opened_is_a_config_error_naming_it():
    with pytest.raises(ConfigError, match=r"chain port /nonexistent/tty: cannot open \("):
        open_port("/nonexistent/tty", "chain", 115200, 0.05)


def test_a_pyserial_url_opens_with_the_given_rate_and_timeouts():
    port = open_port("loop://", "board", 9600, 0.02)
    try:
        assert (port.baudrate, port.timeout, port.write_timeout) == (9600, 0.02, 2.0)
        port.write(b"\xaa\x55")
        assert port.read(2) == b"\xaa\x55"
    finally:
        port.close()


def test_a_latched_trip_is_acknowledged_without_powering_the_chain(rig):
    client, port = rig
    client.set_chain_power(True)
    port.hal.chip_temps = [950, 500]
    assert client.read_sample().trip_reason == "chip_over_temp"
    with pytest.raises(BoardLinkError, match="tripped"):  # still too hot
        client.clear_trip("chip_over_temp")
    port.hal.chip_temps = [600, 500]
    st = client.clear_trip("chip_over_temp")
    assert (st.bridge_state, st.trip_reason) == ("active", None)
    s = client.read_sample()
    assert (s.bridge_state, s.chain_powered) == ("active", False)


def test_an_uptime_that_goes_backwards_is_a_restarted_bridge_reported_once(rig):
    client, port = rig
    client.clock.advance(30.0)
    client.heartbeat()
    assert client.take_reboot() is None
    port.bridge = Bridge(port.uart, port.hal, None,
                         lambda: int(client.clock.monotonic() * 1000))  # the MCU restarted
    client.clock.advance(1.0)
    client.read_sample()
    why = client.take_reboot()
    assert why is not None and "restarted" in why and client.reboots == 1
    assert client.take_reboot() is None
    client.clock.advance(1.0)
    client.heartbeat()
    assert client.take_reboot() is None and client.reboots == 1


def test_last_good_sample_time_is_kept(rig):
    client, port = rig
    assert client.last_sample_s is None
    client.read_sample()
    t = client.last_sample_s
    assert t is not None and t == client.clock.monotonic()
    port.drop = 3  # no reply: the sample time stays
    with pytest.raises(BoardLinkError):
        client.read_sample()
    assert client.last_sample_s == t


class VanishingPort(FakePort):
    """A port whose device can vanish (every call raises, as pyserial does for an unplugged
    adapter or a pty whose other side is gone)."""

    def __init__(self, clock):
        super().__init__(clock)
        self.gone = False
        self.closed = False

    def write(self, data):
        if self.gone:
            raise OSError(5, "Input/output error")
        return super().write(data)

    def close(self):
        self.closed = True


def test_a_vanished_port_is_reopened_with_a_back_off_and_logged_once(caplog):
    clock = FakeClock()
    ports = [VanishingPort(clock)]
    attempts = []

    def reopen():
        attempts.append(clock.monotonic())
        if len(attempts) < 4:
            raise BoardLinkError("board port /dev/ttyACM0: cannot open (No such file)")
        ports.append(VanishingPort(clock))
        return ports[-1]

    client = BoardClient(ports[0], timeout_s=0.1, clock=clock, reopen=reopen)
    client.heartbeat()
    ports[0].gone = True
    t0 = clock.monotonic()
    with caplog.at_level("INFO", logger="gridminer.board"):
        with pytest.raises(BoardLinkError, match="port failed"):
            client.heartbeat()
        assert ports[0].closed and client.link_down
        for _ in range(300):  # five requests a second until it is back
            clock.advance(0.2)
            try:
                client.read_sample()
                break
            except BoardLinkError as exc:
                assert "port down" in str(exc)
    assert len(ports) == 2 and not client.link_down and client.reopens == 1
    # back-off 0.5, 1, 2, 4 s between the attempts, not one a request
    gaps = [b - a for a, b in zip([t0, *attempts], attempts, strict=False)]
    assert gaps == pytest.approx([0.5, 1.0, 2.0, 4.0], abs=0.25)
    assert client.last_sample_s == clock.monotonic()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) <= 3, lines  # lost, (at most one "still down"), back
    assert "port failed" in lines[0] and "reopened" in lines[-1]


def test_the_client_closes_a_port_it_may_reopen():
    clock = FakeClock()
    port = VanishingPort(clock)
    BoardClient(port, clock=clock, reopen=lambda: port).close()
    assert port.closed
    other = VanishingPort(clock)
    BoardClient(other, clock=clock).close()  # the caller's port: the caller closes it
    assert not other.closed


def test_a_probe_is_one_attempt_so_a_silent_board_costs_one_time_out(rig):
    client, port = rig  # 0.1 s per attempt, 2 retries for the other requests
    port.drop = 100
    t0 = client.clock.monotonic()
    with pytest.raises(BoardLinkError, match=r"no reply in 1 x 0\.10 s"):
        client.probe_sample()
    assert port.writes == 1 and client.clock.monotonic() - t0 < 2 * client.timeout_s
    t0 = client.clock.monotonic()
    with pytest.raises(BoardLinkError, match=r"no reply in 1 x 0\.04 s"):
        client.probe_sample(timeout_s=0.04)  # a shorter wait; never a longer one
    assert port.writes == 2 and client.clock.monotonic() - t0 < 0.04 + 0.03
    port.drop = 0
    assert client.probe_sample().bridge_state in ("idle", "active")


def test_the_control_loop_reads_a_silent_board_at_one_time_out_a_tick():
    """The runtime's board link reads with the probe: while the board answers nothing, no tick
    is held up for more than one attempt's time-out, and none at all while it is only probed."""
    clock = FakeClock()
    port = FakePort(clock)
    client = BoardClient(port, timeout_s=0.1, retries=2, clock=clock)
    board_link = BoardLink(client, clock, RuntimeCounters(),
                           AlertLog(logging.getLogger("test"), clock), period_s=0.1, stale_s=1.0)
    assert board_link.read(clock.monotonic()) is not None
    port.drop = 10_000
    costs: list[float] = []
    for _ in range(40):  # 4 s of ticks: the sample goes stale, the link is then only probed
        t0 = clock.monotonic()
        assert board_link.read(t0) is None
        costs.append(clock.monotonic() - t0)
        board_link.end_tick()
        clock.advance(0.1)
    assert max(costs) <= 1.5 * 0.1 + 0.02  # PROBE_WAIT_PERIODS, and one read of the port
    assert not board_link.fresh and costs.count(0.0) > 10  # probed, not read every tick
