"""The pool figures of a HIL run with a `[pool]` part: what the lab pools found (every share
checked with hashlib there), what the agent counted (its last telemetry), and how long the pool
cues left the chips without pool work.

Definitions:

* submitted: every `mining.submit` the pools judged; stale %: the shares the pools answered
  stale plus those the agent dropped as stale (their job was gone), of all it found;
* count mismatch: |agent's accepted - the pools' accepted| + |agent's rejected - the pools'
  rejected|, counting only the verdicts the pools wrote to the agent (the pools close at the end
  of the play, so both sides are final);
* pool-side hashrate: the difficulty the pools credited over the play x 2**32 / its length. The
  emulator's nonces are real solutions at its small emulation difficulty D while each stands for
  ticket-difficulty work, so the credited figure is scaled by ticket / D before it is compared
  with the emulator's true hashrate;
* failover: from a cue that cut the first pool off (down, drop) to the first job any pool sent
  the agent after it; failback: from the first pool's return to its first job to the agent.
"""

from __future__ import annotations

from typing import Any

from hil.report.recording import Recording

TWO32 = 2.0**32


def _agent_counts(rec: Recording) -> dict[str, Any] | None:
    """The agent's own share counts: the last telemetry that has them of each agent process
    (a restarted agent counts from 0 again), summed."""
    last: dict[Any, dict[str, Any]] = {}
    for m in rec.telemetry:
        if "pool_accepted" in m:
            last[m.get("epoch", 0)] = m
    if not last:
        return None
    runs = list(last.values())
    out: dict[str, Any] = {"pool": runs[-1].get("pool"),
                           "pool_hashrate_ghs": runs[-1].get("pool_hashrate_ghs")}
    for key in ("pool_accepted", "pool_rejected", "pool_stale"):
        values = [m.get(key) for m in runs]
        out[key] = sum(values) if all(isinstance(v, int) for v in values) else None
    return out


def _longest(cues: list[dict[str, Any]], kinds: tuple[str, ...], key: str) -> float | None:
    """The longest `key` of the cues of `kinds`; None when one of them never got there."""
    values = [c.get(key) for c in cues if c["kind"] in kinds and key in c]
    if not values or any(v is None for v in values):
        return None
    return max(float(v) for v in values if v is not None)


def pool_summary(rec: Recording) -> dict[str, Any] | None:
    """The pool figures of the run (None: it mined no pool work)."""
    side = rec.pool
    if not side:
        return None
    pools = side["pools"]

    def total(outcome: str) -> int:
        return sum(int(p["counts"].get(outcome, 0)) for p in pools)

    outcomes = ("accepted", "rejected", "stale", "duplicate", "invalid", "unauthorized")
    counts = {o: total(o) for o in outcomes}
    submitted = sum(counts.values())
    agent = _agent_counts(rec)
    answered_accepted = sum(p["answered_accepted"] for p in pools)
    answered_rejected = sum(p["answered_rejected"] for p in pools)
    mismatch = None
    if agent is not None and isinstance(agent["pool_accepted"], int) \
            and isinstance(agent["pool_rejected"], int):
        mismatch = abs(agent["pool_accepted"] - answered_accepted) + \
            abs(agent["pool_rejected"] - answered_rejected)
    play_s = side.get("play_s") or 0.0
    credited = sum(p["accepted_difficulty_play"] for p in pools) * TWO32 / play_s / 1e9 \
        if play_s > 0 else None
    scale = (side["ticket_difficulty"] / side["nonce_difficulty"]
             if side.get("ticket_difficulty") and side.get("nonce_difficulty") else None)
    true_rates = [v for _, v in rec.truth_hashrate_ghs.points(0.0, play_s)]
    true_ghs = sum(true_rates) / len(true_rates) if true_rates else None
    scaled = credited * scale if credited is not None and scale is not None else None
    error_pct = (100.0 * abs(scaled - true_ghs) / true_ghs
                 if scaled is not None and true_ghs else None)
    cues = side.get("cues", [])
    # stale: answered so by a pool, or dropped by the agent (its job gone before it was sent)
    stale, found = counts["stale"], submitted
    if agent is not None and isinstance(agent["pool_stale"], int):
        dropped = max(0, agent["pool_stale"] - counts["stale"])
        stale, found = stale + dropped, found + dropped
    return {
        "pools": [p["url"] for p in pools],
        "share_difficulty": side["share_difficulty"],
        "submitted": submitted,
        **counts,
        "stale_pct": round(100.0 * stale / found, 3) if found else None,
        "agent": agent,
        "answered_accepted": answered_accepted,
        "answered_rejected": answered_rejected,
        "count_mismatch": mismatch,
        "hashrate_ghs_credited": _round(credited, 6),
        "hashrate_ghs_emulated": _round(scaled, 2),
        "hashrate_ghs_true": _round(true_ghs, 2),
        "hashrate_error_pct": _round(error_pct, 2),
        "failover_s": _longest(cues, ("down",), "without_work_s"),
        "reconnect_s": _longest(cues, ("drop",), "without_work_s"),
        "failback_s": _longest(cues, ("down",), "back_after_s"),
        "cues": cues,
    }


