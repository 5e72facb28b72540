"""Agent restart with the chain hashing: the new agent takes the running chain over without a
reset and moves its load at the ramp limit from where it is, or, when it is not what the config
says, winds it down at the ramp while the control loop runs and brings it up cold (agent/app.py
take_over, takeover.read_running_chain, ChainDriver.adopt/wind_down_running, Governor.adopt,
Runtime.adopt, GridSession hot start).
"""

from __future__ import annotations

import itertools
import random

import pytest
from driver_fake import EASY, FakeChainPort
from test_driver_runtime import FakeBoard, make, run_for
from test_grid_policy import KEY, FakeLink, FakeSink, Rig

from agent.app import detect_chain, find_running_chain, take_over, wind_down_for
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
    assert take_over(cfg2, running, sample, clock, driver, governor, rt)
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


SLOW_RAMP_W_S = 2.0


def restart_on_a_chain_addressed_by_another(ramp_w_s: float = SLOW_RAMP_W_S):
    """A chain mining at 25 W whose chips another firmware addressed (0, 2, 4, 6), and a new
    agent configured for it (4 x BM1370) with a slow ramp, its running chain found: it cannot be
    taken over (the addresses), but a reset and a cold bring-up make it what the config says."""
    clock, port, board, _cfg = running_chain(25.0)
    for i, chip in enumerate(port.chips):
        chip.address = 2 * i
    raw = {"chain": {"port": "x", "chips": 4, "family": "BM1370", "ticket_difficulty": 256},
           "board": {"port": "y"}, "envelope": {"ramp_max_w_s": ramp_w_s}}
    cfg, driver, governor, rt = restart(clock, port, board, config_from_mapping(raw))
    driver.wind_down = wind_down_for(governor)  # as agent.app wires it
    sample, running = find_running_chain(cfg, port, board, clock)
    assert running is not None and "addresses [0, 2, 4, 6]" in running.problem("BM1370", 4)
    return clock, port, board, cfg, driver, governor, rt, sample, running


def test_a_running_chain_unlike_the_config_is_wound_down_while_the_loop_ticks_then_brought_up():
    """The wind-down is the driver's (state "winding", a step per pass of the control loop), not
    a wait before the loop starts: control ticks (envelope checks, telemetry, acks) go on all
    along, the true power falls no faster than the ramp, and only then is the chain reset and
    brought up cold with the configured chips, its power never cut."""
    clock, port, board, cfg, driver, governor, rt, sample, running = \
        restart_on_a_chain_addressed_by_another()
    f0, p0 = port.freq_mhz, sample.power_w
    assert f0 > 100 and p0 > 10.0
    ticks: list[float] = []
    rt.on_tick.append(ticks.append)
    resets, calls = port.resets, len(board.calls)
    t0 = clock.monotonic()
    assert not take_over(cfg, running, sample, clock, driver, governor, rt)
    assert clock.monotonic() == t0  # nothing waited before the loop
    assert driver.state == "winding" and governor.mode == "mining"
    for chip in range(4):  # nonces for the previous agent's jobs: not this agent's to judge
        port.emit_nonce(chip)
    trace, freqs, winding_snaps = [(t0, p0)], [f0], []
    while port.resets == resets:
        assert clock.monotonic() < t0 + 120.0, f"no reset; driver {driver.state}"
        freqs.append(port.freq_mhz)
        run_for(rt, clock, 0.05)
        trace.append((clock.monotonic(), board.read_sample().power_w))
        if driver.state == "winding":
            winding_snaps.append(rt.snapshot())
    t_reset = clock.monotonic()
    # the ticks went on from the start: no gap over 3 control periods
    gaps = [b - a for a, b in itertools.pairwise([t0, *ticks])]
    assert ticks and max(gaps) <= 3 * rt.period_s + 1e-9, max(gaps)
    # down at the ramp, slowly, to the reset clock before the reset
    assert freqs[-1] == pytest.approx(50.0) and freqs == sorted(freqs, reverse=True)
    assert worst_step_per_s(trace) <= SLOW_RAMP_W_S + 0.01 * cfg.envelope.max_power_w
    assert t_reset - t0 > 0.8 * (p0 - trace[-2][1]) / SLOW_RAMP_W_S
    # what telemetry said meanwhile: measured power, and why the load comes down
    assert len(winding_snaps) > 20
    assert {snap["mode"] for snap in winding_snaps} == {"mining"}
    assert "running chain cannot be taken over" in winding_snaps[-1]["mode_reason"]
    assert "addresses" in winding_snaps[-1]["mode_reason"]
    assert winding_snaps[0]["power_w"] == pytest.approx(p0, abs=0.5)
    figures = driver.stats(clock.monotonic())
    assert figures.hw_errors == figures.unattributed == figures.valid == 0
    # then the cold bring-up with the configured chips; the chain's power was never cut
    while not driver.hashing:
        assert clock.monotonic() < t_reset + 10.0, f"not up; driver {driver.state}"
        run_for(rt, clock, 0.05)
    assert driver.addresses == [0, 64, 128, 192] == [c.address for c in port.chips]
    assert ("power", False) not in board.calls[calls:] and board.powered
    assert not driver.foreign and driver.reset_pending is None
    run_for(rt, clock, 3.0)
    assert governor.mode == "mining" and len(port.jobs) >= 1


