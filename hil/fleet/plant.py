"""A whole miner as one lumped plant: power, heat and hashrate from chain frequency, core voltage
and fan, light enough to step a thousand of them once a second.

The electrical constants are the emulator's (`hil.plant.ChipPhysics`, `BoardParams`), applied to
all chips at once: chip power = gain * (dynamic + static(T)), board power = chips * chip power /
regulator efficiency + quiescent + overhead + fan; the hottest chip is one thermal mass a few
percent above the mean, cooled through the fan's airflow. `gain` is this unit's true power
against the family figure (what makes two units of one model differ in J/TH). Sensors are
sampled with noise into an `agent.chain.board.BoardSample`, as the bridge firmware reports them.

Faults: `trip_reason` (the board's own protection cut the chain: the sample says so),
`lag_s` (the load follows the chips' operating point with this time constant: a sluggish unit),
`dead` (no power at all).
"""

from __future__ import annotations

import math
import random

from agent.chain.board import BoardSample
from hil.plant import BoardParams, ChipPhysics

HOT_SPREAD = 1.05  # the hottest chip's rise above ambient, against the mean chip's


class LumpedPlant:
    """One miner's physics; inputs are attributes (`actuated()` after setting them), `step(dt_s)`
    advances, `sample(ts_s)` reads."""

    def __init__(self, family: str, chips: int, gain: float, rng: random.Random,
                 ambient_c: float = 25.0) -> None:
        self.physics = ChipPhysics.for_family(family)
        self.board = BoardParams.for_chips(chips)
        self.chips = chips
        self.gain = gain
        self.rng = rng
        self.ambient_c = ambient_c
        # inputs
        self.chain_powered = False
        self.freq_mhz = 0.0
        self.vcore_set_mv = 0.0
        self.fan_pct = 100
        # faults
        self.trip_reason: str | None = None
        self.lag_s = 0.0
        self.dead = False
        # state
        self.vcore_mv = 0.0
        self.fan_rpm = 0.0
        self.chip_temp_c = ambient_c  # the hottest chip
        self.power_w = self._board_power_w(0.0)
        self.energy_j = 0.0

    @property
    def hashing(self) -> bool:
        return self.chain_powered and not self.dead and \
            self.vcore_mv >= 0.6 * self.physics.vcore0_mv and self.freq_mhz > 0

    def hashrate_ghs(self) -> float:
        return self.physics.hashrate_ghs(self.freq_mhz) * self.chips if self.hashing else 0.0

    def _chip_power_w(self) -> float:
        ph = self.physics
        if not self.chain_powered or self.dead:
            return 0.0
        p = ph.static_w(self.vcore_mv, self.chip_temp_c)
        if self.hashing:
            p += ph.dynamic_w(self.freq_mhz, self.vcore_mv)
        return self.gain * p

    def _board_power_w(self, chip_w: float) -> float:
        if self.dead:
            return 0.0
        b = self.board
        fan_w = b.fan_power_max_w * (min(max(self.fan_pct, 0), 100) / 100.0) ** 3
        quiescent = b.regulator_quiescent_w if self.chain_powered else 0.0
        return self.chips * chip_w / b.regulator_efficiency + quiescent + b.board_overhead_w + fan_w

    def _thermal_resistance_k_w(self) -> float:
        b = self.board
        air = (self.fan_rpm / b.fan_rpm_max) ** 0.8 if self.fan_rpm > 0 else 0.0
        return 1.0 / (1.0 / b.chip_r_still_k_w
                      + (1.0 / b.chip_r_full_k_w - 1.0 / b.chip_r_still_k_w) * air)

    def step(self, dt_s: float) -> None:
        """Advance `dt_s` seconds with the inputs as they are."""
        if dt_s <= 0:
            return
        b = self.board
        if self.trip_reason is not None or self.dead:
            self.chain_powered = False  # the board's protection holds the chain off
        target_mv = self.vcore_set_mv if self.chain_powered else 0.0
        self.vcore_mv += (target_mv - self.vcore_mv) * (1.0 - math.exp(-dt_s / b.vcore_tau_s))
        fan = 0 if self.dead else min(max(self.fan_pct, 0), 100)
        self.fan_rpm += (b.fan_rpm_max * fan / 100.0 - self.fan_rpm) * (
            1.0 - math.exp(-dt_s / b.fan_tau_s))
        chip_w = self._chip_power_w()
        r = self._thermal_resistance_k_w()
        t_ss = self.ambient_c + HOT_SPREAD * chip_w * r
        self.chip_temp_c = t_ss + (self.chip_temp_c - t_ss) * math.exp(
            -dt_s / (r * b.chip_heat_capacity_j_k))
        want_w = self._board_power_w(chip_w)
        if self.lag_s > 0:
            self.power_w += (want_w - self.power_w) * (1.0 - math.exp(-dt_s / self.lag_s))
        else:
            self.power_w = want_w
        self.energy_j += self.power_w * dt_s

    def actuated(self) -> None:
        """The inputs just changed: the load moves to them at once, as a board's draw follows
        its chips' clock, unless the unit lags (`lag_s`: then `step` moves it)."""
        if self.trip_reason is not None or self.dead:
            self.chain_powered = False
        if self.lag_s <= 0:
            self.power_w = self._board_power_w(self._chip_power_w())

    def sample(self, ts_s: float) -> BoardSample:
        """What the board's sensors report now (noisy, as the bridge firmware sends them)."""
        b, g = self.board, self.rng.gauss
        power = self.power_w * (1.0 + g(0.0, b.power_noise_rel))
        vin = b.vin_nominal_v - b.vin_source_ohm * power / b.vin_nominal_v
        temp = self.chip_temp_c + g(0.0, b.temp_noise_c)
        return BoardSample(
            ts_s=ts_s,
            chip_temps_c=[round(temp, 2)],
            board_temp_c=round(self.ambient_c + 0.6 * (self.chip_temp_c - self.ambient_c)
                               + g(0.0, b.temp_noise_c), 2),
            vr_temp_c=round(self.ambient_c + 0.7 * (self.chip_temp_c - self.ambient_c), 2),
            vin_v=round(vin, 3),
            iin_a=round(power / vin, 3),
            power_w=round(power, 2),
            fan_rpm=round(self.fan_rpm),
            fan_pct=self.fan_pct,
            vcore_mv=round(self.vcore_mv) if self.chain_powered else 0,
            chain_powered=self.chain_powered,
            bridge_state="tripped" if self.trip_reason else (
                "active" if self.chain_powered else "idle"),
            trip_reason=self.trip_reason,
        )
