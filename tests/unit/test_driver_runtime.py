"""The control loop: board samples, governor, actuation, grid session, stop
(agent/control/runtime.py)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from driver_fake import EASY, FakeChainPort

from agent.chain.board import BoardSample as Sample
from agent.chain.driver import ChainDriver
from agent.chain.settings import ChainSettings
from agent.chain.work import LocalWorkSource
from agent.clock import FakeClock
from agent.config import config_from_mapping
from agent.control.governor import Governor
from agent.control.runtime import GovernorSink, Runtime
from agent.errors import BoardLinkError


@dataclass
class FakeBoard:
    """Board link over a crude plant: power follows the chain's frequency. Answers like
    BoardClient (the applied value). `fail` names requests that fail with BoardLinkError ("read",
    "heartbeat", "fan", "vcore", "power", "reset" or "all"), each costing `fail_cost_s` of the
    fake clock (a time-out); `vcore_cap_mv` is the most the regulator applies."""

    clock: FakeClock
    chain: FakeChainPort
    temp_c: float = 50.0
    fail_reads: bool = False
    calls: list[tuple[str, object]] = field(default_factory=list)
    powered: bool = True
    vcore_mv: int = 1150
    fan_pct: int = 50
    rng: random.Random = field(default_factory=lambda: random.Random(1))
    fail: set[str] = field(default_factory=set)
    fail_once: set[str] = field(default_factory=set)  # ... the next time only
    fail_cost_s: float = 0.0
    vcore_cap_mv: int | None = None
    chip_temps: list[float | None] | None = None  # overrides the 4 chip readings (+ noise)

    def _check(self, name: str) -> None:
        once = name in self.fail_once
        self.fail_once.discard(name)
        if once or name in self.fail or (name == "read" and self.fail_reads) \
                or "all" in self.fail:
            self.calls.append((f"{name}_failed", None))
            self.clock.advance(self.fail_cost_s)
            raise BoardLinkError("timeout")

    def read_sample(self) -> Sample:
        self._check("read")
        f = self.chain.freq_mhz if self.powered else 0.0
        power = 2.0 + (4 * 0.04 * f * (self.vcore_mv / 1150) ** 2 if self.powered else 0.0)
        noise = self.rng.uniform(-0.05, 0.05)
        temps = [self.temp_c] * 4 if self.chip_temps is None else list(self.chip_temps)
        return Sample(self.clock.monotonic(), [None if t is None else t + noise for t in temps],
                      40.0 + noise, 50.0, 12.0, power / 12.0, power + noise, 3000,
                      self.fan_pct, self.vcore_mv, self.powered)

    def probe_sample(self, timeout_s: float | None = None) -> Sample:  # no retries to leave out
        return self.read_sample()

    def heartbeat(self) -> None:
        self._check("heartbeat")
        self.calls.append(("heartbeat", None))

    def set_fan_pct(self, pct: int) -> int:
        self._check("fan")
        self.calls.append(("fan", pct))
        self.fan_pct = pct
        return pct

    def set_vcore_mv(self, mv: int) -> int:
        self._check("vcore")
        self.calls.append(("vcore", mv))
        self.vcore_mv = mv if self.vcore_cap_mv is None else min(mv, self.vcore_cap_mv)
        return self.vcore_mv

    def set_chain_power(self, on: bool) -> bool:
        self._check("power")
        self.calls.append(("power", on))
        self.powered = on
        if not on:
            self.chain.reset()
        return on

    def reset_chain(self) -> None:
        self._check("reset")
        self.calls.append(("reset", None))
        self.chain.reset()

    def count(self, name: str) -> int:
        return sum(1 for n, _ in self.calls if n == name)


def make(chips: int = 4, target_w: float | None = None, grid=None,
         envelope: dict[str, Any] | None = None):
    clock = FakeClock()
    port = FakeChainPort("BM1370", chips)
    raw: dict[str, Any] = {"chain": {"port": "x", "chips": chips, "ticket_difficulty": 256,
                                     "freq_step_mhz": 25.0, "freq_step_interval_s": 0.01},
                           "board": {"port": "y"}, "governor": {},
                           "log": {"status_period_s": 1.0}}
    if target_w is not None:
        raw["governor"]["default_target_w"] = target_w
    if envelope:
        raw["envelope"] = dict(envelope)
    cfg = config_from_mapping(raw)
    board = FakeBoard(clock, port)
    settings = ChainSettings.from_config(cfg.chain, cfg.envelope, nonce_difficulty=EASY)
    driver = ChainDriver(port, settings, clock, LocalWorkSource(clock), board=board,
                         threaded=False)
    lines: list[str] = []
    closed: list[str] = []
    rt = Runtime(clock, driver, board, Governor(cfg, clock), grid=grid, period_s=0.1,
                 status_period_s=1.0, status_out=lines.append,
                 on_stop=[lambda: closed.append("ports")])
    return clock, port, board, driver, rt, lines, closed, cfg


def run_for(rt: Runtime, clock: FakeClock, seconds: float) -> None:
    end = clock.monotonic() + seconds
    while clock.monotonic() < end:
        now = clock.monotonic()
        rt.service(now)
        clock.advance(max(0.001, min(rt.next_deadline_s(now) - now, 0.05)))


def test_start_powers_the_chain_brings_it_up_and_tracks_the_target():
    clock, _port, board, driver, rt, lines, _, cfg = make()
    run_for(rt, clock, 0.05)
    assert ("power", True) in board.calls
    assert board.count("reset") == 1
    run_for(rt, clock, 10.0)
    assert driver.hashing
    assert rt.actuation.mode == "mining"
    # the governor drives the frequency, the driver follows it
    assert driver.target_freq_mhz == driver.requested_freq_mhz
    assert driver.freq_mhz == rt.actuation.freq_mhz
    assert cfg.envelope.min_freq_mhz <= driver.freq_mhz <= cfg.envelope.max_freq_mhz
    # writes only on change: far fewer than one per tick
    assert rt.counters.ticks >= 95
    assert board.count("fan") < rt.counters.ticks / 2
    assert board.count("vcore") < rt.counters.ticks / 2
    assert 15 <= board.count("heartbeat") <= 25  # every 0.5 s
    assert len(lines) >= 9 and "mode=mining" in lines[-1] and "power=" in lines[-1]


def test_lower_target_lowers_frequency():
    clock, _port, _board, driver, rt, _, _, cfg = make()
    run_for(rt, clock, 8.0)
    high = driver.freq_mhz
    rt.governor.set_target(cfg.envelope.max_power_w * 0.3)
    run_for(rt, clock, 8.0)
    assert driver.freq_mhz < high


def test_board_read_errors_are_counted_and_the_loop_goes_on():
    clock, _port, board, driver, rt, _, _, _ = make()
    run_for(rt, clock, 3.0)
    board.fail_reads = True
    run_for(rt, clock, 3.0)
    assert rt.counters.board_errors >= 25
    # no fresh samples: the envelope trips on stale sensors and the chain is powered off
    assert rt.actuation.mode == "tripped"
    assert board.powered is False
    assert driver.state == "down"


def test_overtemperature_cuts_chain_power_at_once():
    clock, _port, board, driver, rt, _, _, cfg = make()
    run_for(rt, clock, 5.0)
    assert driver.hashing
    board.temp_c = cfg.envelope.max_chip_temp_hard_c + 1
    run_for(rt, clock, 0.15)
    assert board.powered is False and driver.state == "down"
    jobs = driver.jobs_sent
    run_for(rt, clock, 1.0)
    assert driver.jobs_sent == jobs


def test_stop_idles_the_chain_then_powers_it_off():
    clock, port, board, driver, rt, _, closed, _ = make()
    run_for(rt, clock, 5.0)
    assert driver.hashing and port.freq_mhz > 100
    rt.request_stop()
    assert rt.run() == 0
    assert port.resets >= 1
    assert driver.state == "down"
    names = [n for n, _ in board.calls]
    assert names[-1] == "power" and board.calls[-1] == ("power", False)
    assert closed == ["ports"]


def test_stop_ramps_down_before_cutting_power():
    clock, port, board, _driver, rt, _, _, _ = make()
    run_for(rt, clock, 5.0)
    seen: list[float] = []
    original = board.set_chain_power

    def record(on: bool) -> None:
        seen.append(port.freq_mhz)
        original(on)

    board.set_chain_power = record  # type: ignore[method-assign]
    rt.request_stop()
    rt.run()
    assert seen == [50.0]


def test_fatal_bring_up_ends_run_with_the_reason():
    clock, port, board, _driver, rt, _, _, _ = make()
    port.n = 2
    port.reset()
    for _ in range(500):  # three attempts, about a second each
        now = clock.monotonic()
        rt.service(now)
        clock.advance(0.02)
        if rt.error:
            break
    assert rt.exit_code == 1
    assert "expected 4 BM1370 chips" in (rt.error or "")
    assert board.count("reset") == 3


class FakeSession:
    def __init__(self) -> None:
        self.calls: list[float] = []

    def service(self, now_s: float | None = None) -> float:
        self.calls.append(now_s or 0.0)
        return 10.0


def test_grid_session_is_served_on_ticks_and_when_woken():
    session = FakeSession()
    clock, _port, _board, _driver, rt, _, _, _ = make(grid=session)
    run_for(rt, clock, 2.0)
    base = len(session.calls)
    assert 2 <= base <= 30  # at most every second between wake-ups
    rt.notify_grid()
    rt.service(clock.monotonic())
    assert len(session.calls) == base + 1


def test_governor_sink_maps_ops():
    _clock, _port, _board, _driver, rt, _, _, cfg = make()
    sink = GovernorSink(rt.governor)
    d = sink.apply("setpoint", cfg.envelope.max_power_w / 2, None)
    assert d.applied_w == cfg.envelope.max_power_w / 2 and d.limited_by is None
    assert sink.apply("setpoint", 1.0, None).limited_by == "caps"  # below the minimum load
    assert sink.apply("curtail", None, None).op == "curtail"
    assert sink.apply("standby", None, None).op == "standby"
    assert sink.apply("resume", None, None).op == "resume"
    assert sink.caps()["chips"] == 4


def test_snapshot_has_the_telemetry_fields():
    clock, _port, _board, _driver, rt, _, _, _ = make()
    run_for(rt, clock, 3.0)
    snap = rt.snapshot()
    from agent.grid.telemetry import SNAPSHOT_FIELDS

    assert set(SNAPSHOT_FIELDS) <= set(snap)
    assert snap["energy_wh"] > 0 and snap["chips_ok"] == 4


def test_chain_cut_by_the_bridge_is_powered_on_and_brought_up_again():
    clock, port, board, driver, rt, _, _, _ = make()
    run_for(rt, clock, 5.0)
    assert driver.hashing
    board.powered = False  # the bridge firmware idled the chain on its own
    port.reset()
    run_for(rt, clock, 3.0)
    assert board.calls.count(("power", True)) == 2
    assert board.powered and driver.hashing
    assert port.resets >= 3


def test_a_grid_command_is_acted_on_at_once_not_at_the_next_period():
    clock, _port, _board, _driver, rt, _, _, cfg = make()
    run_for(rt, clock, 3.0)
    sink = GovernorSink(rt.governor, on_apply=rt.request_tick)

    def ticks_within(seconds: float) -> int:
        before = rt.counters.ticks
        end = clock.monotonic() + seconds
        while clock.monotonic() < end:
            clock.advance(0.001)
            rt.service(clock.monotonic())
        return rt.counters.ticks - before

    rt.service(clock.monotonic())
    while ticks_within(0.001) == 0:  # line up just after a periodic tick
        pass
    assert ticks_within(0.005) == 0  # nothing asked: the next tick is a period away
    sink.apply("setpoint", cfg.envelope.max_power_w / 2, None)
    assert ticks_within(0.005) == 1  # a command: the governor acts on it within milliseconds


def test_after_a_chip_fault_the_load_climbs_back_from_the_reset_not_from_the_floor():
    """A flaky chip: the governor brings the load to its floor, the driver winds the clock down
    to the reset clock (the control loop ticking on) and resets the chain; the governor's
    reference starts over at the reset, so the load the chain comes back with climbs at the
    ramp from there instead of jumping to the floor's."""
    from agent.app import wind_down_for

    ramp = 10.0
    clock, port, board, driver, rt, _lines, _closed, _cfg = make(
        target_w=60.0, envelope={"ramp_max_w_s": ramp})
    driver.wind_down = wind_down_for(rt.governor)
    run_for(rt, clock, 25.0)  # past the driver's dead_min_s: chip faults are judged
    assert driver.state == "mining"
    resets = board.count("reset")
    for _ in range(16):
        port.emit_nonce(1, valid=False)
    states: set[str] = set()
    end = clock.monotonic() + 60.0
    while board.count("reset") == resets:
        assert clock.monotonic() < end, f"no reset; driver {driver.state}"
        run_for(rt, clock, 0.01)
        states.add(driver.state)
    t_reset = clock.monotonic()
    assert "winding" in states and rt.actuation.mode == "mining"
    while not driver.hashing:
        assert clock.monotonic() < t_reset + 10.0
        run_for(rt, clock, 0.01)
    run_for(rt, clock, 0.1)  # a tick with the chain hashing again
    assert rt.actuation.target_w <= ramp * (clock.monotonic() - t_reset) + 0.5
