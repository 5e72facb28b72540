"""The [pool] part of a HIL scenario: the lab pools, their work cadence and the cues, checked
like the rest of a scenario (a ScenarioError naming the key), and kept by the short version."""

from __future__ import annotations

from typing import Any

import pytest

from hil.scenario import ScenarioError, load, parse

HEAD = {"scenario": {"name": "x", "duration_s": 100}}


def with_pool(pool: dict[str, Any]) -> dict[str, Any]:
    return {**HEAD, "pool": pool}


def test_the_pool_part_with_its_cues_in_time_order():
    s = parse(with_pool({"count": 2, "refuse_version_rolling": [1], "share_pct": 10,
                         "event": [{"at_s": 40, "kind": "down", "duration_s": 30},
                                   {"at_s": 5, "kind": "drop"},
                                   {"at_s": 10, "kind": "blocks", "duration_s": 8,
                                    "interval_s": 1},
                                   {"at_s": 20, "kind": "reject", "duration_s": 4, "code": 21}]}))
    assert s.pool is not None
    assert (s.pool.count, s.pool.refuse_version_rolling, s.pool.share_pct) == (2, (1,), 10.0)
    assert [(e.at_s, e.kind) for e in s.pool.events] == [
        (5.0, "drop"), (10.0, "blocks"), (20.0, "reject"), (40.0, "down")]
    assert s.pool.events[-1].end_s() == 70.0 and s.pool.events[2].code == 21
    assert parse(HEAD).pool is None


@pytest.mark.parametrize(("pool", "message"), [
    ({"count": 3}, "pool.count: 3 is out of range [1, 2]"),
    ({"refuse_version_rolling": [1]}, "pool.refuse_version_rolling[0]: 1 is not a pool"),
    ({"share_pct": 0}, "pool.share_pct: 0 is out of range"),
    ({"colour": "red"}, "pool.colour: unknown key"),
    ({"event": {"at_s": 1, "kind": "drop"}}, "pool.event: expected a list of tables"),
    ({"event": [{"at_s": 1, "kind": "down"}]}, "pool.event[0].duration_s: required"),
    ({"event": [{"at_s": 1, "kind": "drop", "duration_s": 2}]},
     "pool.event[0].duration_s: unknown key"),
    ({"event": [{"at_s": 1, "kind": "dorp"}]}, "did you mean 'drop'?"),
    ({"event": [{"at_s": 1, "kind": "drop", "pool": 1}]}, "pool.event[0].pool: 1 is not a pool"),
    ({"event": [{"at_s": 101, "kind": "drop"}]}, "pool.event[0].at_s: 101 is out of range"),
    ({"event": [{"at_s": 1, "kind": "reject", "duration_s": 2, "code": 30}]},
     "pool.event[0].code: 30 is out of range [20, 25]"),
])
def test_a_bad_pool_part_names_the_key(pool, message):
    with pytest.raises(ScenarioError) as exc:
        parse(with_pool(pool))
    assert message in str(exc.value)


def test_the_short_version_keeps_the_cues_before_its_end():
    s = parse({**with_pool({"event": [{"at_s": 5, "kind": "drop"},
                                      {"at_s": 50, "kind": "drop"}]}),
               "short": {"until_s": 30}})
    short = s.shortened()
    assert short.pool is not None and [e.at_s for e in short.pool.events] == [5.0]


def test_the_shipped_pool_scenarios():
    assert load("solar_surplus").pool is not None  # `make demo` mines to the rig's pool
    faults = load("pool_faults")
    assert faults.pool is not None and faults.pool.count == 2
    assert {e.kind for e in faults.pool.events} == {"drop", "blocks", "reject", "down"}
    assert faults.criteria["pool_failover_s"] <= 5.0
