"""Failover over the ordered pool list: the next pool after a bounded time, jittered backoff,
back to the first as soon as it has work."""

from __future__ import annotations

import random

import pytest

from agent.pool.failover import Failover


def make(count: int = 3, **kw) -> Failover:
    kw.setdefault("failover_after_s", 30.0)
    return Failover(count, 0.0, rng=random.Random(1), **kw)


def test_only_the_first_pool_is_tried_at_first():
    f = make()
    assert f.to_start(0.0) == [0] and f.active is None
    f.started(0)
    assert f.to_start(0.0) == []


def test_the_next_pool_is_tried_after_the_bounded_time_and_the_first_keeps_being_retried():
    f = make(retry_min_s=1.0, retry_max_s=8.0)
    f.started(0)
    retry = f.lost(0, 1.0)
    assert 1.5 <= retry <= 2.0  # 1 s, jittered to 50-100 %
    assert f.to_start(1.2) == []
    assert f.to_start(retry) == [0]
    assert f.wanted(29.9) == [True, False, False]
    assert f.wanted(30.0) == [True, True, False]
    assert 1 in f.to_start(30.0)
    assert f.next_change_s(20.0) <= 21.0
    f.started(1)
    f.has_work(1)
    assert f.active == 1
    assert f.wanted(100.0) == [True, True, False]  # pool 2 is not needed: pool 1 has work


def test_backoff_doubles_up_to_the_cap_with_jitter():
    f = make(retry_min_s=1.0, retry_max_s=8.0)
    delays = []
    for _ in range(6):
        f.started(0)
        delays.append(f.lost(0, 100.0) - 100.0)
    for delay, full in zip(delays, [1, 2, 4, 8, 8, 8], strict=True):
        assert 0.5 * full <= delay <= full
    assert len(set(delays)) == len(delays)  # jittered


def test_back_to_the_first_pool_when_it_has_work_again():
    f = make()
    f.started(0)
    f.lost(0, 0.0)
    f.started(1)
    f.has_work(1)
    assert f.active == 1 and f.to_release(50.0) == []
    f.started(0)  # retried meanwhile
    f.has_work(0)
    assert f.active == 0
    assert f.to_release(50.0) == [1]
    f.released(1, 50.0)
    assert f.to_start(50.0) == []  # not wanted while pool 0 has work
    # pool 0 fails again: pool 1 is wanted only after the bounded time once more
    f.lost(0, 60.0)
    assert f.wanted(70.0) == [True, False, False]
    assert f.wanted(90.0)[1]
    assert 1 in f.to_start(90.0)


def test_every_pool_down_tries_them_all_in_turn():
    f = make(count=3, failover_after_s=10.0)
    f.started(0)
    f.lost(0, 0.0)
    assert f.wanted(10.0) == [True, True, False]
    f.started(1)
    f.lost(1, 10.0)
    assert f.wanted(20.0) == [True, True, True]


def test_a_redirect_waits_as_asked_without_counting_a_failure():
    f = make()
    f.started(0)
    f.has_work(0)
    f.redirected(0, 5.0, 3.0)
    assert f.links[0].failures == 0 and f.links[0].next_try_s == 8.0
    assert f.active is None


def test_at_least_one_pool():
    with pytest.raises(ValueError):
        Failover(0, 0.0)
