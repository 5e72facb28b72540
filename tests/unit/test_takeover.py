"""Agent restart with the chain hashing: the new agent takes the running chain over without a
reset and moves its load at the ramp limit from where it is (agent/app.py take_over,
takeover.read_running_chain/wind_down, ChainDriver.adopt, Governor.adopt, Runtime.adopt,
GridSession hot start).
"""

from __future__ import annotations

import random

import pytest
from driver_fake import EASY, FakeChainPort
from test_driver_runtime import FakeBoard, make, run_for
from test_grid_policy import KEY, FakeLink, FakeSink, Rig

from agent.app import detect_chain, find_running_chain, take_over
from agent.chain.driver import ChainDriver
from agent.chain.settings import ChainSettings
from agent.chain.takeover import probe_chain, read_running_chain
from agent.chain.work import LocalWorkSource
from agent.clock import FakeClock
from agent.config import config_from_mapping
from agent.control.governor import Governor
from agent.control.runtime import Runtime
from agent.grid.session import GridPolicy, GridSession


def restart(clock: FakeClock, port: FakeChainPort, board: FakeBoard, cfg, target_w=None):
    """A new agent on the same board and chain (the old one was killed: no shutdown)."""
    if target_w is not None:
        raw = {"chain": {"port": "x", "chips": cfg.chain.chips, "ticket_difficulty": 256,
                         "freq_step_mhz": 25.0, "freq_step_interval_s": 0.01},
               "board": {"port": "y"}, "governor": {"default_target_w": target_w}}
        cfg = config_from_mapping(raw)
    settings = ChainSettings.from_config(cfg.chain, cfg.envelope, nonce_difficulty=EASY)
    driver = ChainDriver(port, settings, clock, LocalWorkSource(clock), board=board,
                         threaded=False)
    governor = Governor(cfg, clock)
    rt = Runtime(clock, driver, board, governor, period_s=0.1, status_period_s=0,
                 status_out=lambda _line: None)
    return cfg, driver, governor, rt


def powers_while(rt: Runtime, clock: FakeClock, board: FakeBoard, seconds: float) -> list:
    out = []
    end = clock.monotonic() + seconds
    while clock.monotonic() < end:
        run_for(rt, clock, 0.05)
        out.append((clock.monotonic(), board.read_sample().power_w))
    return out


def worst_step_per_s(trace: list) -> float:
    worst = 0.0
    for i, (t0, p0) in enumerate(trace):
        for t1, p1 in trace[i + 1:]:
            if t1 - t0 > 1.0 + 1e-9:
                break
            worst = max(worst, abs(p1 - p0))
    return worst


def running_chain(target_w: float = 25.0):
    clock, port, board, driver, rt, _lines, _closed, cfg = make(target_w=target_w)
    run_for(rt, clock, 15.0)
    assert driver.state == "mining" and port.freq_mhz > 100
    return clock, port, board, cfg


def test_a_running_chain_is_taken_over_without_a_reset_and_moves_at_the_ramp():
    clock, port, board, cfg = running_chain(25.0)
    f0, p0 = port.freq_mhz, board.read_sample().power_w
    resets = port.resets
    cfg2, driver, governor, rt = restart(clock, port, board, cfg, target_w=10.0)
    sample, running = find_running_chain(cfg2, port, board, clock)
    assert running is not None and running.count == 4
    assert running.freq_mhz == pytest.approx(f0)
    assert running.problem("BM1370", 4) is None
    calls = len(board.calls)
    assert take_over(cfg2, running, sample, port, board, clock, driver, governor, rt)
    assert driver.hashing and driver.adopted and governor.mode == "mining"
    trace = [(clock.monotonic(), p0), *powers_while(rt, clock, board, 8.0)]
    assert port.resets == resets  # no reset, no power cycle
    assert ("power", True) not in board.calls[calls:]
    assert ("reset", None) not in board.calls[calls:]
    assert driver.addresses == [0, 64, 128, 192] and driver.hashing
    ramp = cfg2.envelope.ramp_max_w_s
    assert worst_step_per_s(trace) <= ramp + 0.01 * cfg2.envelope.max_power_w
    # it went from where the load was down toward the new target, and keeps hashing
    assert trace[-1][1] < p0 - 2.0
    assert len(port.jobs) >= 1


