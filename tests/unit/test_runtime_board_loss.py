"""A board link that stops answering (agent/control/runtime.py): the agent trips, says why, reports
no stale measurement as current, logs a little, and the control thread keeps its pace."""

from __future__ import annotations

import logging

from test_driver_runtime import make, run_for

MEASURED = ("power_w", "vcore_mv", "temp_c", "board_temp_c", "fan_pct")


def test_a_lost_board_is_tripped_and_its_last_measurement_is_not_reported():
    clock, _port, board, _driver, rt, _lines, _closed, _cfg = make()
    run_for(rt, clock, 5.0)
    snap = rt.snapshot()
    assert snap["power_w"] > 0 and snap["board"] == "ok"
    assert "board=ok" in rt.status_line(clock.monotonic())
    board.fail = {"all"}
    run_for(rt, clock, 3.0)
    snap = rt.snapshot()
    assert snap["mode"] == "tripped"
    assert {k: snap[k] for k in MEASURED} == dict.fromkeys(MEASURED)
    assert snap["board"] == "lost" and snap["mode_reason"].startswith("sensor_stale")
    line = rt.status_line(clock.monotonic())
    assert "mode=tripped" in line and "power=-" in line and "hottest=-" in line
    assert "board=lost" in line and "sensor_stale" in line
    # the board answers again: measurements are current again at once
    board.fail = set()
    run_for(rt, clock, 0.5)
    snap = rt.snapshot()
    assert snap["board"] == "ok" and snap["power_w"] is not None


def test_a_lost_board_is_logged_once_not_every_few_seconds(caplog):
    clock, _port, board, _driver, rt, _lines, _closed, _cfg = make()
    run_for(rt, clock, 5.0)
    caplog.clear()
    board.fail = {"all"}
    with caplog.at_level(logging.INFO, logger="gridminer"):
        run_for(rt, clock, 60.0)
        board.fail = set()
        run_for(rt, clock, 1.0)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert 1 <= len(warnings) <= 4, [r.getMessage() for r in warnings]
    assert any("board link" in r.getMessage() and "back" in r.getMessage()
               for r in caplog.records)


def test_a_dead_board_link_costs_the_control_thread_one_time_out_per_probe():
    clock, _port, board, _driver, rt, _lines, _closed, _cfg = make()
    run_for(rt, clock, 5.0)
    board.fail, board.fail_cost_s = {"all"}, 0.15  # BoardClient.probe_sample: 1.5 periods
    failed_before = len([c for c in board.calls if c[0].endswith("_failed")])
    ticks_before = rt.counters.ticks
    run_for(rt, clock, 30.0)
    failed = len([c for c in board.calls if c[0].endswith("_failed")]) - failed_before
    # reads until the sample is stale (1 s: at most 7 of 0.15 s), then probes 1, 2, 4, 5, 5, ...
    # s apart (8 in 29 s); nothing else is tried meanwhile
    assert failed <= 15
    # the rest of the time the loop ticks at its period: governor, grid and telemetry go on
    assert rt.counters.ticks - ticks_before >= 200
    board.fail = set()
    run_for(rt, clock, 6.0)
    assert rt.board_fresh and rt.counters.ticks - ticks_before >= 250


def test_a_read_that_times_out_now_and_then_is_no_lost_board(caplog):
    clock, _port, board, _driver, rt, _lines, _closed, _cfg = make()
    run_for(rt, clock, 5.0)
    board.fail_cost_s = 0.15
    with caplog.at_level(logging.INFO, logger="gridminer"):
        for _ in range(5):
            board.fail_once = {"read"}
            run_for(rt, clock, 2.0)
    assert rt.actuation.mode == "mining" and rt.snapshot()["board"] == "ok"
    assert rt.counters.board_errors == 5
    assert not [r for r in caplog.records if "board link lost" in r.getMessage()]
