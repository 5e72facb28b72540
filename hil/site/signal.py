"""A regulation-style signal: like PJM's RegD or ERCOT's LFC deployments, a normalised request in
[-1, 1] (share of the regulation band around a basepoint) updated every `period_s` (4 s by
default), fast-moving and energy neutral over its duration.

It is a seeded Ornstein-Uhlenbeck process (random moves that revert to 0 with time constant
`tau_s`) smoothed by a first-order filter (`smooth_s`, as an area-control-error signal is
filtered before it is sent), centred so its mean over the duration is 0 and scaled so its
largest excursion is 1 (with the defaults a 4-s update moves about 5 % of the band on average);
`max_step` bounds the change between two updates (so a site with a ramp limit can follow it).
The same seed gives the same signal. `watts(t_s, basepoint_w, band_w)` is the site target
basepoint + band x signal.
"""

from __future__ import annotations

import bisect
import math
import random
from dataclasses import dataclass


@dataclass(frozen=True)
class RegulationSignal:
    """A precomputed regulation signal over [0, duration_s) (times relative to its start)."""

    values: tuple[float, ...]
    period_s: float

    @classmethod
    def generate(cls, duration_s: float, *, period_s: float = 4.0, seed: int = 1,
                 tau_s: float = 60.0, smooth_s: float = 12.0,
                 max_step: float | None = 0.25) -> RegulationSignal:
        """A signal of ceil(duration_s / period_s) updates; see the module docstring."""
        if min(duration_s, period_s, tau_s, smooth_s) <= 0:
            raise ValueError("duration_s, period_s, tau_s and smooth_s must be positive")
        if max_step is not None and not 0 < max_step <= 2:
            raise ValueError("max_step must be in (0, 2]")
        n = max(2, math.ceil(duration_s / period_s))
        rng = random.Random(seed)
        a = math.exp(-period_s / tau_s)
        b = math.exp(-period_s / smooth_s)
        noise = math.sqrt(1.0 - a * a)
        x = smoothed = 0.0
        raw = []
        for _ in range(n):
            x = a * x + noise * rng.gauss(0.0, 1.0)
            smoothed = b * smoothed + (1.0 - b) * x
            raw.append(smoothed)
        values = _normalise(raw)
        if max_step is not None:
            values = _normalise(_rate_limit(values, max_step))
            values = _rate_limit(values, max_step)  # normalising may have stretched a step
        return cls(tuple(values), float(period_s))

    @property
    def duration_s(self) -> float:
        return len(self.values) * self.period_s

    def value(self, t_s: float) -> float:
        """The request in force at `t_s` (held between updates; the ends held outside)."""
        k = math.floor(t_s / self.period_s) if t_s > 0 else 0
        return self.values[min(k, len(self.values) - 1)]

    def watts(self, t_s: float, basepoint_w: float, band_w: float) -> float:
        """The site target at `t_s`: basepoint + band x request."""
        return basepoint_w + band_w * self.value(t_s)

    def points(self, start_s: float = 0.0) -> list[tuple[float, float]]:
        """(time of each update, its value), times offset by `start_s`."""
        return [(start_s + k * self.period_s, v) for k, v in enumerate(self.values)]

    def updates_between(self, t0_s: float, t1_s: float) -> list[float]:
        """Update times in (t0_s, t1_s], relative to the signal's start."""
        times = [k * self.period_s for k in range(len(self.values))]
        return times[bisect.bisect_right(times, t0_s):bisect.bisect_right(times, t1_s)]

    def mean(self) -> float:
        return sum(self.values) / len(self.values)

    def max_step(self) -> float:
        """The largest change between two updates."""
        return max(abs(b - a) for a, b in zip(self.values, self.values[1:], strict=False))


def _normalise(xs: list[float]) -> list[float]:
    """Mean 0, largest excursion 1."""
    mean = sum(xs) / len(xs)
    centred = [x - mean for x in xs]
    peak = max(abs(x) for x in centred) or 1.0
    return [x / peak for x in centred]


def _rate_limit(xs: list[float], max_step: float) -> list[float]:
    out = [xs[0]]
    for x in xs[1:]:
        out.append(out[-1] + max(-max_step, min(max_step, x - out[-1])))
    return out