def pool_figures(summary: dict[str, Any]) -> dict[str, float | None]:
    """The pool criteria's figures (hil.scenario.CRITERIA), None without pool work."""
    p = summary.get("pool") or {}
    return {
        "pool_invalid_shares": p.get("invalid"),
        "pool_count_mismatch": p.get("count_mismatch"),
        "pool_stale_pct": p.get("stale_pct"),
        "pool_failover_s": p.get("failover_s"),
        "pool_failback_s": p.get("failback_s"),
        "pool_hashrate_error_pct": p.get("hashrate_error_pct"),
    }


def pool_section(summary: dict[str, Any], as_text: Any) -> list[str]:
    """The markdown lines of the pool figures (none without pool work)."""
    p = summary.get("pool")
    if not p:
        return []
    agent = p["agent"] or {}
    lines = [
        "## Pool", "",
        f"Mined to {', then '.join(p['pools'])} at share difficulty "
        f"{p['share_difficulty']:.3g}; every share checked by the lab pool with hashlib.", "",
        "| figure | value |", "|---|---|",
        f"| shares submitted / accepted / invalid | {p['submitted']} / {p['accepted']} / "
        f"{p['invalid']} |",
        f"| rejected by the pools: stale / duplicate / other | {p['stale']} / "
        f"{p['duplicate']} / {p['rejected']} |",
        f"| stale (answered so, or dropped by the agent: its job was gone) | "
        f"{as_text(p['stale_pct'], ' %')} of the shares found |",
        f"| agent's count accepted / rejected / stale | {as_text(agent.get('pool_accepted'))} / "
        f"{as_text(agent.get('pool_rejected'))} / {as_text(agent.get('pool_stale'))} "
        f"(pools: {p['answered_accepted']} / {p['answered_rejected']}; mismatch "
        f"{as_text(p['count_mismatch'])}) |",
        f"| hashrate: pool-credited (emulated) / true | "
        f"{as_text(p['hashrate_ghs_emulated'], ' GH/s')} / "
        f"{as_text(p['hashrate_ghs_true'], ' GH/s')} "
        f"(error {as_text(p['hashrate_error_pct'], ' %')}) |",
    ]
    if p["cues"]:
        lines.append(f"| without pool work: failover / reconnect; failback | "
                     f"{as_text(p['failover_s'])} / {as_text(p['reconnect_s'], ' s')}; "
                     f"{as_text(p['failback_s'], ' s')} |")
    lines.append("")
    for c in p["cues"]:
        end = f" to {c['end_s']:.1f} s" if c.get("end_s") is not None else ""
        extra = "".join(f"; {name} {as_text(c[k], ' s')}" for k, name in (
            ("without_work_s", "without pool work"), ("back_after_s", "its work back after"))
            if k in c)
        lines.append(f"* {c['t_s']:.1f} s{end}: {c['label']}{extra}")
    return [*lines, ""] if p["cues"] else lines


def _round(x: float | None, nd: int) -> float | None:
    return None if x is None else round(float(x), nd)
