"""What the runtime offers the other parts (agent/control/runtime.py): `fail()` from another
thread's callback, the grid link's state in the status line, and a control tick that keeps its
pace while the grid session works through a burst of commands."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

from test_driver_runtime import make, run_for

from agent.control.runtime import GovernorSink


def test_fail_stops_the_run_idles_the_chain_and_returns_its_code():
    clock, _port, board, driver, rt, _lines, closed, _cfg = make()
    run_for(rt, clock, 5.0)
    assert driver.hashing
    rt.fail("grid: another client holds dev-1", 3)
    rt.fail("a later failure", 4)  # the first one is the one reported
    assert rt.run() == 3
    assert rt.error == "grid: another client holds dev-1"
    assert board.calls[-1] == ("power", False) and driver.state == "down"
    assert closed == ["ports"]


class LinkedSession:
    def __init__(self, state: str) -> None:
        self.link = SimpleNamespace(state=state)

    def service(self, now_s: float | None = None) -> float:
        return 1.0


def test_status_line_shows_the_grid_link_state_when_a_session_is_attached():
    clock, _port, _board, _driver, rt, lines, _closed, _cfg = make(grid=LinkedSession("up"))
    run_for(rt, clock, 1.5)
    assert lines and "grid=up" in lines[-1]
    rt.grid.link.state = "taken over"
    assert 'grid="taken over"' in rt.status_line(clock.monotonic())
    clock2, _p, _b, _d, rt2, _l, _c, _cfg2 = make()
    assert "grid=" not in rt2.status_line(clock2.monotonic())


class StormSession:
    """A grid session that, once armed, handles `n` accepted commands in one pass, each with a
    persisted state write of `write_s` (the fake clock moves on) before it reaches the sink."""

    def __init__(self, clock, n: int, write_s: float) -> None:
        self.clock, self.n, self.write_s = clock, n, write_s
        self.sink: GovernorSink | None = None
        self.armed = False

    def service(self, now_s: float | None = None) -> float:
        if self.armed and self.sink is not None:
            self.armed = False
            max_w = self.sink.governor.caps()["max_w"]
            for i in range(self.n):
                self.clock.advance(self.write_s)
                self.sink.apply("setpoint", (0.4 + 0.2 * (i % 2)) * max_w, None)
        return 1.0


def test_a_burst_of_commands_does_not_hold_up_the_control_tick():
    session = StormSession(None, n=40, write_s=0.05)
    clock, _port, _board, _driver, rt, _lines, _closed, _cfg = make(grid=session)
    session.clock = clock
    session.sink = GovernorSink(rt.governor, on_apply=rt.request_tick)
    ticks: list[float] = []
    tick = rt.tick

    def timed(now: float):
        ticks.append(clock.monotonic())
        return tick(now)

    rt.tick = timed  # type: ignore[method-assign]
    run_for(rt, clock, 5.0)
    session.armed = True
    rt.notify_grid()
    run_for(rt, clock, 3.0)
    gaps = [b - a for a, b in itertools.pairwise(ticks)]
    assert max(gaps) <= 3 * rt.period_s + 1e-9, max(gaps)


def test_a_bridge_that_restarted_makes_the_runtime_bring_board_and_chain_up_again():
    """The board client notices a bridge whose uptime went backwards; the runtime then forgets
    what the bridge had confirmed (it forgot it too) and re-initialises the chain."""
    clock, _port, board, driver, rt, _lines, _closed, _cfg = make()
    run_for(rt, clock, 5.0)
    assert driver.hashing and rt.board_link.chain_on is True
    board.take_reboot = lambda: "the bridge restarted (uptime 812 s -> 3 s)"
    calls_before = len(board.calls)
    rt.tick(clock.monotonic())
    board.take_reboot = lambda: None
    assert driver.state in ("down", "idle", "starting")  # aborted: brought up again as asked
    run_for(rt, clock, 10.0)
    assert driver.hashing
    assert ("power", True) in board.calls[calls_before:]  # the chain power was asked for again
