"""Per-pool figures: connections, shares by outcome, error codes, rejected lines, and the
hashrate the pool credits (accepted difficulty over a window).

Written by the network thread, read by others as a `snapshot()` (a plain dict, under a lock).
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from typing import Any

#: expected hashes per difficulty-1 share (2**256 / the difficulty-1 target ≈ 2**32)
HASHES_PER_SHARE = 2**256 / (0xFFFF * 2**208)
HASHRATE_WINDOW_S = 600.0


class PoolStats:
    """What happened with one pool, over all its connections."""

    def __init__(self, url: str, window_s: float = HASHRATE_WINDOW_S) -> None:
        self.url = url
        self.window_s = window_s
        self._lock = threading.Lock()
        self.connects = 0  # connections that completed (TCP, and TLS where used)
        self.connect_failures = 0
        self.disconnects = 0
        self.auth_failures = 0
        self.last_error: str | None = None
        self.submitted = 0
        self.accepted = 0
        self.accepted_difficulty = 0.0
        self.rejected: Counter[str] = Counter()  # by kind: stale, duplicate, low_difficulty, ...
        self.stale = 0  # rejected as stale by the pool, or dropped here (the job was gone)
        self.dropped: Counter[str] = Counter()  # shares not sent, by reason
        self.unanswered = 0  # submitted, no reply before the connection ended or in time
        self.errors: Counter[int] = Counter()  # error codes in any reply (20-25 and others)
        self.bad_lines: Counter[str] = Counter()  # pool lines rejected, by reason
        self.redirects = 0
        self.messages: deque[str] = deque(maxlen=5)  # client.show_message texts
        self.difficulty: float | None = None
        self.version_mask: int | None = None  # None: not negotiated
        self.jobs = 0
        self._credits: deque[tuple[float, float]] = deque()  # (time, difficulty) accepted

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + n)

    def reject_line(self, reason: str) -> None:
        with self._lock:
            self.bad_lines[reason] += 1

    def drop(self, reason: str) -> None:
        with self._lock:
            self.dropped[reason] += 1
            if reason == "stale":
                self.stale += 1

    def error_code(self, code: int | None) -> None:
        if code is not None:
            with self._lock:
                self.errors[code] += 1

    def accept(self, now_s: float, difficulty: float) -> None:
        with self._lock:
            self.accepted += 1
            self.accepted_difficulty += difficulty
            self._credits.append((now_s, difficulty))
            self._trim(now_s)

    def reject(self, kind: str) -> None:
        with self._lock:
            self.rejected[kind] += 1
            if kind == "stale":
                self.stale += 1

    def hashrate_ghs(self, now_s: float) -> float:
        """Hashrate the pool credits: accepted difficulty x 2**32 over the window."""
        with self._lock:
            self._trim(now_s)
            total = sum(d for _, d in self._credits)
        return total * HASHES_PER_SHARE / self.window_s / 1e9

    def _trim(self, now_s: float) -> None:
        while self._credits and self._credits[0][0] < now_s - self.window_s:
            self._credits.popleft()

    def snapshot(self, now_s: float) -> dict[str, Any]:
        rate = self.hashrate_ghs(now_s)
        with self._lock:
            return {
                "url": self.url,
                "connects": self.connects,
                "connect_failures": self.connect_failures,
                "disconnects": self.disconnects,
                "auth_failures": self.auth_failures,
                "last_error": self.last_error,
                "submitted": self.submitted,
                "accepted": self.accepted,
                "accepted_difficulty": self.accepted_difficulty,
                "rejected": dict(self.rejected),
                "rejected_total": sum(self.rejected.values()),
                "stale": self.stale,
                "dropped": dict(self.dropped),
                "unanswered": self.unanswered,
                "errors": dict(self.errors),
                "bad_lines": dict(self.bad_lines),
                "redirects": self.redirects,
                "messages": list(self.messages),
                "difficulty": self.difficulty,
                "version_mask": self.version_mask,
                "jobs": self.jobs,
                "hashrate_ghs": rate,
            }
