"""The site allocator and the PI trim: pure rules, no MQTT, no clock."""

from __future__ import annotations

import pytest

from agent.site.allocate import Allocator, Unit
from agent.site.trim import PowerTrim


def fleet(n: int = 4, on: bool = True, **kw) -> list[Unit]:
    """n devices of 100..1000 W; d0 the most efficient (20 J/TH), each next one 5 J/TH worse."""
    return [Unit(f"d{i}", 100.0, 1000.0, 20.0 + 5 * i, on, **kw) for i in range(n)]


def test_less_power_than_capacity_goes_to_the_most_efficient_machines() -> None:
    units = fleet()[::-1]  # the order given does not matter
    shares = Allocator().allocate(units, 1500).shares_w
    assert shares == {"d0": 1000.0, "d1": 500.0, "d2": 0.0, "d3": 0.0}
    kept_on = Allocator(max_stops=0).allocate(units, 1500).shares_w  # all on: the rest at min
    assert kept_on == {"d0": 1000.0, "d1": 300.0, "d2": 100.0, "d3": 100.0}


def test_every_share_respects_its_device_caps() -> None:
    units = [Unit("a", 300, 800, 30, True), Unit("b", 50, 400, 20, True)]
    low = Allocator().allocate(units, 200)  # below both minimums together: the worse one stops
    assert low.shares_w == {"a": 0.0, "b": 200.0} and low.stopped == ("a",)
    high = Allocator().allocate(units, 5000)  # above the capacity: everyone at max
    assert high.shares_w == {"a": 800.0, "b": 400.0} and high.low_w == 3800


def test_devices_not_needed_are_stopped_worst_first_with_hysteresis() -> None:
    allocation = Allocator(hysteresis_w=1000).allocate(fleet(), 1500)
    # d3 and d2 are not needed: the rest still covers 1500 W with 1000 W to spare... only
    # while that holds; d1 stays on.
    assert allocation.stopped == ("d3",)
    assert allocation.shares_w["d3"] == 0.0 and allocation.shares_w["d2"] == 100.0
    assert Allocator(hysteresis_w=1000, max_stops=0).allocate(fleet(), 1500).stopped == ()


def test_start_ups_are_spread_best_first() -> None:
    units = fleet(6, on=False)
    first = Allocator(max_starts=2).allocate(units, 5000)
    assert first.started == ("d0", "d1")
    assert first.allocated_w == 2000  # the others wait for the next call
    now_on = [Unit(u.device, u.min_w, u.max_w, u.j_th, u.device in first.started)
              for u in units]
    second = Allocator(max_starts=2).allocate(now_on, 5000)
    assert second.started == ("d2", "d3") and second.allocated_w == 4000


def test_a_device_that_may_not_start_or_stop_is_left_as_it_is() -> None:
    units = [Unit("a", 100, 1000, 20, False, can_start=False), Unit("b", 100, 1000, 30, False)]
    assert Allocator().allocate(units, 500).shares_w == {"a": 0.0, "b": 500.0}
    units = [Unit("a", 100, 1000, 20, True), Unit("b", 100, 1000, 30, True, can_stop=False)]
    assert Allocator().allocate(units, 50).shares_w == {"a": 0.0, "b": 100.0}


def test_an_offline_device_s_share_moves_to_the_others() -> None:
    units = fleet()
    before = Allocator().allocate(units, 2500).shares_w
    after = Allocator().allocate([u for u in units if u.device != "d0"], 2500).shares_w
    assert before["d0"] == 1000
    assert sum(after.values()) == 2500 and after["d1"] == 1000 and after["d2"] == 1000


def test_a_fixed_load_keeps_its_power_and_the_rest_fills_around_it() -> None:
    units = [Unit("lag", 400, 400, 10, True, False, False), *fleet(2)]
    shares = Allocator(max_stops=0).allocate(units, 1000).shares_w
    assert shares["lag"] == 400 and shares["d0"] == 500 and shares["d1"] == 100


# ---- PI trim -------------------------------------------------------------------------------------
def run_loop(trim: PowerTrim, loss: float, seconds: float, target_w: float = 1000.0,
             saturated: int = 0) -> float:
    """A plant drawing `loss` more than it is told, measured every 0.25 s."""
    measured = target_w * (1 + loss)
    t = 0.0
    while t < seconds:
        t += 0.25
        command = target_w + trim.update(t, target_w, measured, saturated)
        measured = command * (1 + loss)
    return measured


def test_the_trim_removes_a_steady_error() -> None:
    trim = PowerTrim(delay_s=1.0)
    assert run_loop(trim, loss=0.05, seconds=30) == pytest.approx(1000, abs=2)
    # the integral is a share of the target: after a step it is right at once
    assert trim.update(30.25, 4000, 4000, 0) == pytest.approx(4000 * (1 / 1.05 - 1), rel=0.02)


def test_the_trim_is_clamped_and_does_not_wind_up() -> None:
    trim = PowerTrim(delay_s=1.0, limit_frac=0.1)
    run_loop(trim, loss=0.5, seconds=60)  # the loss is beyond reach
    assert trim.gain == pytest.approx(-0.1)
    # saturated: the allocation could not give more; a positive error does not grow the integral
    trim = PowerTrim(delay_s=1.0)
    run_loop(trim, loss=-0.2, seconds=30, saturated=1)
    assert trim.gain == 0.0


def test_the_trim_holds_while_the_target_moves_or_the_meter_is_stale() -> None:
    trim = PowerTrim(delay_s=1.0, settle_w=10)
    for i in range(20):  # a ramp: the error is lag, not model error
        trim.update(i * 0.25, 1000 + 100 * i, 1000 + 100 * i - 300)
    assert trim.gain == 0.0
    for i in range(20):  # the fleet still carries out a large move
        trim.update(10 + i * 0.25, 1000, 700, moving=True)
    assert trim.gain == 0.0
    trim.gain = 0.05
    assert trim.update(20.0, 1000, None) == 50.0


def test_a_device_just_switched_is_stopped_when_the_target_needs_it_not_to_spare_capacity() -> None:
    recent = [Unit(f"d{i}", 400, 1000, 20 + i, True, dwelt=False) for i in range(3)]
    # 3 kW on, 1.5 kW asked: the rest cover it with room to spare, but these were just started
    assert Allocator(hysteresis_w=0).allocate(recent, 1500).stopped == ()
    dwelt = [Unit(u.device, u.min_w, u.max_w, u.j_th, True) for u in recent]
    assert Allocator(hysteresis_w=0).allocate(dwelt, 1500).stopped == ("d2",)
    # 500 W asked: under the minimums of the three, so two go now, just started or not
    low = Allocator().allocate(recent, 500)
    assert low.stopped == ("d2", "d1") and low.allocated_w == 500
