"""The power model's declared range: the default frequency ceiling, the rated maximum and the
promised minimum, for boards that draw up to 15 % more or less than the model."""

from __future__ import annotations

import pytest

from agent.config import config_from_mapping, model_params
from agent.control.power_model import (
    MODEL_TOLERANCE,
    ModelParams,
    PowerModel,
    VfCurve,
    default_max_freq_mhz,
)
from agent.errors import ConfigError
from firmware_bridge.chips import profile


@pytest.mark.parametrize("family, top_mhz", [("BM1370", 625.0), ("BM1366", 575.0),
                                             ("BM1368", 575.0), ("BM1397", 510.0)])
def test_default_ceiling_is_above_the_family_default_within_the_ui_presets(family, top_mhz):
    assert default_max_freq_mhz(family) == top_mhz
    assert default_max_freq_mhz(family) > profile(family).default_freq_mhz


def _derived(family: str, chips: int):
    cfg = config_from_mapping({"chain": {"port": "x", "family": family, "chips": chips},
                               "board": {"port": "y"}})
    env, gov = cfg.envelope, cfg.governor
    model = PowerModel(ModelParams.for_family(family, chips))
    curve = VfCurve(gov.vf_points, env.min_vcore_mv, env.max_vcore_mv)
    return cfg, model, curve


@pytest.mark.parametrize("family, chips", [("BM1370", 1), ("BM1370", 4), ("BM1366", 6),
                                           ("BM1368", 1), ("BM1397", 1)])
@pytest.mark.parametrize("board_gain", [1.0 - MODEL_TOLERANCE, 1.0, 1.0 + MODEL_TOLERANCE])
def test_declared_range_is_reachable_on_boards_15pct_off_the_model(family, chips, board_gain):
    cfg, model, curve = _derived(family, chips)
    env = cfg.envelope
    warm = cfg.governor.fan_target_temp_c
    board = PowerModel(model.params)
    board.gain = board_gain  # a real board: its chips draw this much more (or less)
    assert env.max_freq_mhz is not None and env.max_power_w is not None
    # the rated power is reached below the ceiling, and is no more than the vendor's rating
    assert board.curve_power_w(env.max_freq_mhz, curve, warm) >= env.max_power_w
    stock = model.curve_power_w(profile(family).default_freq_mhz, curve, warm)
    assert env.max_power_w <= stock
    # the promised minimum is held at or above the minimum frequency, even warm
    min_w = model.rated_min_w(curve, env.min_freq_mhz, env.max_chip_temp_soft_c)
    assert board.curve_power_w(env.min_freq_mhz, curve, env.max_chip_temp_soft_c) <= min_w
    assert min_w < env.max_power_w


def test_rating_of_a_four_chip_bm1370_board():
    cfg, model, curve = _derived("BM1370", 4)
    # 71.3 W at 525 MHz / 1150 mV; a board 15 % weaker reaches 70.8 W at 625 MHz
    assert cfg.envelope.max_power_w == 70.0
    assert model.rated_max_w(curve, 625.0, 60.0) == pytest.approx(70.8, abs=0.1)
    assert model.gain == 1.0  # the figures do not disturb an adapted gain


def test_rating_ignores_the_adapted_gain():
    _cfg, model, curve = _derived("BM1370", 4)
    before = model.rated_max_w(curve, 625.0, 60.0)
    model.gain = 1.3
    assert model.rated_max_w(curve, 625.0, 60.0) == pytest.approx(before)
    assert model.gain == 1.3


def test_a_configured_ceiling_below_the_default_frequency_rates_at_the_ceiling():
    cfg = config_from_mapping({"chain": {"port": "x", "chips": 4}, "board": {"port": "y"},
                               "envelope": {"max_freq_mhz": 400.0}})
    _c, model, curve = _derived("BM1370", 4)
    top = model.curve_power_w(400.0, curve, 60.0)
    assert cfg.envelope.max_power_w <= (1.0 - MODEL_TOLERANCE) * top


def test_a_psu_efficiency_counts_power_at_the_wall_in_the_model_and_the_rating():
    board = config_from_mapping({"chain": {"port": "x", "family": "BM1370", "chips": 4},
                                 "board": {"port": "y"}})
    wall = config_from_mapping({"chain": {"port": "x", "family": "BM1370", "chips": 4},
                                "board": {"port": "y", "psu_efficiency": 0.9}})
    m_board, m_wall = PowerModel(model_params(board)), PowerModel(model_params(wall))
    assert m_wall.power_w(500.0, 1100, 60.0) == pytest.approx(m_board.power_w(500.0, 1100, 60.0)
                                                               / 0.9)
    # the inverses find the same operating point for the same board input
    p_wall = m_wall.power_w(480.0, 1120, 55.0)
    assert m_wall.freq_for_power_at_vcore(p_wall, 1120, 55.0) == pytest.approx(480.0)
    assert m_wall.vcore_for_power_at_freq(p_wall, 480.0, 55.0) == pytest.approx(1120.0)
    # the declared maximum is the wall's: a tenth more (rounded down to whole watts)
    assert wall.envelope.max_power_w == pytest.approx(board.envelope.max_power_w / 0.9, abs=1.0)
    with pytest.raises(ConfigError, match="psu_efficiency"):
        config_from_mapping({"chain": {"port": "x"}, "board": {"port": "y",
                                                               "psu_efficiency": 0.3}})