def test_a_fresh_chain_is_not_mistaken_for_a_running_one():
    port = FakeChainPort("BM1370", 4)
    assert read_running_chain(port, FakeClock(), "BM1370") is None
    assert port.baudrate == 115200  # left as it was for the cold bring-up


def test_detection_on_a_running_chain_lists_it_without_a_reset():
    clock, port, board, _cfg = running_chain()
    resets = port.resets
    found = probe_chain(port, clock, None, board)
    assert (found.family, found.count, found.addresses) == ("BM1370", 4, (0, 64, 128, 192))
    assert found.running is not None and port.resets == resets
    open_cfg = config_from_mapping({"chain": {"port": "x"}, "board": {"port": "y"}})
    _sample, running = find_running_chain(open_cfg, port, board, clock)
    cfg = detect_chain(open_cfg, port, board, clock, running)
    assert (cfg.chain.family, cfg.chain.chips) == ("BM1370", 4) and port.resets == resets


def test_a_running_chain_unlike_the_config_is_wound_down_at_the_ramp_before_a_reset():
    clock, port, board, _cfg = running_chain(25.0)
    raw = {"chain": {"port": "x", "chips": 3, "family": "BM1370"}, "board": {"port": "y"},
           "envelope": {"ramp_max_w_s": 2.0}}
    cfg3 = config_from_mapping(raw)
    _, driver, governor, rt = restart(clock, port, board, cfg3)
    sample, running = find_running_chain(cfg3, port, board, clock)
    assert running is not None and "3" in running.problem("BM1370", 3)
    trace = [(clock.monotonic(), board.read_sample().power_w)]
    real_sleep = clock.sleep

    def sleep(s: float) -> None:
        real_sleep(s)
        trace.append((clock.monotonic(), board.read_sample().power_w))

    clock.sleep = sleep  # type: ignore[method-assign]
    resets = port.resets
    assert not take_over(cfg3, running, sample, port, board, clock, driver, governor, rt)
    clock.sleep = real_sleep  # type: ignore[method-assign]
    assert port.freq_mhz == pytest.approx(50.0) and port.resets == resets
    assert worst_step_per_s(trace) <= 2.0 + 0.01 * cfg3.envelope.max_power_w
    assert trace[-1][0] - trace[0][0] > 2.0  # slow: the ramp, not a step


def test_hot_start_continues_the_default_without_curtail_or_spread(tmp_path) -> None:
    rig = Rig(tmp_path, spread_s=30.0)
    rig.session.start(hot=True)
    assert rig.session.hold_until_s is None
    assert rig.sink.calls == [("resume", None, None)]
    rig.tick(0.1)
    assert rig.sink.calls == [("resume", None, None)]


def test_hot_start_continues_the_persisted_active_command(tmp_path) -> None:
    rig = Rig(tmp_path)
    rig.tick()
    rig.send(seq=1, power_w=1800, validity_s=3600)
    rig.tick()
    rig.sink.calls.clear()
    session = GridSession(rig.link, rig.sink, {b"op-1": KEY.public_key()}, tmp_path, None,
                          GridPolicy(restart_spread_s=30.0), rig.clock, random.Random(2))
    session.start(hot=True)
    assert rig.sink.calls == [("setpoint", 1800, None)] and session.hold_until_s is None
    cold = GridSession(FakeLink(), FakeSink(), {b"op-1": KEY.public_key()}, tmp_path, None,
                       GridPolicy(restart_spread_s=30.0), FakeClock(), random.Random(2))
    cold.start()
    assert cold.hold_until_s is not None  # the cold start keeps its spread


def test_a_chain_answering_fast_at_its_reset_clock_is_brought_up_cold():
    """A lax UART (one unconfigured chip that answers at any rate) is not taken for a running
    chain: no takeover and no PLL writes."""
    clock = FakeClock()
    port = FakeChainPort("BM1370", 1)
    port.chip_baud = 1000000
    running = read_running_chain(port, clock, "BM1370")
    assert running is not None and "reset clock" in running.problem("BM1370", 1)
    cfg = config_from_mapping({"chain": {"port": "x", "family": "BM1370", "chips": 1},
                               "board": {"port": "y"}})
    board = FakeBoard(clock, port)
    _, driver, governor, rt = restart(clock, port, board, cfg)
    written = len(port.written)
    assert not take_over(cfg, running, board.read_sample(), port, board, clock, driver,
                         governor, rt)
    assert len(port.written) == written and not driver.adopted
