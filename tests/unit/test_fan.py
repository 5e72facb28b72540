"""Fan loop: startup duty, PI toward the target temperature, limits, no windup."""

from __future__ import annotations

from agent.control.fan import FanController

DT = 0.1


def test_fixed_startup_duty_without_a_valid_temperature():
    fan = FanController(startup_pct=70)
    assert fan.update(DT, None) == 70
    assert fan.update(DT, float("nan")) == 70


def test_cold_chip_runs_the_minimum_and_hot_chip_full_speed():
    fan = FanController(target_temp_c=60, min_pct=25)
    for _ in range(100):
        cold = fan.update(DT, 35.0)
    assert cold == 25
    for _ in range(50):
        hot = fan.update(DT, 80.0)
    assert hot == 100


def test_output_rises_with_temperature_above_target():
    fan = FanController(target_temp_c=60, min_pct=20)
    fan.update(DT, 60.0)
    duties = [fan.update(DT, 62.0) for _ in range(20)]
    assert duties == sorted(duties) and duties[-1] > duties[0]


def test_leaves_saturation_quickly_after_a_long_hot_spell():
    fan = FanController(target_temp_c=60, min_pct=25, kp_pct_c=5, ki_pct_c_s=0.5)
    for _ in range(3000):  # five minutes pinned at 100 %
        fan.update(DT, 90.0)
    duties = []
    for _ in range(100):  # ten seconds below target
        duties.append(fan.update(DT, 50.0))
    assert duties[-1] < 60  # no five minutes of wound-up integral to unwind


def test_closed_loop_settles_near_the_target_temperature():
    fan = FanController(target_temp_c=60, min_pct=10)
    temp, ambient, heat_w = 40.0, 25.0, 16.0
    for _ in range(6000):
        pct = fan.update(DT, temp)
        r = 6.0 + (1.6 - 6.0) * pct / 100.0
        temp += DT * (heat_w - (temp - ambient) / r) / 8.0
    assert abs(temp - 60.0) < 1.0
