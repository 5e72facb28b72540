"""A chip temperature channel that goes dark on a running board (agent/control/runtime.py with
the envelope): trips, limited retries, then the board stays idle and the status says why."""

from __future__ import annotations

from test_driver_runtime import make, run_for

from agent.control.envelope import SENSOR_TRIP_LIMIT


def test_a_dark_chip_channel_trips_retries_and_then_stays_tripped_saying_so():
    clock, _port, board, driver, rt, lines, _closed, _cfg = make(
        envelope={"sensor_frozen_s": 2.0, "trip_hold_s": 3.0})
    run_for(rt, clock, 5.0)
    assert driver.hashing
    board.chip_temps = [50.0, None, 50.0, 50.0]  # channel 1 reads nothing from now on
    run_for(rt, clock, 1.5)
    assert rt.actuation.mode == "mining"  # a missed read or two is no trip
    run_for(rt, clock, 1.0)
    assert rt.actuation.mode == "tripped" and not board.powered
    assert rt.snapshot()["mode_reason"].startswith("sensor_missing: chip_temps_c[1]")
    run_for(rt, clock, 120.0)  # hold, power-on, 2 s to read again: it does not, SENSOR_TRIP_LIMIT x
    env = rt.governor.envelope
    assert env.trips == SENSOR_TRIP_LIMIT and env.trip_final
    assert rt.actuation.mode == "tripped" and not board.powered
    assert board.calls.count(("power", True)) == SENSOR_TRIP_LIMIT  # the first, then 2 retries
    assert "stays tripped until the agent restarts" in lines[-1]
