"""Power of a hash board from chain frequency and core voltage, its inverse, and the V/f curve.

Per chip (f in MHz, V in volts, T in degC):
``P_chip = gain * V**2 * (k_dyn * f + c_static * leak(T))`` with
``leak(T) = 1 + leak_per_c * (T - 60)``: the dynamic part is the usual ``C f V**2``; the static
part (leakage) is taken proportional to ``V**2`` and rising with temperature, which keeps the
inverse in closed form. Board power: ``chips * P_chip / regulator_efficiency + overhead_w``
(fan, MCU), divided by ``psu_efficiency`` when power is counted at the wall (1 by default: the
board's input is the power).

Defaults are fitted per family to the vendors' efficiency at the default frequency and voltage
(spec bm13xx-protocol.md section 7.1: BM1370 15 J/TH, BM1368 17.5 J/TH, BM1366 0.021 J/GH,
BM1397 0.03 J/GH) with 10 % of the chip's power static at 60 degC. A one-chip BM1370 board at
525 MHz / 1150 mV comes out at 16.1 W per chip and 19 W at the wall (ESP-Miner's self-test
target for the Gamma is 19 W).

A real board's power may differ from this by MODEL_TOLERANCE (15 %); the measured power corrects
the model online (agent.control.governor). The declared range is one every such board can hold:
`rated_max_w` (the rating at the family default, no more than a board 15 % weaker reaches at the
frequency ceiling, which by default lies a fifth above the family default, within ESP-Miner's
presets) and `rated_min_w` (the minimum frequency's power for a board 15 % stronger). Above the
family default point the V/f curve keeps its last slope up to `max_vcore_mv` (by default the
family default voltage), so the extra frequency costs no extra voltage unless allowed.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

from firmware_bridge.chips import profile

#: family -> vendor efficiency in J/TH at the default frequency and voltage (spec section 7.1)
EFFICIENCY_J_TH: dict[str, float] = {
    "BM1397": 30.0,
    "BM1366": 21.0,
    "BM1368": 17.5,
    "BM1370": 15.0,
}
#: family -> lowest core voltage of ESP-Miner's presets (spec section 7.1), the V/f curve's foot
MIN_VCORE_MV: dict[str, int] = {"BM1397": 1100, "BM1366": 1100, "BM1368": 1100, "BM1370": 1000}
#: family -> highest frequency of ESP-Miner's UI presets (spec section 7.1)
PRESET_MAX_FREQ_MHZ: dict[str, float] = {
    "BM1397": 600.0, "BM1366": 575.0, "BM1368": 575.0, "BM1370": 625.0}
#: the default frequency ceiling lies this share above the family default (within the presets):
#: room to reach the rated power on a board that draws less than the model says
FREQ_HEADROOM = 0.20
#: how far a real board's power may differ from the model; the declared power range is one
#: every board within it can hold (spec: bm13xx-protocol.md section 7.2, "not from sources")
MODEL_TOLERANCE = 0.15
STATIC_SHARE = 0.10
LEAK_REF_C = 60.0
LEAK_PER_C = 0.02
MODEL_TEMP_C = 60.0  # temperature assumed when no chip temperature is known


def chip_power_at_default_w(family: str) -> float:
    """Vendor efficiency times the default hashrate of one chip (W)."""
    prof = profile(family)
    return EFFICIENCY_J_TH[prof.family] * prof.hashrate_ghs(prof.default_freq_mhz) / 1000.0


def default_max_freq_mhz(family: str) -> float:
    """The default frequency ceiling: FREQ_HEADROOM above the family default, at most the top
    of ESP-Miner's UI presets (BM1370 625 MHz, BM1366 575, BM1368 575, BM1397 510)."""
    prof = profile(family)
    return float(min(PRESET_MAX_FREQ_MHZ[prof.family],
                     prof.default_freq_mhz * (1.0 + FREQ_HEADROOM)))


