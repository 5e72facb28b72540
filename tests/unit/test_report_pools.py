"""The pool figures of a HIL run (hil.report.pools): the lab pools' counts against the agent's,
stale %, the credited hashrate scaled to the emulation, the seconds without pool work, and the
pool criteria judged on them."""

from __future__ import annotations

from typing import Any

import pytest

from hil.report import Recording, markdown, summarize
from hil.report.recording import read_recording, write_recording
from hil.scenario import POOL_CRITERIA, parse

TICKET, NONCE_D = 256.0, 2.0**-24


def pool_side(accepted: int = 900, rejected: int = 0, stale: int = 5, invalid: int = 0,
              cues: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    share_d = NONCE_D * 4
    counts = {"accepted": accepted, "stale": stale, "invalid": invalid, "rejected": rejected}
    return {
        "worker": "w", "share_difficulty": share_d, "ticket_difficulty": TICKET,
        "nonce_difficulty": NONCE_D, "play_s": 100.0, "cues": cues or [],
        "pools": [{"url": "stratum+tcp://127.0.0.1:1", "version_rolling": True,
                   "difficulty": share_d, "counts": counts, "answered_accepted": accepted,
                   "answered_rejected": rejected + stale + invalid,
                   "accepted_difficulty_play": accepted * share_d, "connections": 1}],
    }


def recording(side: dict[str, Any], agent: dict[str, Any] | None,
              criteria: dict[str, float] | None = None, true_ghs: float = 0.0) -> Recording:
    rec = Recording(scenario="synthetic", speed=1.0, rated_w=80.0, min_w=20.0,
                    ramp_max_w_s=10.0, temp_max_c=75.0, end_s=100.0,
                    criteria=dict(criteria or POOL_CRITERIA))
    for i in range(101):
        rec.truth_power_w.add(float(i), 50.0)
        rec.truth_hashrate_ghs.add(float(i), true_ghs)
    rec.telemetry = [{"t_s": 1.0, "seq": 1, "epoch": 0, "power_w": 50.0, **(agent or {})}]
    rec.pool = side
    return rec


def agent_counts(accepted: int, rejected: int, stale: int) -> dict[str, Any]:
    return {"pool": None, "pool_accepted": accepted, "pool_rejected": rejected,
            "pool_stale": stale, "pool_hashrate_ghs": 0.0}


def test_counts_that_match_pass_and_stale_counts_the_agents_own_drops_too():
    # the agent dropped 5 stale shares itself (their job was gone) besides the pool's 5
    s = summarize(recording(pool_side(), agent_counts(900, 5, 10)))
    p = s["pool"]
    assert (p["submitted"], p["accepted"], p["count_mismatch"]) == (905, 900, 0)
    assert p["stale_pct"] == pytest.approx(100 * 10 / 910, abs=1e-3)
    assert s["passed"]
    assert "## Pool" in markdown(s) and "mismatch 0" in markdown(s)


@pytest.mark.parametrize(("agent", "invalid", "failed"), [
    (agent_counts(899, 5, 5), 0, {"pool_count_mismatch"}),  # one acceptance the agent missed
    (agent_counts(900, 6, 5), 1, {"pool_invalid_shares"}),  # an invalid share fails the run
    (None, 0, {"pool_count_mismatch"}),  # no count from the agent: not measured, failed
])
def test_a_count_the_agent_got_wrong_or_an_invalid_share_fails(agent, invalid, failed):
    s = summarize(recording(pool_side(invalid=invalid), agent))
    assert {c["name"] for c in s["criteria"] if not c["ok"]} == failed


def test_the_credited_hashrate_is_scaled_to_the_emulation_and_compared_with_the_truth():
    # 900 shares of 4 D in 100 s, each nonce at D standing for ticket-difficulty work
    credited = 900 * 4 * NONCE_D * 2**32 / 100.0 / 1e9
    true_ghs = credited * TICKET / NONCE_D * 1.25
    s = summarize(recording(pool_side(), agent_counts(900, 5, 5),
                            {"pool_hashrate_error_pct": 25.0}, true_ghs=true_ghs))
    assert s["pool"]["hashrate_ghs_emulated"] == pytest.approx(true_ghs / 1.25, rel=1e-3)
    assert s["pool"]["hashrate_error_pct"] == pytest.approx(20.0, abs=0.01)
    assert s["passed"]


def test_failover_and_failback_are_the_longest_of_the_cues_and_a_cue_never_served_fails():
    cues = [{"t_s": 10.0, "end_s": None, "kind": "drop", "pool": 0, "label": "drop",
             "without_work_s": 0.7},
            {"t_s": 20.0, "end_s": 40.0, "kind": "down", "pool": 0, "label": "down",
             "without_work_s": 3.1, "back_after_s": 2.5},
            {"t_s": 50.0, "end_s": 60.0, "kind": "down", "pool": 0, "label": "down again",
             "without_work_s": 4.2, "back_after_s": 1.0}]
    bounds = {"pool_failover_s": 5.0, "pool_failback_s": 3.0}
    s = summarize(recording(pool_side(cues=cues), agent_counts(900, 5, 5), bounds))
    assert (s["pool"]["failover_s"], s["pool"]["reconnect_s"], s["pool"]["failback_s"]) == \
        (4.2, 0.7, 2.5)
    assert s["passed"]
    cues[1]["without_work_s"] = None  # the agent never had pool work again
    s = summarize(recording(pool_side(cues=cues), agent_counts(900, 5, 5), bounds))
    assert [c["name"] for c in s["criteria"] if not c["ok"]] == ["pool_failover_s"]


def test_an_agent_restarted_during_the_run_counts_from_0_and_its_runs_are_summed():
    rec = recording(pool_side(), agent_counts(300, 2, 2))
    rec.telemetry[0]["epoch"] = 0
    rec.telemetry.append({"t_s": 50.0, "seq": 1, "epoch": 1, **agent_counts(600, 3, 3)})
    assert summarize(rec)["pool"]["count_mismatch"] == 0


def test_a_run_without_pools_has_no_pool_figures_and_the_recording_keeps_them(tmp_path):
    rec = recording({}, None, criteria={})
    assert summarize(rec)["pool"] is None
    write_recording(recording(pool_side(), agent_counts(900, 5, 5)), tmp_path)
    again = read_recording(tmp_path / "recording.json")
    assert again.pool["pools"][0]["answered_accepted"] == 900
    assert summarize(again)["pool"]["count_mismatch"] == 0


def test_a_scenario_with_a_pool_part_is_judged_on_invalid_shares_and_counts_by_default():
    s = parse({"scenario": {"name": "x", "duration_s": 60}, "pool": {}})
    assert s.criteria["pool_invalid_shares"] == 0 and s.criteria["pool_count_mismatch"] == 0
    assert "pool_invalid_shares" not in parse({"scenario": {"name": "x",
                                                            "duration_s": 60}}).criteria
