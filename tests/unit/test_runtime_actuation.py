"""Actuation that fails safe (agent/control/runtime.py): the frequency rises only on a core voltage
the board confirmed, and the next outputs start from what the bridge applied."""

from __future__ import annotations

from test_driver_runtime import make, run_for


def _supported_mhz(rt, vcore_mv: float) -> float:
    return rt.governor.curve.max_freq_mhz(vcore_mv)


def _low_then_full(seconds: float = 6.0):
    clock, port, board, driver, rt, _lines, _closed, cfg = make(target_w=None)
    rt.governor.set_target(cfg.envelope.max_power_w * 0.3)
    run_for(rt, clock, seconds)
    assert driver.hashing and rt.actuation.mode == "mining"
    return clock, port, board, driver, rt, cfg


def _watch(rt, clock, board, driver, seconds: float) -> float:
    """Run `seconds`; the largest excess of the frequency asked of the chain over what the
    regulator's applied voltage supports (MHz, <= 0 when never)."""
    worst = -1e9
    end = clock.monotonic() + seconds
    while clock.monotonic() < end:
        now = clock.monotonic()
        rt.service(now)
        worst = max(worst, driver.target_freq_mhz - _supported_mhz(rt, board.vcore_mv))
        clock.advance(max(0.001, min(rt.next_deadline_s(now) - now, 0.05)))
    return worst


def test_a_failed_voltage_write_leaves_the_frequency_where_it_is():
    clock, _port, board, driver, rt, cfg = _low_then_full()
    f_low, v_low = driver.target_freq_mhz, board.vcore_mv
    board.fail = {"vcore"}
    rt.governor.set_target(cfg.envelope.max_power_w)
    assert _watch(rt, clock, board, driver, 4.0) <= 1e-6
    # no higher than the voltage in force supports: a rounding step, not the way up
    assert driver.target_freq_mhz <= _supported_mhz(rt, v_low) + 1e-6
    assert driver.target_freq_mhz <= f_low + 5.0
    assert rt.counters.vcore_unconfirmed > 0 and rt.counters.board_write_errors > 0
    assert "vcore_first" in rt.actuation.limits
    # the board answers again: the voltage goes up first, the frequency follows
    board.fail = set()
    assert _watch(rt, clock, board, driver, 8.0) <= 1e-6
    assert driver.target_freq_mhz > f_low + 50


def test_a_voltage_the_bridge_applied_lower_than_asked_bounds_the_frequency():
    clock, _port, board, driver, rt, cfg = _low_then_full()
    board.vcore_cap_mv = board.vcore_mv + 10  # the regulator stops a little higher
    rt.governor.set_target(cfg.envelope.max_power_w)
    assert _watch(rt, clock, board, driver, 8.0) <= 1e-6
    assert rt.governor.envelope.last.vcore_mv <= board.vcore_cap_mv


def test_the_chain_is_not_powered_before_its_voltage_is_confirmed():
    clock, _port, board, driver, rt, _lines, _closed, _cfg = make()
    board.powered = False
    board.fail = {"vcore"}
    run_for(rt, clock, 3.0)
    assert ("power", True) not in board.calls
    assert not driver.hashing
    board.fail = set()
    run_for(rt, clock, 3.0)
    names = [n for n, _ in board.calls]
    assert names.index("vcore") < names.index("power") and driver.hashing


def test_an_unconfirmed_fan_holds_the_frequency():
    clock, _port, board, driver, rt, cfg = _low_then_full()
    board.fail = {"fan"}
    board.temp_c = cfg.governor.fan_target_temp_c + 3.0  # the fan loop wants more air
    run_for(rt, clock, 1.0)
    f_held = driver.target_freq_mhz
    rt.governor.set_target(cfg.envelope.max_power_w)
    run_for(rt, clock, 3.0)
    assert driver.target_freq_mhz <= f_held + 1e-6
    assert "fan_unconfirmed" in rt.actuation.limits
    board.fail = set()
    run_for(rt, clock, 5.0)
    assert driver.target_freq_mhz > f_held + 50