class VfCurve:
    """Piecewise-linear core voltage for a frequency, clamped to [min_vcore_mv, max_vcore_mv].

    Beyond the last point the last segment is extended. ``max_freq_mhz(vcore)`` is the inverse:
    the highest frequency a voltage supports. Points must rise in both frequency and voltage.
    """

    def __init__(
        self, points: Sequence[tuple[float, float]], min_vcore_mv: float, max_vcore_mv: float
    ) -> None:
        pts = sorted((float(f), float(v)) for f, v in points)
        if len(pts) < 2:
            raise ValueError("a V/f curve needs at least two points")
        for (f0, v0), (f1, v1) in itertools.pairwise(pts):
            if f1 <= f0 or v1 < v0:
                raise ValueError("V/f points must rise in frequency and not fall in voltage")
        self.points = tuple(pts)
        self.min_vcore_mv = float(min_vcore_mv)
        self.max_vcore_mv = float(max_vcore_mv)

    def _segment(self, i: int) -> tuple[float, float, float, float]:
        (f0, v0), (f1, v1) = self.points[i], self.points[i + 1]
        return f0, v0, f1, v1

    def vcore_mv(self, freq_mhz: float) -> float:
        """Core voltage the curve gives a frequency."""
        pts = self.points
        i = 0
        while i < len(pts) - 2 and freq_mhz > pts[i + 1][0]:
            i += 1
        f0, v0, f1, v1 = self._segment(i)
        v = v0 + (v1 - v0) * (freq_mhz - f0) / (f1 - f0)
        return min(self.max_vcore_mv, max(self.min_vcore_mv, v))

    def max_freq_mhz(self, vcore_mv: float, ceiling_mhz: float = 10_000.0) -> float:
        """Highest frequency (up to `ceiling_mhz`) whose curve voltage is at most `vcore_mv`."""
        if self.vcore_mv(0.0) > vcore_mv:
            return 0.0
        if self.vcore_mv(ceiling_mhz) <= vcore_mv:
            return ceiling_mhz
        lo, hi = 0.0, ceiling_mhz
        for _ in range(50):
            mid = 0.5 * (lo + hi)
            if self.vcore_mv(mid) <= vcore_mv:
                lo = mid
            else:
                hi = mid
        return lo

    def supports(self, freq_mhz: float, vcore_mv: float) -> bool:
        """True when `vcore_mv` is enough for `freq_mhz` on this curve."""
        return self.vcore_mv(freq_mhz) <= vcore_mv + 1e-6


@dataclass(frozen=True)
class ModelParams:
    """Constants of the power model (per chip unless named otherwise)."""

    family: str
    chips: int
    k_dyn_w: float  # W / (MHz * V**2)
    c_static_w: float  # W / V**2 at LEAK_REF_C
    leak_per_c: float = LEAK_PER_C
    regulator_efficiency: float = 0.92
    overhead_w: float = 1.5  # fan, MCU, regulator quiescent (board, not per chip)
    small_cores: int = 0
    psu_efficiency: float = 1.0  # wall to board input (1: power means the board's input)

    @classmethod
    def for_family(
        cls,
        family: str,
        chips: int,
        *,
        chip_power_w: float | None = None,
        regulator_efficiency: float = 0.92,
        overhead_w: float = 1.5,
        psu_efficiency: float = 1.0,
    ) -> ModelParams:
        """Fit to one chip's power at the family default frequency/voltage and 60 degC."""
        prof = profile(family)
        p0 = chip_power_at_default_w(prof.family) if chip_power_w is None else chip_power_w
        v0 = prof.default_vcore_mv / 1000.0
        return cls(
            family=prof.family,
            chips=chips,
            k_dyn_w=p0 * (1.0 - STATIC_SHARE) / (prof.default_freq_mhz * v0 * v0),
            c_static_w=p0 * STATIC_SHARE / (v0 * v0),
            regulator_efficiency=regulator_efficiency,
            overhead_w=overhead_w,
            small_cores=prof.small_cores,
            psu_efficiency=psu_efficiency,
        )


