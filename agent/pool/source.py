"""Pool work for the chain: the `WorkSource` the control thread polls, fed by the pool client.

`PoolWorkSource.next_work` makes a header from the active pool's latest job: a fresh
extranonce2 for every job sent to the chips (a counter per pool and extranonce1, so no header is
hashed twice, even when a pool sends the same coinbase again under a new job id; when the
counter has used all of extranonce2, ntime moves on by a second). While no pool has work it hands
out local work, so the load the grid asked for stays on (its shares are checked and counted,
never sent). It never blocks: the latest `PoolState` is swapped in under a lock by the client's
thread, and `clean_pending` tells the chain driver when the chips' work has gone stale.

`submit` turns a verified nonce into a `ShareRequest` when its hash meets the pool's difficulty
(the lower of its job's and the current one), with `rolled_version & mask` as the version bits,
and hands it to the client, which sends it on the connection the work came from or drops it.
`figures()` sums up the pools for telemetry (active pool, shares, credited hashrate).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.chain.work import LocalWorkSource, Share, Work, WorkSource
from agent.clock import Clock
from agent.pool.client import PoolClient, PoolState, PoolTiming, tls_context
from agent.pool.endpoint import PoolEndpoint
from agent.pool.header import extranonce2_bytes
from agent.pool.session import ShareRequest

log = logging.getLogger("gridminer.pool")

#: extranonce2 counters kept (pool, extranonce1) pairs; older ones are forgotten
COUNTERS_KEPT = 16


@dataclass(frozen=True)
class PoolWork:
    """`Work.origin` of pool work: what makes a nonce a share of one job of one connection."""

    pool: int
    session: int
    job_id: str
    extranonce2: bytes
    ntime: int
    difficulty: float  # the pool difficulty the job was given
    version_mask: int


class PoolWorkSource:
    """Work from the pool client's latest state; local work while no pool has any."""

    def __init__(self, fallback: WorkSource, wake: threading.Event | None = None) -> None:
        self._fallback = fallback
        self._wake = wake
        self._lock = threading.Lock()
        self._state: PoolState | None = None
        self._urgent = False
        self._counters: OrderedDict[tuple[int, bytes, int], int] = OrderedDict()
        self._work_id = 0
        self._on_local: bool | None = None
        self.submit_to: Callable[[ShareRequest], None] | None = None
        self.pool_figures: Callable[[], list[dict[str, Any]]] | None = None  # per pool
        self.pool_jobs = 0  # headers made from pool jobs
        self.local_jobs = 0  # local work handed out while no pool had work
        self.local_shares = 0  # nonces found on local work (never sent)
        self.below_target = 0  # nonces of pool work under the pool's difficulty
        self.outside_mask = 0  # nonces whose rolled bits the work's mask does not allow
        self.handed = 0  # shares handed to the client

    # -- the client's thread ------------------------------------------------------------------

    def on_state(self, state: PoolState) -> None:
        """The pool client's new state (called on its thread; never blocks)."""
        with self._lock:
            self._state = state
            if state.urgent:
                self._urgent = True
        if state.urgent and self._wake is not None:
            self._wake.set()

    # -- the control thread ---------------------------------------------------------------------

    @property
    def state(self) -> PoolState | None:
        return self._state

    def clean_pending(self, now_s: float) -> bool:
        return self._urgent or (self._fallback.clean_pending(now_s) and self._state_is_local())

    def _state_is_local(self) -> bool:
        state = self._state
        return state is None or state.template is None

    def next_work(self, now_s: float) -> Work:
        with self._lock:
            state, urgent = self._state, self._urgent
            self._urgent = False
        template = state.template if state is not None else None
        self._work_id += 1
        if template is None:
            if self._on_local is None:  # later losses are the client's to log
                log.info("no pool job yet: hashing local work (its shares are not sent)")
            self._on_local = True
            local = self._fallback.next_work(now_s)
            self.local_jobs += 1
            return Work(local.header80, self._work_id, local.version_mask, local.clean or urgent)
        self._on_local = False
        size = template.extranonce2_size
        key = (template.pool, template.extranonce1, size)
        count = self._counters.pop(key, 0)
        self._counters[key] = count + 1
        if len(self._counters) > COUNTERS_KEPT:
            self._counters.popitem(last=False)
        space = 256 ** size
        extranonce2 = extranonce2_bytes(count % space, size)
        ntime = (template.job.ntime + count // space) & 0xFFFFFFFF
        header = template.job.header(template.extranonce1, extranonce2, ntime)
        difficulty = template.difficulty
        origin = PoolWork(template.pool, template.session, template.job.job_id, extranonce2,
                          ntime, difficulty, template.version_mask)
        self.pool_jobs += 1
        return Work(header, self._work_id, template.version_mask, urgent, origin=origin)

    def submit(self, share: Share) -> None:
        origin = share.work.origin
        if not isinstance(origin, PoolWork):
            self.local_shares += 1
            return
        state = self._state
        required = origin.difficulty
        if state is not None and state.template is not None and state.difficulty is not None \
                and state.template.session == origin.session:
            required = min(required, state.difficulty)
        if share.difficulty < required:
            self.below_target += 1
            return
        if share.version_bits & ~origin.version_mask & 0xFFFFFFFF:
            self.outside_mask += 1  # the chips rolled bits the pool did not grant
            return
        rolled = share.work.version | share.version_bits
        send = self.submit_to
        if send is None:
            return
        self.handed += 1
        send(ShareRequest(origin.pool, origin.session, origin.job_id, origin.extranonce2,
                          origin.ntime, share.nonce, rolled & origin.version_mask,
                          share.difficulty))

    def figures(self) -> dict[str, Any]:
        """For telemetry: the active pool's URL (None: local work), shares accepted, rejected
        and stale over all pools, and the hashrate the pools credit (accepted difficulty over
        the last 10 minutes)."""
        pools = self.pool_figures() if self.pool_figures is not None else []
        active = next((p for p in pools if p["active"]), None)
        return {
            "pool": active["url"] if active is not None else None,
            "pool_accepted": sum(p["accepted"] for p in pools),
            "pool_rejected": sum(p["rejected_total"] for p in pools),
            "pool_stale": sum(p["stale"] for p in pools),
            "pool_hashrate_ghs": sum(p["hashrate_ghs"] for p in pools),
        }


class PoolMining:
    """The pool client and its work source, as the agent runs them: `work` goes to the chain
    driver (its `figures()` to telemetry), `stop()` to the runtime's closers."""

    def __init__(self, endpoints: list[PoolEndpoint], clock: Clock,
                 wake: threading.Event | None = None, timing: PoolTiming | None = None,
                 agent: str = "gridminer") -> None:
        self.work = PoolWorkSource(LocalWorkSource(clock), wake)
        self.client = PoolClient(endpoints, self.work.on_state, timing, agent)
        self.work.submit_to = self.client.submit
        self.work.pool_figures = self.client.snapshot

    def start(self) -> None:
        self.client.start()

    def stop(self) -> None:
        self.client.stop()


def pool_endpoints(config: Any) -> list[PoolEndpoint]:
    """The `[[pool]]` entries of `config` as endpoints, every setting checked that needs no
    network: the URL, the worker name, the password (its file read), the TLS CA file.
    ConfigError naming the entry and the key (`agent.app.preflight` runs this before any port
    is opened)."""
    endpoints = [PoolEndpoint.from_config(p, f"pool[{i}]")
                 for i, p in enumerate(getattr(config, "pools", ()))]
    for endpoint in endpoints:
        tls_context(endpoint)
    return endpoints


def work_source(config: Any, clock: Clock,
                wake: threading.Event | None = None) -> tuple[WorkSource, Callable[[], None]]:
    """The chain's work source for `config` and what stops it: the pools of `[[pool]]` (the
    client started), or local work without any. ConfigError as `pool_endpoints`."""
    from agent import __version__

    endpoints = pool_endpoints(config)
    if not endpoints:
        log.info("no [[pool]] configured: mining local work (shares are checked, not sent)")
        return LocalWorkSource(clock), lambda: None
    st = config.stratum
    timing = PoolTiming(st.failover_after_s, st.retry_min_s, st.retry_max_s,
                        st.connect_timeout_s, st.silence_timeout_s, config.log.status_period_s)
    mining = PoolMining(endpoints, clock, wake, timing, f"gridminer/{__version__}")
    mining.start()
    log.info("mining to %s", ", then ".join(e.url for e in endpoints))
    return mining.work, mining.stop
