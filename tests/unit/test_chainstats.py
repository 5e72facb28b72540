"""Per-chip statistics and hashrate estimate (agent/chain/stats.py)."""

from __future__ import annotations

import pytest

from agent.chain.stats import ChainStatistics

SMALL_CORES = 2040  # BM1370


def make_stats(n_chips: int = 4, ticket: float = 256) -> ChainStatistics:
    stats = ChainStatistics(small_cores=SMALL_CORES, window_s=30.0)
    stats.set_chips([i * (256 // n_chips) for i in range(n_chips)], 0.0)
    stats.set_ticket(ticket)
    stats.advance(0.0, 500.0, hashing=True)
    return stats


def snapshot(stats: ChainStatistics, now_s: float, n: int = 4):
    return stats.snapshot(now_s, "mining", "BM1370", 500.0, 500.0, n)


def test_chip_attribution_by_address_range():
    stats = make_stats(4)  # addresses 0, 64, 128, 192
    assert stats.chip_index(0) == 0
    assert stats.chip_index(63) == 0
    assert stats.chip_index(64) == 1
    assert stats.chip_index(200) == 3
    big = ChainStatistics(small_cores=SMALL_CORES)
    big.set_chips([i * 2 for i in range(128)], 0.0)
    assert big.chip_index(255) == 127
    assert big.chip_index(130) == 65


def test_hashrate_from_verified_nonces_at_ticket_difficulty():
    stats = make_stats(1)
    # 1 chip at 500 MHz: 1020 GH/s; one nonce per 256 * 2**32 hashes = every 1.078 s
    interval_s = 256 * 2**32 / (500e6 * SMALL_CORES)
    t = 0.0
    while t < 60.0:
        t += interval_s
        stats.advance(t, 500.0, hashing=True)
        stats.record_valid(0, t)
    snap = snapshot(stats, t, 1)
    assert snap.hashrate_ghs == pytest.approx(1020.0, rel=0.05)
    assert snap.expected_hashrate_ghs == pytest.approx(1020.0)
    assert snap.valid == snap.chips[0].valid > 50
    assert snap.chips[0].health == "ok"


def test_hashrate_counts_each_nonce_as_ticket_times_2_32_hashes():
    stats = make_stats(2, ticket=1024)
    for i in range(30):
        stats.record_valid(i % 2, float(i))
    snap = snapshot(stats, 30.0, 2)
    # 30 nonces in 30 s, each 1024 * 2**32 hashes
    assert snap.hashrate_ghs == pytest.approx(30 * 1024 * 2**32 / 30 / 1e9, rel=0.01)


def test_chip_without_nonces_becomes_silent_then_dead():
    stats = make_stats(2)
    interval_s = 256 * 2**32 / (500e6 * SMALL_CORES)
    t = 0.0
    while t < 70 * interval_s:
        t += interval_s
        stats.advance(t, 500.0, hashing=True)
        stats.record_valid(0, t)
        chips = snapshot(stats, t, 2).chips
        if t > 5 * interval_s and t < 11 * interval_s:
            assert chips[1].health == "ok"
    snap = snapshot(stats, t, 2)
    assert snap.chips[0].health == "ok"
    assert snap.chips[1].health == "dead"
    assert snap.chips[1].silence_intervals > 40
    assert snap.chips_ok == 1


def test_silence_counts_expected_work_not_wall_time():
    stats = make_stats(1)
    stats.record_valid(0, 0.0)
    # chip idle at a very low frequency for a long time: little work expected, not dead
    stats.advance(0.0, 10.0, hashing=True)
    stats.advance(60.0, 10.0, hashing=True)
    assert snapshot(stats, 60.0, 1).chips[0].silence_intervals < 2
    # not hashing at all (chain idle): no silence accrues
    stats.advance(60.0, 0.0, hashing=False)
    stats.advance(600.0, 0.0, hashing=False)
    assert snapshot(stats, 600.0, 1).chips[0].silence_intervals < 2


def test_high_hardware_error_ratio_marks_chip_flaky():
    stats = make_stats(2)
    for i in range(40):
        stats.record_valid(0, i * 0.5)
        stats.record_valid(1, i * 0.5) if i % 4 == 0 else stats.record_hw_error(1, i * 0.5)
    snap = snapshot(stats, 20.0, 2)
    assert snap.chips[0].health == "ok"
    assert snap.chips[1].health == "flaky"
    assert snap.hw_errors == 30


def test_reinit_keeps_counters_and_restarts_silence():
    stats = make_stats(2)
    stats.record_valid(0, 1.0)
    stats.record_hw_error(1, 1.0)
    stats.advance(500.0, 500.0, hashing=True)
    assert snapshot(stats, 500.0, 2).chips[1].health == "dead"
    stats.set_chips([0, 128], 500.0)
    snap = snapshot(stats, 500.0, 2)
    assert snap.chips[0].valid == 1 and snap.chips[1].hw_errors == 1
    assert snap.chips[1].health == "ok"


def test_automatic_ticket_keeps_about_64_nonces_per_second():
    from agent.chain.stats import ticket_for

    # 4 x BM1370 at 525 MHz: 4284 GH/s = 997 difficulty-1 nonces/s -> ticket 8 (125 nonces/s)
    assert ticket_for(4284.0) == 8
    assert ticket_for(1071.0) == 2
    assert ticket_for(10.0) == 1  # a slow chain never goes below difficulty 1
    assert ticket_for(137_000.0) == 256  # a big chain stays at the usual 256


def test_chain_hashrate_follows_a_load_change_within_seconds():
    stats = make_stats(4, ticket=8)

    def run(t0: float, t1: float, freq_mhz: float) -> float:
        # nonces arrive at the rate the frequency gives (deterministic spacing)
        per_nonce = 8 * 2**32
        interval_s = per_nonce / (freq_mhz * 1e6 * SMALL_CORES * 4)
        t = t0
        while t < t1:
            t += interval_s
            stats.advance(t, freq_mhz, hashing=True)
            stats.record_valid(int(t / interval_s) % 4, t)
        return t

    t = run(0.0, 40.0, 500.0)
    assert snapshot(stats, t).hashrate_ghs == pytest.approx(4080.0, rel=0.03)
    t = run(t, t + 8.0, 150.0)  # load cut to 30 %: the figure follows within seconds
    after = stats.snapshot(t, "mining", "BM1370", 150.0, 150.0, 4).hashrate_ghs
    assert after == pytest.approx(1224.0, rel=0.05)
