"""Plant physics of the board emulator: power fit, thermal response, lags, sensors, determinism."""

from __future__ import annotations

import math
import random

import pytest

from hil.plant import BoardParams, ChipPhysics, Plant


def make_plant(family: str = "BM1370", chips: int = 1, seed: int = 1, fan_pct: int = 50,
               ambient_c: float = 25.0) -> Plant:
    plant = Plant(ChipPhysics.for_family(family), BoardParams.for_chips(chips),
                  random.Random(seed), ambient_c)
    plant.chain_powered = True
    plant.fan_pct = fan_pct
    return plant


def run(plant: Plant, seconds: float, freq_mhz: float | None = None, active: bool = True,
        dt: float = 0.01) -> None:
    f = plant.physics.freq0_mhz if freq_mhz is None else freq_mhz
    n = plant.board.chips
    for _ in range(round(seconds / dt)):
        plant.step(dt, [f] * n, [active] * n)


@pytest.mark.parametrize(
    ("family", "j_per_th", "tolerance"),
    [("BM1370", 15.4, 0.05), ("BM1366", 21.0, 0.05), ("BM1368", 17.5, 0.05),
     ("BM1397", 30.0, 0.05)],
)
def test_chip_power_fits_public_efficiency_at_family_defaults(family, j_per_th, tolerance):
    ph = ChipPhysics.for_family(family)
    power_w = ph.dynamic_w(ph.freq0_mhz, ph.vcore0_mv) + ph.static_w(ph.vcore0_mv, 60.0)
    assert power_w / (ph.hashrate_ghs(ph.freq0_mhz) / 1000.0) == pytest.approx(j_per_th,
                                                                               rel=tolerance)


def test_bm1370_board_at_525mhz_1150mv_hashes_1_07ths_at_15_to_19w_per_chip():
    plant = make_plant("BM1370", chips=1, fan_pct=60)
    run(plant, 300.0)
    assert plant.hashrate_ghs() == pytest.approx(1071.0, rel=0.001)
    assert 15.0 <= plant.chip_power_w[0] <= 19.0
    # board power adds regulator loss, overhead and fan; the wall adds the PSU
    assert plant.board_power_w > plant.asic_power_w / plant.board.regulator_efficiency
    assert plant.wall_power_w == pytest.approx(plant.board_power_w / plant.board.psu_efficiency)


def test_dynamic_power_scales_with_frequency_and_voltage_squared():
    ph = ChipPhysics.for_family("BM1370")
    p = ph.dynamic_w(500.0, 1100.0)
    assert ph.dynamic_w(250.0, 1100.0) == pytest.approx(p / 2)
    assert ph.dynamic_w(500.0, 1100.0 * math.sqrt(2)) == pytest.approx(2 * p)


def test_static_power_grows_with_voltage_and_temperature():
    ph = ChipPhysics.for_family("BM1366")
    base = ph.static_w(1200.0, 50.0)
    assert ph.static_w(1300.0, 50.0) > base
    assert ph.static_w(1200.0, 80.0) > 1.5 * base
    assert ph.static_w(0.0, 80.0) == 0.0


def test_more_fan_means_cooler_chips_and_higher_ambient_hotter():
    temps = {}
    for fan in (30, 100):
        plant = make_plant(fan_pct=fan)
        run(plant, 400.0)
        temps[fan] = plant.chip_temp_c[0]
    assert temps[30] > temps[100] + 10.0
    hot = make_plant(fan_pct=100, ambient_c=35.0)
    run(hot, 400.0)
    assert hot.chip_temp_c[0] == pytest.approx(temps[100] + 10.0, abs=1.5)


def test_chip_temperature_is_first_order_with_a_tens_of_seconds_time_constant():
    plant = make_plant(fan_pct=100)
    run(plant, 2.0)
    t_start = plant.chip_temp_c[0]
    run(plant, 600.0)
    t_end = plant.chip_temp_c[0]
    tau_s = plant.thermal_resistance_k_w(0) * plant.board.chip_heat_capacity_j_k
    assert 10.0 < tau_s < 120.0
    cold = make_plant(fan_pct=100)
    run(cold, 2.0 + tau_s)
    rise = (cold.chip_temp_c[0] - t_start) / (t_end - t_start)
    assert 0.55 < rise < 0.72  # 1 - 1/e after one time constant (leakage makes it a bit more)


