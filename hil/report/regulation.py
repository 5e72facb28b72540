"""A regulation performance score computed the way PJM scores RegD resources (Manual 12,
"Performance Score"), from 10-s samples of the regulation signal and of the resource's response,
both as deviations from the regulation basepoint:

* correlation: the correlation of the signal with the response shifted by a delay d, for d = 0
  to 5 min in 10-s steps; d is the one that maximises correlation + delay score (the manual's
  "highest coincident Correlation and Delay score");
* delay: (5 min - d) / 5 min;
* precision: 1 - mean |response - signal| / mean |signal|, the response taken up to one 10-s
  sample late (the manual allows 10 s of signal-propagation latency), whichever fits better;
* score: the mean of the three, each clipped to [0, 1]; a resource passes at 0.75.

The manual scores an hour of samples; any scoring period works here (10 min or more lets the
whole 5-min delay range be searched; shorter periods search shifts up to half their length).
A response that does not move has correlation 0 (the manual leaves a flat *signal* to a slope
rule; a flat signal is refused here as unscorable).
"""

from __future__ import annotations

import bisect
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

SAMPLE_S = 10.0  # the scoring samples
MAX_DELAY_S = 300.0  # the delay range searched (5 min)
LATENCY_S = 10.0  # signal-propagation latency the precision allows
PASS_SCORE = 0.75


@dataclass(frozen=True)
class RegulationScore:
    """The score of one scoring period; `delay_s` is the delay the correlation was taken at."""

    correlation: float
    delay: float
    precision: float
    score: float
    delay_s: float
    samples: int
    passed: bool

    def to_json(self) -> dict[str, Any]:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}


def sample(points: Sequence[tuple[float, float]], t0_s: float, t1_s: float,
           step_s: float = SAMPLE_S) -> list[float]:
    """The value in force at t0_s, t0_s + step_s, ... < t1_s: the latest point at or before each
    instant (as a 10-s scan reads a signal and a meter); before the first point, the first."""
    if not points:
        raise ValueError("no points to sample")
    times = [t for t, _ in points]
    out = []
    n = int((t1_s - t0_s) / step_s + 1e-9)
    for k in range(n):
        i = bisect.bisect_right(times, t0_s + k * step_s) - 1
        out.append(points[max(i, 0)][1])
    return out


def regd_score(signal: Sequence[float], response: Sequence[float], *, basepoint: float = 0.0,
               step_s: float = SAMPLE_S, max_delay_s: float = MAX_DELAY_S,
               latency_s: float = LATENCY_S, pass_score: float = PASS_SCORE) -> RegulationScore:
    """Score a response against a signal, both sampled every `step_s` over the same period and
    in the same unit (e.g. W); `basepoint` is subtracted from both (the regulation midpoint)."""
    if len(signal) != len(response):
        raise ValueError(f"signal and response differ in length ({len(signal)} vs {len(response)})")
    if len(signal) < 6:
        raise ValueError(f"{len(signal)} samples: a score needs at least 6")
    s = [x - basepoint for x in signal]
    r = [x - basepoint for x in response]
    if _flat(s):
        raise ValueError("the signal does not move: nothing to score")
    n = len(s)
    max_shift = min(round(max_delay_s / step_s), n // 2)
    best: tuple[float, float, int] | None = None  # (corr + delay, corr, shift)
    for k in range(max_shift + 1):
        corr = _clip(_correlation(s[:n - k], r[k:]))
        delay = _clip((max_delay_s - k * step_s) / max_delay_s)
        if best is None or corr + delay > best[0]:
            best = (corr + delay, corr, k)
    assert best is not None
    _, correlation, shift = best
    delay = _clip((max_delay_s - shift * step_s) / max_delay_s)
    mean_signal = statistics.fmean(abs(x) for x in s)
    errors = [statistics.fmean(abs(r[t + lag] - s[t]) for t in range(n - lag))
              for lag in range(min(round(latency_s / step_s), n - 1) + 1)]
    precision = _clip(1.0 - min(errors) / mean_signal)
    score = (correlation + delay + precision) / 3.0
    return RegulationScore(correlation, delay, precision, score, shift * step_s, n,
                           score >= pass_score)


def score_points(signal: Sequence[tuple[float, float]], response: Sequence[tuple[float, float]],
                 t0_s: float, t1_s: float, *, basepoint: float = 0.0,
                 step_s: float = SAMPLE_S) -> RegulationScore:
    """`regd_score` of two time series ((t_s, value) points, e.g. the site target and the
    measured site power) over [t0_s, t1_s), sampled every `step_s`."""
    return regd_score(sample(signal, t0_s, t1_s, step_s), sample(response, t0_s, t1_s, step_s),
                      basepoint=basepoint, step_s=step_s)


def _flat(xs: Sequence[float]) -> bool:
    return max(xs) - min(xs) <= 1e-12 * max(1.0, max(abs(x) for x in xs))


def _correlation(xs: Sequence[float], ys: Sequence[float]) -> float:
    if len(xs) < 3 or _flat(xs) or _flat(ys):
        return 0.0
    return statistics.correlation(xs, ys)


def _clip(x: float) -> float:
    return min(1.0, max(0.0, x))
