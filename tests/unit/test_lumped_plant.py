"""The fleet's lumped plant: its load follows an actuation when it is applied."""

from __future__ import annotations

import random

from hil.fleet.plant import LumpedPlant


def _mining(lag_s: float = 0.0) -> LumpedPlant:
    plant = LumpedPlant("BM1370", 60, 1.0, random.Random(1))
    plant.chain_powered, plant.vcore_set_mv, plant.freq_mhz = True, 1100.0, 300.0
    plant.actuated()
    plant.step(5.0)
    plant.lag_s = lag_s
    return plant


def test_a_new_clock_moves_the_load_when_applied_not_at_the_next_step():
    plant = _mining()
    before_w = plant.power_w
    plant.freq_mhz = 450.0
    plant.actuated()
    raised_w = plant.power_w
    assert raised_w > before_w * 1.3
    plant.step(0.25)
    assert abs(plant.power_w - raised_w) < 0.01 * raised_w  # the next step adds no second jump


def test_a_lagging_unit_moves_only_as_time_passes():
    plant = _mining(lag_s=30.0)
    before_w = plant.power_w
    plant.freq_mhz = 450.0
    plant.actuated()
    assert plant.power_w == before_w
    plant.step(30.0)
    assert plant.power_w > before_w * 1.2


def test_a_tripped_board_draws_no_chain_power_from_the_actuation_on():
    plant = _mining()
    plant.trip_reason = "overcurrent"
    plant.actuated()
    assert not plant.chain_powered
    assert plant.power_w < 0.1 * _mining().power_w
