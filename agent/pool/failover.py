"""Failover over an ordered list of pools, without I/O: which pools to be connected to, which
one the chips mine for, when to try a lost one again.

The rule is one line: pool 0 is always wanted; pool i+1 is wanted while pool i is wanted and has
been without work for `failover_after_s` (counted from when it was wanted). The active pool is
the first one with work. So a lost first pool is retried (with jittered exponential backoff)
while the second one takes over after the bounded time, and the moment the first pool has work
again it is active and the pools after it are let go. Nothing here submits anything: a share
belongs to the connection it was made for (`agent.pool.session`), and work of a pool that is
gone is never sent to another one.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass
class LinkState:
    connected: bool = False  # a connection attempt or session is running
    healthy: bool = False  # the session has work
    unhealthy_since_s: float = 0.0
    wanted_since_s: float | None = None  # since when it is wanted (None: it is not)
    failures: int = 0  # consecutive connections that ended without work, or failed
    next_try_s: float = 0.0


class Failover:
    """The failover state of `count` pools (index = priority, 0 first)."""

    def __init__(self, count: int, now_s: float, failover_after_s: float = 3.0,
                 retry_min_s: float = 1.0, retry_max_s: float = 30.0,
                 rng: random.Random | None = None) -> None:
        if count < 1:
            raise ValueError("at least one pool")
        self.failover_after_s = failover_after_s
        self.retry_min_s = retry_min_s
        self.retry_max_s = max(retry_max_s, retry_min_s)
        self.rng = rng or random.Random()
        self.links = [LinkState(unhealthy_since_s=now_s, next_try_s=now_s)
                      for _ in range(count)]
        self.links[0].wanted_since_s = now_s

    @property
    def active(self) -> int | None:
        """The pool the chips mine for: the first with work (None: none has work)."""
        return next((i for i, s in enumerate(self.links) if s.healthy), None)

    def _failed_over(self, state: LinkState, now_s: float) -> bool:
        """Pool `state` is wanted and has been without work for the bounded time."""
        if state.healthy or state.wanted_since_s is None:
            return False
        since = max(state.unhealthy_since_s, state.wanted_since_s)
        return now_s - since >= self.failover_after_s

    def wanted(self, now_s: float) -> list[bool]:
        """Which pools to be connected to (and from when: `LinkState.wanted_since_s`)."""
        out = [True]
        for prev, state in zip(self.links, self.links[1:], strict=False):
            want = out[-1] and self._failed_over(prev, now_s)
            if want and state.wanted_since_s is None:
                state.wanted_since_s = now_s
            elif not want:
                state.wanted_since_s = None
            out.append(want)
        return out

    def to_start(self, now_s: float) -> list[int]:
        """Pools to connect to now: wanted, not connected, their retry time come."""
        return [i for i, (want, s) in enumerate(zip(self.wanted(now_s), self.links, strict=True))
                if want and not s.connected and now_s >= s.next_try_s]

    def to_release(self, now_s: float) -> list[int]:
        """Connected pools that are no longer wanted (a preferred pool has work)."""
        return [i for i, (want, s) in enumerate(zip(self.wanted(now_s), self.links, strict=True))
                if s.connected and not want]

    def next_change_s(self, now_s: float) -> float:
        """When `to_start` or `wanted` may change without an event (a retry or failover time)."""
        t = now_s + 1.0
        for s in self.links:
            if not s.connected:
                t = min(t, max(now_s, s.next_try_s))
            if not s.healthy and s.wanted_since_s is not None:
                since = max(s.unhealthy_since_s, s.wanted_since_s)
                t = min(t, max(now_s, since + self.failover_after_s))
        return t

    def started(self, i: int) -> None:
        self.links[i].connected = True

    def has_work(self, i: int) -> None:
        state = self.links[i]
        state.healthy = True
        state.failures = 0

    def _unhealthy(self, i: int, now_s: float) -> LinkState:
        state = self.links[i]
        if state.healthy:
            state.unhealthy_since_s = now_s
        state.healthy = False
        state.connected = False
        return state

    def lost(self, i: int, now_s: float) -> float:
        """The connection to pool `i` ended or failed: its retry time (jittered backoff)."""
        state = self._unhealthy(i, now_s)
        state.failures += 1
        delay = min(self.retry_max_s, self.retry_min_s * 2.0 ** min(state.failures - 1, 30))
        state.next_try_s = now_s + delay * self.rng.uniform(0.5, 1.0)
        return state.next_try_s

    def redirected(self, i: int, now_s: float, wait_s: float) -> None:
        """The pool asked to be reconnected after `wait_s` (client.reconnect)."""
        state = self._unhealthy(i, now_s)
        state.next_try_s = now_s + wait_s

    def released(self, i: int, now_s: float) -> None:
        """We closed pool `i` because it is not wanted; it may be tried at once when it is."""
        state = self._unhealthy(i, now_s)
        state.next_try_s = now_s
