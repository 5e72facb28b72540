"""Physics of an emulated hash board: chip power, regulator, fan, heat and sensors.

Everything steps on emulated time (`Plant.step(dt_s, ...)`) and draws its randomness from the
`random.Random` it is given, so one seed and one sequence of inputs give one result.

Model (per chip i, frequency f in MHz, core voltage V in volts, temperature T in degC):

* dynamic power  P_dyn = k_dyn * activity * f * V**2        (activity 1 hashing, 0.3 idle clock)
* static power   P_st  = p_st0 * leak_i * (V / V0)**3 * exp((T - 60) / 35)
  k_dyn and p_st0 are fitted to the public figures of spec section 7 at the family defaults
  (f0, V0) and 60 degC: BM1370 16.5 W per chip at 525 MHz / 1150 mV (1.07 TH/s, ~15.4 J/TH),
  BM1366 0.021 J/GH at 485 MHz / 1200 mV, BM1368 17.5 J/TH at 490 MHz / 1166 mV,
  BM1397 0.03 J/GH at 425 MHz / 1400 mV; 10 % of it static.
* board power = chip power / regulator efficiency + regulator quiescent + board overhead + fan;
  wall power = board power / PSU efficiency.
* heat: C dT/dt = P - (T - T_ambient) / R(fan), R from natural convection (fan stopped) down to
  the full-airflow figure, per-chip spread of +-5 %; board and regulator temperatures lag behind.
* hardware-error fraction: 1e-4, plus a steep rise once f exceeds what V supports
  (f_max = 1.2 f0 (1 + 2.5 (V - V0) / V0), lowered 0.4 %/K above 70 degC), plus a rise above
  85 degC.
* fan rpm follows pwm with a first-order lag; vcore settles on its set-point with a short lag;
  chain power off -> no vcore, no hashing power.
* sensors are sampled every `sensor_period_s` with gaussian noise and the quantisation of the
  usual parts (EMC2101 0.125 degC, INA260 10 mW / 1.25 mV / 1.25 mA).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from firmware_bridge.chips import profile

#: family -> (chip power at default f/V and 60 degC in W, static share of it)
_POWER_FIT: dict[str, tuple[float, float]] = {
    "BM1370": (16.5, 0.10),  # 16.5 W / 1.071 TH/s = 15.4 J/TH (15-19 W per chip in the sources)
    "BM1366": (9.11, 0.10),  # 0.021 J/GH * 433.6 GH/s
    "BM1368": (10.94, 0.10),  # 17.5 J/TH * 625.2 GH/s
    "BM1397": (8.57, 0.10),  # 0.03 J/GH * 285.6 GH/s
}
IDLE_ACTIVITY = 0.3  # share of dynamic power with the clock running and no job
LEAK_T_REF_C = 60.0
LEAK_T_SCALE_C = 35.0
HW_ERROR_BASE = 1e-4


@dataclass(frozen=True)
class ChipPhysics:
    """Electrical constants of one chip family, fitted to the family defaults."""

    family: str
    small_cores: int
    freq0_mhz: float
    vcore0_mv: float
    power0_w: float
    static_share: float

    @classmethod
    def for_family(cls, family: str) -> ChipPhysics:
        prof = profile(family)
        power_w, share = _POWER_FIT[prof.family]
        return cls(prof.family, prof.small_cores, float(prof.default_freq_mhz),
                   float(prof.default_vcore_mv), power_w, share)

    @property
    def k_dyn_w(self) -> float:
        """Dynamic power coefficient in W / (MHz * V**2)."""
        v0 = self.vcore0_mv / 1000.0
        return self.power0_w * (1.0 - self.static_share) / (self.freq0_mhz * v0 * v0)

    @property
    def static0_w(self) -> float:
        return self.power0_w * self.static_share

    def dynamic_w(self, freq_mhz: float, vcore_mv: float, activity: float = 1.0) -> float:
        v = vcore_mv / 1000.0
        return self.k_dyn_w * activity * freq_mhz * v * v

    def static_w(self, vcore_mv: float, temp_c: float, leak: float = 1.0) -> float:
        if vcore_mv <= 0:
            return 0.0
        ratio = vcore_mv / self.vcore0_mv
        t = min(temp_c, 150.0)
        return self.static0_w * leak * ratio**3 * math.exp((t - LEAK_T_REF_C) / LEAK_T_SCALE_C)

    def hashrate_ghs(self, freq_mhz: float) -> float:
        return freq_mhz * self.small_cores / 1000.0

    def max_freq_mhz(self, vcore_mv: float, temp_c: float) -> float:
        """Highest frequency the voltage supports at this temperature."""
        f = 1.2 * self.freq0_mhz * (1.0 + 2.5 * (vcore_mv - self.vcore0_mv) / self.vcore0_mv)
        f *= 1.0 - 0.004 * max(0.0, temp_c - 70.0)
        return max(f, 0.0)

    def hw_error_fraction(self, freq_mhz: float, vcore_mv: float, temp_c: float) -> float:
        """Share of results that are wrong (hardware errors) at this operating point."""
        if freq_mhz <= 0:
            return 0.0
        f_max = self.max_freq_mhz(vcore_mv, temp_c)
        over = freq_mhz / f_max - 1.0 if f_max > 0 else 10.0
        err = HW_ERROR_BASE
        if over > 0:
            err += (4.0 * over) ** 2
        if temp_c > 85.0:
            err += ((temp_c - 85.0) / 30.0) ** 2
        return min(err, 1.0)


@dataclass
class BoardParams:
    """Board-level constants; `for_chips` picks figures like a Bitaxe (1-2 chips) or a Hex."""

    chips: int
    vin_nominal_v: float = 5.0
    vin_source_ohm: float = 0.02
    regulator_efficiency: float = 0.90
    regulator_quiescent_w: float = 0.3
    board_overhead_w: float = 1.0
    psu_efficiency: float = 0.92
    fan_power_max_w: float = 1.0
    fan_rpm_max: float = 6000.0
    fan_tau_s: float = 1.5
    vcore_tau_s: float = 0.05
    chip_heat_capacity_j_k: float = 25.0
    chip_r_still_k_w: float = 8.0  # fan stopped
    chip_r_full_k_w: float = 1.4  # fan at 100 %
    board_tau_s: float = 60.0
    vr_r_k_w: float = 6.0
    vr_tau_s: float = 20.0
    sensor_period_s: float = 0.1
    temp_noise_c: float = 0.15
    temp_quant_c: float = 0.125
    power_noise_rel: float = 0.003
    temp_channels: int = 1
    spread: float = 0.05  # per-chip spread of thermal resistance (leakage: twice that)

    @classmethod
    def for_chips(cls, chips: int) -> BoardParams:
        if chips < 1:
            raise ValueError(f"chips must be >= 1, got {chips}")
        big = chips > 2
        return cls(
            chips=chips,
            vin_nominal_v=12.0 if big else 5.0,
            board_overhead_w=1.0 + 0.05 * chips,
            fan_power_max_w=1.0 if chips <= 2 else 1.0 + 0.5 * chips,
            temp_channels=min(chips, 4),
        )


@dataclass
class SensorReadings:
    """What the board's sensors report (sampled, noisy, quantised), in the HAL's integer units."""

    chip_temps_dc: list[int] = field(default_factory=list)
    board_temp_dc: int = 250
    vr_temp_dc: int = 250
    vin_mv: int = 0
    iin_ma: int = 0
    power_mw: int = 0
    fan_rpm: int = 0
    vcore_mv: int = 0


class Plant:
    """The board's physics. Inputs are attributes (`chain_powered`, `vcore_set_mv`, `fan_pct`,
    `ambient_c`); `step(dt_s, freqs_mhz, active)` advances it; outputs are attributes too."""

    def __init__(self, physics: ChipPhysics, board: BoardParams, rng: random.Random,
                 ambient_c: float = 25.0) -> None:
        n = board.chips
        self.physics = physics
        self.board = board
        self.rng = rng
        self.ambient_c = float(ambient_c)
        # inputs
        self.chain_powered = False
        self.vcore_set_mv = float(physics.vcore0_mv)
        self.fan_pct = 100
        # per-chip manufacturing spread, drawn once from the seed
        self.r_spread = [max(0.8, rng.gauss(1.0, board.spread)) for _ in range(n)]
        self.leak_spread = [max(0.5, rng.gauss(1.0, 2 * board.spread)) for _ in range(n)]
        # state
        self.time_s = 0.0
        self.vcore_mv = 0.0
        self.fan_rpm = 0.0
        self.chip_temp_c = [self.ambient_c] * n
        self.board_temp_c = self.ambient_c
        self.vr_temp_c = self.ambient_c
        self.chip_power_w = [0.0] * n
        self.chip_freq_mhz = [0.0] * n
        self.hw_error_fraction = [0.0] * n
        self.asic_power_w = 0.0
        self.fan_power_w = 0.0
        self.board_power_w = 0.0
        self.wall_power_w = 0.0
        self.vin_v = board.vin_nominal_v
        self.iin_a = 0.0
        self.energy_j = 0.0
        self.sensors = SensorReadings()
        self._next_sample_s = 0.0
        self.sample()

    # ---- derived figures -------------------------------------------------------------------
    def hashing(self) -> bool:
        """True while the chips get enough voltage to run."""
        return self.chain_powered and self.vcore_mv >= 0.6 * self.physics.vcore0_mv

    def chip_hashrate_ghs(self, i: int) -> float:
        return self.physics.hashrate_ghs(self.chip_freq_mhz[i]) if self.hashing() else 0.0

    def hashrate_ghs(self) -> float:
        return sum(self.chip_hashrate_ghs(i) for i in range(self.board.chips))

    def thermal_resistance_k_w(self, i: int) -> float:
        b = self.board
        air = (self.fan_rpm / b.fan_rpm_max) ** 0.8 if self.fan_rpm > 0 else 0.0
        g = 1.0 / b.chip_r_still_k_w + (1.0 / b.chip_r_full_k_w - 1.0 / b.chip_r_still_k_w) * air
        return self.r_spread[i] / g

    # ---- stepping ---------------------------------------------------------------------------
    def step(self, dt_s: float, freqs_mhz: Sequence[float], active: Sequence[bool]) -> None:
        """Advance `dt_s` seconds with these chip clocks (MHz) and activity (job running)."""
        b, ph = self.board, self.physics
        self.time_s += dt_s
        # regulator and fan lags (exact first order)
        target_mv = max(0.0, float(self.vcore_set_mv)) if self.chain_powered else 0.0
        self.vcore_mv += (target_mv - self.vcore_mv) * (1.0 - math.exp(-dt_s / b.vcore_tau_s))
        pct = min(max(self.fan_pct, 0), 100)
        self.fan_rpm += (b.fan_rpm_max * pct / 100.0 - self.fan_rpm) * (
            1.0 - math.exp(-dt_s / b.fan_tau_s))
        self.fan_power_w = b.fan_power_max_w * (pct / 100.0) ** 3
        running = self.hashing()
        asic_w = 0.0
        for i in range(b.chips):
            f = float(freqs_mhz[i]) if running else 0.0
            self.chip_freq_mhz[i] = float(freqs_mhz[i]) if self.chain_powered else 0.0
            t = self.chip_temp_c[i]
            p = self.physics.static_w(self.vcore_mv, t, self.leak_spread[i])
            if f > 0:
                p += ph.dynamic_w(f, self.vcore_mv, 1.0 if active[i] else IDLE_ACTIVITY)
            self.chip_power_w[i] = p
            asic_w += p
            r = self.thermal_resistance_k_w(i)
            t_ss = self.ambient_c + p * r
            tau = r * b.chip_heat_capacity_j_k
            self.chip_temp_c[i] = t_ss + (t - t_ss) * math.exp(-dt_s / tau)
            self.hw_error_fraction[i] = ph.hw_error_fraction(f, self.vcore_mv, self.chip_temp_c[i])
        self.asic_power_w = asic_w
        vr_loss_w = asic_w * (1.0 / b.regulator_efficiency - 1.0)
        quiescent = b.regulator_quiescent_w if self.chain_powered else 0.0
        self.board_power_w = asic_w + vr_loss_w + quiescent + b.board_overhead_w + self.fan_power_w
        self.wall_power_w = self.board_power_w / b.psu_efficiency
        self.energy_j += self.wall_power_w * dt_s
        # input voltage droops with the current drawn from the supply
        i_a = self.board_power_w / b.vin_nominal_v
        self.vin_v = b.vin_nominal_v - b.vin_source_ohm * i_a
        self.iin_a = self.board_power_w / self.vin_v
        # board and regulator temperatures lag the chips
        mean_chip = sum(self.chip_temp_c) / b.chips
        board_ss = self.ambient_c + 0.6 * (mean_chip - self.ambient_c)
        lag = 1.0 - math.exp(-dt_s / b.board_tau_s)
        self.board_temp_c += (board_ss - self.board_temp_c) * lag
        vr_ss = self.ambient_c + 0.4 * (self.board_temp_c - self.ambient_c) + (
            (vr_loss_w + quiescent) / max(1.0, b.chips / 2.0)) * b.vr_r_k_w * (
            0.5 + 0.5 * b.chip_r_full_k_w / self.thermal_resistance_k_w(0))
        self.vr_temp_c += (vr_ss - self.vr_temp_c) * (1.0 - math.exp(-dt_s / b.vr_tau_s))
        if self.time_s + 1e-9 >= self._next_sample_s:
            self.sample()

    def channel_chips(self, channel: int) -> range:
        """Chips a temperature channel covers (it reports the hottest of them)."""
        n, c = self.board.chips, max(1, self.board.temp_channels)
        return range(channel * n // c, max(channel * n // c + 1, (channel + 1) * n // c))

    def sample(self) -> None:
        """Take a new sensor sample now (noise from the plant's RNG, quantised like the parts);
        `step` calls it every `sensor_period_s`."""
        b, rng = self.board, self.rng
        self._next_sample_s = self.time_s + b.sensor_period_s

        def temp_dc(t: float) -> int:
            t = t + rng.gauss(0.0, b.temp_noise_c)
            return round(round(t / b.temp_quant_c) * b.temp_quant_c * 10.0)

        s = self.sensors
        s.chip_temps_dc = [
            temp_dc(max(self.chip_temp_c[i] for i in self.channel_chips(ch)))
            for ch in range(max(1, b.temp_channels))
        ]
        s.board_temp_dc = temp_dc(self.board_temp_c)
        s.vr_temp_dc = temp_dc(self.vr_temp_c)
        noise = 1.0 + rng.gauss(0.0, b.power_noise_rel)
        s.power_mw = round(self.board_power_w * noise * 100.0) * 10  # INA260: 10 mW LSB
        s.vin_mv = int(round(self.vin_v * 1000.0 / 1.25) * 1.25)
        s.iin_ma = int(round(self.iin_a * noise * 1000.0 / 1.25) * 1.25)
        s.vcore_mv = max(0, round(self.vcore_mv + rng.gauss(0.0, 1.5)))
        rpm = self.fan_rpm * (1.0 + rng.gauss(0.0, 0.01)) if self.fan_rpm > 50 else 0.0
        s.fan_rpm = round(rpm / 10.0) * 10

    def snapshot(self) -> dict:
        """True state (not the sensors) for state() and the status file."""
        return {
            "chain_powered": self.chain_powered,
            "ambient_c": round(self.ambient_c, 3),
            "vcore_set_mv": round(float(self.vcore_set_mv), 1),
            "vcore_mv": round(self.vcore_mv, 2),
            "fan_pct": self.fan_pct,
            "fan_rpm": round(self.fan_rpm, 1),
            "chip_temp_c": [round(t, 3) for t in self.chip_temp_c],
            "max_chip_temp_c": round(max(self.chip_temp_c), 3),
            "board_temp_c": round(self.board_temp_c, 3),
            "vr_temp_c": round(self.vr_temp_c, 3),
            "chip_power_w": [round(p, 4) for p in self.chip_power_w],
            "asic_power_w": round(self.asic_power_w, 4),
            "fan_power_w": round(self.fan_power_w, 4),
            "board_power_w": round(self.board_power_w, 4),
            "wall_power_w": round(self.wall_power_w, 4),
            "energy_j": round(self.energy_j, 3),
            "hashrate_ghs": round(self.hashrate_ghs(), 3),
            "hw_error_fraction": [round(e, 6) for e in self.hw_error_fraction],
        }
