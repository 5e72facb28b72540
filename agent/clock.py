"""Injectable time: control logic reads a Clock, so tests run it without sleeping."""

from __future__ import annotations

import threading
import time
from typing import Protocol

from agent import __build_epoch__


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
    """A clock that moves only when told to (`advance`), or when code under test sleeps.

    Its wall clock reads a month after the package's build date unless `wall_offset_s` (wall time
    minus monotonic time) says otherwise: `FakeClock(wall_offset_s=0)` is a board that booted
    in 1970; `step` sets the wall clock as NTP does."""

    def __init__(self, start_s: float = 1000.0, wall_offset_s: float | None = None) -> None:
        self._now_s = start_s
        if wall_offset_s is None:
            wall_offset_s = __build_epoch__ + 30 * 86_400.0
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

    def step(self, seconds: float) -> None:
        """Step the wall clock alone, as NTP does when it sets a clock (monotonic time goes on)."""
        with self._lock:
            self._wall_offset_s += seconds


class WallClockTrust:
    """Whether the wall clock may be acted on: accept or expire a command, persist a time.

    A controller board without a real-time clock boots in 1970 until NTP sets its clock, and NTP
    may step it later. `read()` gives the wall time, or None while the clock is distrusted
    (`problem` says why): while it reads before `not_before_s` (the package's build date, raised
    by `not_before` to, say, the last time the agent persisted), and once it has stepped by more
    than `max_step_s` against the monotonic clock between two readings, until it has kept pace
    with the monotonic clock for `settle_s`."""

    def __init__(self, clock: Clock, max_step_s: float, settle_s: float,
                 not_before_s: float = __build_epoch__) -> None:
        self.clock = clock
        self.max_step_s = max_step_s
        self.settle_s = settle_s
        self.not_before_s = not_before_s
        self.problem: str | None = None
        self._not_before_why = "before the build date"
        self._last: tuple[float, float] | None = None  # (monotonic, wall) of the last reading
        self._stepped_s: float | None = None  # monotonic time of the last step seen

    def not_before(self, wall_s: float, why: str) -> None:
        """Distrust readings before `wall_s` as well (`why` names that time)."""
        if wall_s > self.not_before_s:
            self.not_before_s, self._not_before_why = wall_s, why

    def read(self) -> float | None:
        """The wall time (seconds), or None while it is not trusted."""
        mono_s, wall_s = self.clock.monotonic(), self.clock.time()
        if self._last is not None:
            last_mono_s, last_wall_s = self._last
            if abs((wall_s - last_wall_s) - (mono_s - last_mono_s)) > self.max_step_s:
                self._stepped_s = mono_s
        self._last = (mono_s, wall_s)
        if wall_s < self.not_before_s:
            self.problem = f"it reads {self._not_before_why}"
        elif self._stepped_s is not None and mono_s - self._stepped_s < self.settle_s:
            self.problem = f"it stepped; trusted again after {self.settle_s:g} s without a step"
        else:
            self.problem = None
            return wall_s
        return None
