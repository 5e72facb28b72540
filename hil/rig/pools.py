"""The rig's pools: the lab pools (`hil.pool.LabPool`) of a scenario's `[pool]` part, started
before the agent (which gets their URLs as its `[[pool]]` list), their work changed on the
scenario's clock (a job every `job_interval_s`, a block every `block_interval_s`), the
`[[pool.event]]` cues played (a drop, an outage, a clean_jobs storm, a rejected burst), and what
the pools saw read for the report.

Times: the scenario's in scenario seconds (`step` gets the scenario time), the records in rig
seconds.
At the end the pools close (`finish`): from then on neither side's counts move, so the agent's
last telemetry can be compared with the pools' own counts share for share.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from hil.pool import LabPool
from hil.scenario import PoolEvent, PoolSpec, Scenario

#: the user the agent mines as at the lab pools
WORKER = "bc1qlabrig.rig0"


class RigPools:
    """The lab pools of one run; `step(t_sc)` every tick, `finish()` once the play is over."""

    def __init__(self, spec: PoolSpec, nonce_difficulty: float, now: Callable[[], float],
                 note: Callable[[str], None]) -> None:
        self.spec = spec
        self.now = now
        self.note = note
        self.nonce_difficulty = nonce_difficulty
        self.difficulty = nonce_difficulty * 100.0 / spec.share_pct
        self.pools = [
            LabPool(self.difficulty, name=f"lab-pool-{i}",
                    configure="refuse" if i in spec.refuse_version_rolling else "grant")
            for i in range(spec.count)]
        self.records: list[dict[str, Any]] = []  # the cues played, as the report reads them
        self._events = list(spec.events)
        self._started = [False] * len(self._events)
        self._ended = [False] * len(self._events)
        self._storm_next: dict[int, float] = {}
        self._record_of: dict[int, dict[str, Any]] = {}
        self._next_job_sc = spec.job_interval_s
        self._next_block_sc = spec.block_interval_s
        self.finished_s: float | None = None

    @classmethod
    def for_scenario(cls, scenario: Scenario, nonce_difficulty: float | None,
                     now: Callable[[], float], note: Callable[[str], None]) -> RigPools:
        """The pools of `scenario`'s [pool] part. Their difficulty is set from the difficulty
        of the nonces the chips return: the emulator's, else the one the scenario gives the
        agent ([device.agent.chain] nonce_difficulty or ticket_difficulty, else 256)."""
        assert scenario.pool is not None
        if nonce_difficulty is None:
            chain = scenario.device.agent.get("chain", {})
            nonce_difficulty = float(chain.get("nonce_difficulty")
                                     or chain.get("ticket_difficulty") or 256.0)
        return cls(scenario.pool, nonce_difficulty, now, note)

    @property
    def urls(self) -> list[str]:
        return [p.url for p in self.pools]

    def agent_entries(self) -> list[dict[str, Any]]:
        """The agent's [[pool]] entries: the lab pools in priority order."""
        return [{"url": url, "user": WORKER} for url in self.urls]

    def start(self) -> None:
        for pool in self.pools:
            pool.start()
        self.note("lab pools " + ", ".join(
            f"{p.url} ({'no ' if p.configure == 'refuse' else ''}version rolling)"
            for p in self.pools) + f", share difficulty {self.difficulty:.3g}")

    def stop(self) -> None:
        for pool in self.pools:
            pool.stop()

    # -- the play ---------------------------------------------------------------------------------

    def step(self, t_sc: float) -> None:
        """The work changes and the cues due at scenario time `t_sc`."""
        if t_sc >= self._next_block_sc:
            self._next_block_sc += self.spec.block_interval_s
            self._next_job_sc = t_sc + self.spec.job_interval_s
            for pool in self.pools:
                pool.new_block()
        elif t_sc >= self._next_job_sc:
            self._next_job_sc += self.spec.job_interval_s
            for pool in self.pools:
                pool.new_job()
        for i, e in enumerate(self._events):
            if not self._started[i] and t_sc >= e.at_s:
                self._started[i] = True
                self._start(i, e)
            if self._started[i] and not self._ended[i] and t_sc >= e.end_s():
                self._ended[i] = True
                self._end(i, e)
        for i, due in list(self._storm_next.items()):
            if t_sc >= due:
                self.pools[self._events[i].pool].new_block()
                self._storm_next[i] = due + self._events[i].interval_s

    def _start(self, i: int, e: PoolEvent) -> None:
        pool = self.pools[e.pool]
        t = self.now()
        record: dict[str, Any] = {"t_s": round(t, 2), "end_s": None, "kind": e.kind,
                                  "pool": e.pool, "label": e.label or f"pool {e.pool} {e.kind}"}
        if e.kind == "drop":
            pool.drop_connections()
        elif e.kind == "down":
            pool.go_down()
        elif e.kind == "blocks":
            pool.new_block()
            self._storm_next[i] = e.at_s + e.interval_s
        elif e.kind == "reject":
            pool.reject_shares(e.code, "Rejected (a lab pool cue)")
        self.records.append(record)
        self._record_of[i] = record
        self.note(f"pool cue: {record['label']}")

    def _end(self, i: int, e: PoolEvent) -> None:
        if e.kind != "drop":  # a drop is a moment
            self._record_of[i]["end_s"] = round(self.now(), 2)
        if e.kind == "down":
            self.pools[e.pool].come_up()
            self.note(f"pool {e.pool} is back")
        elif e.kind == "blocks":
            self._storm_next.pop(i, None)
        elif e.kind == "reject":
            self.pools[e.pool].accept_shares()

    # -- the end ----------------------------------------------------------------------------------

    def finish(self) -> None:
        """The play is over: the cues still on end, then every pool closes (both sides' share
        counts are final from here on)."""
        for i, e in enumerate(self._events):
            if self._started[i] and not self._ended[i]:
                self._ended[i] = True
                self._end(i, e)
        self.finished_s = self.now()
        for pool in self.pools:
            pool.go_down()

    def _first_work_after(self, t_s: float, pools: list[int], t0_mono: float) -> float | None:
        """Rig time of the first job a pool of `pools` sent to a connection after `t_s`."""
        times = [m.mining_since_s - t0_mono for i in pools for m in self.pools[i].miners
                 if m.mining_since_s is not None and m.mining_since_s - t0_mono > t_s]
        return min(times) if times else None

    def report(self, ticket_difficulty: float | None) -> dict[str, Any]:
        """What the pools saw, for `Recording.pool`: per pool its counts (the verdicts that
        reached the agent apart), the difficulty credited over the play; per cue how long the
        chips were without pool work (an outage, a drop) and how long the first pool took to
        have them back."""
        everyone = list(range(len(self.pools)))
        t0_mono = time.monotonic() - self.now()  # rig time 0
        for r in self.records:
            if r["kind"] in ("down", "drop") and r["pool"] == 0:
                back = self._first_work_after(r["t_s"], everyone, t0_mono)
                r["without_work_s"] = None if back is None else round(back - r["t_s"], 3)
            if r["kind"] == "down" and r["pool"] == 0 and r["end_s"] is not None \
                    and r["end_s"] < (self.finished_s or 0.0):
                back = self._first_work_after(r["end_s"], [0], t0_mono)
                r["back_after_s"] = None if back is None else round(back - r["end_s"], 3)
        pools = []
        for pool in self.pools:
            in_play = [s for s in pool.shares if s.at_s >= t0_mono]
            pools.append({
                "url": pool.url,
                "version_rolling": pool.configure != "refuse",
                "difficulty": pool.difficulty,
                "counts": dict(pool.counts),
                "answered_accepted": pool.answered("accepted"),
                "answered_rejected": sum(1 for s in pool.shares
                                         if s.answered and s.outcome != "accepted"),
                "accepted_difficulty_play": sum(s.required for s in in_play
                                                if s.outcome == "accepted"),
                "connections": len(pool.miners),
            })
        return {"worker": WORKER, "share_difficulty": self.difficulty,
                "ticket_difficulty": ticket_difficulty,
                "nonce_difficulty": self.nonce_difficulty,
                "play_s": self.finished_s, "pools": pools, "cues": self.records}