def test_fan_rpm_lags_pwm_and_vcore_settles_quickly():
    plant = make_plant(fan_pct=0)
    run(plant, 20.0)
    assert plant.fan_rpm < 1.0
    plant.fan_pct = 100
    run(plant, plant.board.fan_tau_s)
    assert plant.fan_rpm == pytest.approx(plant.board.fan_rpm_max * (1 - math.exp(-1)), rel=0.02)
    plant.vcore_set_mv = 1050
    run(plant, 0.01)
    assert plant.vcore_mv > 1060  # not there at once
    run(plant, 0.3)
    assert plant.vcore_mv == pytest.approx(1050, abs=1.0)


def test_chain_power_off_means_no_hashing_no_core_power_and_cooling():
    plant = make_plant(fan_pct=50)
    run(plant, 120.0)
    hot = plant.chip_temp_c[0]
    plant.chain_powered = False
    run(plant, 120.0)
    assert plant.hashrate_ghs() == 0.0
    assert plant.asic_power_w == 0.0
    assert plant.vcore_mv < 1.0
    assert plant.chip_temp_c[0] < hot - 10.0
    assert plant.board_power_w > 0.0  # controller and fan still draw


def test_hardware_errors_rise_beyond_what_the_voltage_supports_and_when_hot():
    ph = ChipPhysics.for_family("BM1370")
    nominal = ph.hw_error_fraction(525.0, 1150.0, 60.0)
    assert nominal < 1e-3
    assert ph.hw_error_fraction(700.0, 1000.0, 60.0) > 0.1
    assert ph.hw_error_fraction(525.0, 1150.0, 100.0) > 10 * nominal


def test_idle_chips_draw_less_than_hashing_chips():
    busy, idle = make_plant(), make_plant()
    run(busy, 5.0, active=True)
    run(idle, 5.0, active=False)
    assert idle.asic_power_w < 0.5 * busy.asic_power_w


def test_sensors_are_sampled_quantised_and_noisy():
    plant = make_plant(chips=2)
    run(plant, 10.0)
    s1 = plant.sensors.chip_temps_dc[:]
    plant.step(0.01, [525.0, 525.0], [True, True])
    assert plant.sensors.chip_temps_dc == s1  # held between samples (100 ms period)
    seen = set()
    for _ in range(50):
        run(plant, 0.1)
        seen.add(plant.sensors.power_mw)
        assert plant.sensors.power_mw % 10 == 0  # INA260: 10 mW steps
        true_dc = plant.chip_temp_c[0] * 10
        assert abs(plant.sensors.chip_temps_dc[0] - true_dc) < 15
    assert len(seen) > 5  # noise


def test_same_seed_and_inputs_give_identical_results_another_seed_differs():
    def trace(seed: int) -> list:
        plant = make_plant(chips=4, seed=seed)
        out = []
        for k in range(3000):
            if k == 1000:
                plant.fan_pct = 80
            if k == 2000:
                plant.ambient_c = 30.0
            plant.step(0.01, [500.0, 510.0, 520.0, 530.0], [True] * 4)
            out.append((plant.snapshot(), vars(plant.sensors).copy()))
        return out

    assert trace(7) == trace(7)
    assert trace(7) != trace(8)


def test_temperature_channels_cover_every_chip_and_report_the_hottest():
    plant = make_plant(chips=8)
    assert plant.board.temp_channels == 4
    covered = [i for ch in range(4) for i in plant.channel_chips(ch)]
    assert covered == list(range(8))
    run(plant, 30.0, freq_mhz=525.0)
    for ch in range(4):
        hottest = max(plant.chip_temp_c[i] for i in plant.channel_chips(ch))
        assert abs(plant.sensors.chip_temps_dc[ch] - hottest * 10) < 15
