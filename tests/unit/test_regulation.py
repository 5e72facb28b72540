"""The regulation signal and the PJM-style RegD score: a follower is scored the way PJM would."""

from __future__ import annotations

import random

import pytest

from hil.report.regulation import regd_score, sample, score_points
from hil.site.signal import RegulationSignal

BASE_W = 900_000.0
BAND_W = 300_000.0


def signal_points(sig: RegulationSignal) -> list[tuple[float, float]]:
    return [(t, BASE_W + BAND_W * v) for t, v in sig.points()]


def follower(sig: RegulationSignal, delay_s: float = 0.0, noise_w: float = 0.0,
             seed: int = 5) -> list[tuple[float, float]]:
    """A response read every second: the signal `delay_s` late, plus meter noise."""
    rng = random.Random(seed)
    return [(float(t), sig.watts(t - delay_s, BASE_W, BAND_W) + rng.gauss(0.0, noise_w))
            for t in range(int(sig.duration_s))]


def score(sig: RegulationSignal, response: list[tuple[float, float]]):
    return score_points(signal_points(sig), response, 0.0, sig.duration_s, basepoint=BASE_W)


@pytest.fixture
def sig() -> RegulationSignal:
    return RegulationSignal.generate(1200.0, seed=3)


def test_signal_is_deterministic_bounded_held_and_energy_neutral():
    a = RegulationSignal.generate(600.0, seed=7)
    assert a == RegulationSignal.generate(600.0, seed=7)
    assert a != RegulationSignal.generate(600.0, seed=8)
    assert len(a.values) == 150  # one update every 4 s
    assert all(-1.0 <= v <= 1.0 for v in a.values)
    assert max(abs(v) for v in a.values) > 0.9  # uses the band
    assert abs(a.mean()) < 0.02
    assert a.max_step() <= 0.25 + 1e-9
    assert a.value(4.0) == a.value(7.99) != a.value(3.99)
    assert a.watts(5.0, BASE_W, BAND_W) == BASE_W + BAND_W * a.values[1]
    assert a.updates_between(0.0, 12.0) == [4.0, 8.0, 12.0]


def test_signal_rejects_nonsense():
    with pytest.raises(ValueError):
        RegulationSignal.generate(0.0)
    with pytest.raises(ValueError):
        RegulationSignal.generate(60.0, max_step=0.0)


def test_sampling_holds_the_latest_value():
    pts = [(0.0, 1.0), (4.0, 2.0), (8.0, 3.0), (12.0, 4.0)]
    assert sample(pts, 0.0, 30.0) == [1.0, 3.0, 4.0]
    assert sample(pts, -10.0, 10.0) == [1.0, 1.0]  # before the first point: the first


def test_a_perfect_follower_scores_one(sig):
    result = score(sig, follower(sig))
    assert result.samples == 120
    assert result.correlation == pytest.approx(1.0)
    assert result.delay == 1.0 and result.delay_s == 0.0
    assert result.precision == pytest.approx(1.0)
    assert result.score == pytest.approx(1.0) and result.passed


@pytest.mark.parametrize("delay_s", [60.0, 120.0])
def test_a_late_follower_loses_delay_score_in_proportion(sig, delay_s):
    result = score(sig, follower(sig, delay_s=delay_s))
    assert result.delay_s == delay_s
    assert result.delay == pytest.approx((300.0 - delay_s) / 300.0)
    assert result.correlation == pytest.approx(1.0)  # found at the right delay
    assert result.precision < 0.9  # the error shows up in precision too


def test_the_latency_allowance_forgives_ten_seconds_of_precision(sig):
    result = score(sig, follower(sig, delay_s=10.0))
    assert result.precision == pytest.approx(1.0)
    assert result.delay == pytest.approx(290.0 / 300.0)


def test_noise_lowers_precision_not_delay(sig):
    clean = score(sig, follower(sig))
    noisy = score(sig, follower(sig, noise_w=0.1 * BAND_W))
    assert noisy.delay == 1.0
    assert 0.5 < noisy.precision < clean.precision - 0.1
    assert noisy.correlation > 0.9
    louder = score(sig, follower(sig, noise_w=0.3 * BAND_W))
    assert louder.precision < noisy.precision


def test_a_constant_response_fails(sig):
    result = score(sig, [(0.0, BASE_W)])
    assert result.correlation == 0.0
    assert result.precision == 0.0  # the whole signal is error
    assert result.score < 0.5 and not result.passed


def test_an_unscorable_input_is_refused():
    with pytest.raises(ValueError, match="length"):
        regd_score([1.0] * 10, [1.0] * 9)
    with pytest.raises(ValueError, match="does not move"):
        regd_score([5.0] * 10, [1.0] * 10)
