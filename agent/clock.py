"""Injectable time: control logic reads a Clock, so tests run it without sleeping."""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    """Time source of the agent: monotonic seconds for control, wall time for timestamps."""

    def monotonic(self) -> float: ...

    def time(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clock."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


class FakeClock:
    """A clock that moves only when told to (`advance`), or when code under test sleeps."""

    def __init__(self, start_s: float = 1000.0, wall_offset_s: float = 1_700_000_000.0) -> None:
        self._now_s = start_s
        self._wall_offset_s = wall_offset_s
        self._lock = threading.Lock()

    def monotonic(self) -> float:
        with self._lock:
            return self._now_s

    def time(self) -> float:
        with self._lock:
            return self._now_s + self._wall_offset_s

    def sleep(self, seconds: float) -> None:
        self.advance(max(0.0, seconds))

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now_s += seconds