def test_standby_while_winding_down_cuts_the_chain_power_only_at_the_reset_clock():
    """A standby (a command persisted before the restart) while the driver winds a running chain
    down: the governor's reference reaches its floor long before the chips' clock does, but the
    chain is powered off only once they run at their reset clock; the load falls at the ramp."""
    clock, port, board, cfg, driver, governor, rt, sample, running = \
        restart_on_a_chain_addressed_by_another()
    take_over(cfg, running, sample, clock, driver, governor, rt)
    governor.standby()
    trace = [(clock.monotonic(), sample.power_w)]
    end = clock.monotonic() + 120.0
    while board.powered:
        assert clock.monotonic() < end, f"not powered off; driver {driver.state}"
        freq = port.freq_mhz
        run_for(rt, clock, 0.05)
        trace.append((clock.monotonic(), board.read_sample().power_w))
    assert freq == pytest.approx(50.0)  # the clock the chips ran at when the power went
    assert worst_step_per_s(trace[:-1]) <= SLOW_RAMP_W_S + 0.01 * cfg.envelope.max_power_w
    run_for(rt, clock, 1.0)
    assert governor.mode == "standby" and not board.powered


def test_a_board_link_lost_while_winding_down_trips_and_the_chain_comes_back_cold():
    """The board link dies in the middle of the wind-down: the measurement goes stale, the
    envelope trips (the one exception to the ramp) and the driver forgets the chain: no more
    frames to it. Once the board answers again the chain is powered off, and after the trip's
    hold brought up cold with the configured chips."""
    clock, port, board, cfg, driver, governor, rt, sample, running = \
        restart_on_a_chain_addressed_by_another()
    take_over(cfg, running, sample, clock, driver, governor, rt)
    run_for(rt, clock, 1.0)
    assert driver.state == "winding"
    board.fail = {"all"}
    end = clock.monotonic() + 3.0 * cfg.envelope.sensor_stale_s + 1.0
    while driver.state != "down":
        assert clock.monotonic() < end, f"no trip; driver {driver.state}"
        run_for(rt, clock, 0.05)
    assert rt.actuation.mode == "tripped"
    written = len(port.written)
    run_for(rt, clock, 2.0)
    assert len(port.written) == written  # the chain is forgotten: nothing more sent to it
    board.fail = set()
    end = clock.monotonic() + cfg.envelope.trip_hold_s + 20.0
    while not driver.hashing:
        assert clock.monotonic() < end, f"not back; driver {driver.state} {rt.actuation.mode}"
        run_for(rt, clock, 0.05)
    assert ("power", False) in board.calls and board.powered
    assert driver.addresses == [0, 64, 128, 192] == [c.address for c in port.chips]


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
    assert not take_over(cfg, running, board.read_sample(), clock, driver, governor, rt)
    assert len(port.written) == written and not driver.adopted