class PowerModel:
    """Wall power of the board for (freq, vcore, temp) and the frequency for a power target.

    ``gain`` scales the chips' power; the governor may adapt it online (a slow gain estimate),
    the offset error is left to the governor's integral.
    """

    def __init__(self, params: ModelParams) -> None:
        self.params = params
        self.gain = 1.0

    def _leak(self, temp_c: float | None) -> float:
        t = MODEL_TEMP_C if temp_c is None else temp_c
        return max(0.2, 1.0 + self.params.leak_per_c * (t - LEAK_REF_C))

    def chip_power_w(self, freq_mhz: float, vcore_mv: float, temp_c: float | None = None) -> float:
        """One chip's power (W) at the core."""
        p = self.params
        v = vcore_mv / 1000.0
        dyn = p.k_dyn_w * max(0.0, freq_mhz)
        return self.gain * v * v * (dyn + p.c_static_w * self._leak(temp_c))

    def power_w(self, freq_mhz: float, vcore_mv: float, temp_c: float | None = None) -> float:
        """Board (wall) power with the chain hashing at this frequency and voltage."""
        p = self.params
        chain = p.chips * self.chip_power_w(freq_mhz, vcore_mv, temp_c)
        return (chain / p.regulator_efficiency + p.overhead_w) / p.psu_efficiency

    def _chip_share_w(self, power_w: float) -> float:
        """One chip's power at the core when the board draws `power_w` (inverse of the above)."""
        p = self.params
        return (power_w * p.psu_efficiency - p.overhead_w) * p.regulator_efficiency / p.chips

    def freq_for_power_at_vcore(
        self, power_w: float, vcore_mv: float, temp_c: float | None = None
    ) -> float:
        """Frequency giving `power_w` at a fixed voltage (may be negative or above any bound)."""
        p = self.params
        v = vcore_mv / 1000.0
        per_chip = self._chip_share_w(power_w)
        return (per_chip / (self.gain * v * v) - p.c_static_w * self._leak(temp_c)) / p.k_dyn_w

    def vcore_for_power_at_freq(
        self, power_w: float, freq_mhz: float, temp_c: float | None = None
    ) -> float:
        """Voltage giving `power_w` at a fixed frequency (0 when the power is below overhead)."""
        p = self.params
        per_chip = self._chip_share_w(power_w)
        denom = self.gain * (p.k_dyn_w * max(0.0, freq_mhz) + p.c_static_w * self._leak(temp_c))
        if per_chip <= 0 or denom <= 0:
            return 0.0
        return 1000.0 * math.sqrt(per_chip / denom)

    def curve_power_w(self, freq_mhz: float, curve: VfCurve, temp_c: float | None = None) -> float:
        """Power along the V/f curve."""
        return self.power_w(freq_mhz, curve.vcore_mv(freq_mhz), temp_c)

    def freq_for_power(
        self,
        power_w: float,
        curve: VfCurve,
        min_freq_mhz: float,
        max_freq_mhz: float,
        temp_c: float | None = None,
    ) -> float:
        """Frequency in [min, max] whose power on the V/f curve is `power_w` (bisection)."""
        lo, hi = float(min_freq_mhz), float(max_freq_mhz)
        if self.curve_power_w(lo, curve, temp_c) >= power_w:
            return lo
        if self.curve_power_w(hi, curve, temp_c) <= power_w:
            return hi
        for _ in range(40):
            mid = 0.5 * (lo + hi)
            if self.curve_power_w(mid, curve, temp_c) < power_w:
                lo = mid
            else:
                hi = mid
        return 0.5 * (lo + hi)

    def rated_max_w(self, curve: VfCurve, max_freq_mhz: float, temp_c: float) -> float:
        """The highest power a board of this model can be promised: the power at the family
        default frequency (the vendor's rating), and no more than a board drawing
        MODEL_TOLERANCE less than the model reaches at `max_freq_mhz` (with gain 1)."""
        gain, self.gain = self.gain, 1.0
        try:
            stock = min(float(profile(self.params.family).default_freq_mhz), max_freq_mhz)
            top = self.curve_power_w(max_freq_mhz, curve, temp_c)
            return min(self.curve_power_w(stock, curve, temp_c), (1.0 - MODEL_TOLERANCE) * top)
        finally:
            self.gain = gain

    def rated_min_w(self, curve: VfCurve, min_freq_mhz: float, temp_c: float) -> float:
        """The lowest power a board of this model can be promised to hold while mining: the
        power at `min_freq_mhz` of a board drawing MODEL_TOLERANCE more than the model (gain 1)."""
        gain, self.gain = self.gain, 1.0
        try:
            return (1.0 + MODEL_TOLERANCE) * self.curve_power_w(min_freq_mhz, curve, temp_c)
        finally:
            self.gain = gain

    def hashrate_ghs(self, freq_mhz: float) -> float:
        """Expected hashrate of the chain at a frequency (f * small cores * chips / 1000)."""
        return freq_mhz * self.params.small_cores * self.params.chips / 1000.0
