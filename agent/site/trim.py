"""The outer loop of site dispatch: a PI trim on measured site power, added to the site target
before it is allocated, so that model errors, PSU losses and stragglers leave no steady error.

Measured power lags the target (telemetry period, device ramps), so the error is taken against
the target as it was `delay_s` ago, and the trim only moves while that target has been steady
(within `settle_w` over `delay_s`) and the fleet is not carrying out a large move: a step of the
target is the allocation's job, not the integral's. Anti-windup: the integral is clamped to
+-`limit_frac` of the target and does not grow in a direction the allocation could not follow
(`saturated`). No measurement (a stale meter): the trim holds.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass
class PowerTrim:
    """`gain` is the integral, as a fraction of the target (PSU losses and model errors grow
    with the load, so after a step the trim is already the right size); the error is taken
    relative to the target, or to `floor_w` when the target is smaller."""

    kp: float = 0.1
    ki_per_s: float = 0.3
    delay_s: float = 1.5
    settle_w: float = 0.0
    limit_frac: float = 0.1  # |gain| and |trim| / target stay within this
    floor_w: float = 1.0
    gain: float = 0.0
    _history: deque[tuple[float, float]] = field(default_factory=deque, repr=False)
    _last_s: float | None = field(default=None, repr=False)

    def reset(self) -> None:
        self.gain = 0.0
        self._history.clear()
        self._last_s = None

    def _delayed(self, now_s: float, target_w: float) -> tuple[float, bool]:
        """The target `delay_s` ago, and whether it stayed within `settle_w` since then."""
        self._history.append((now_s, target_w))
        while len(self._history) > 1 and self._history[1][0] <= now_s - self.delay_s:
            self._history.popleft()
        values = [v for _, v in self._history]
        old_enough = self._history[0][0] <= now_s - self.delay_s
        return self._history[0][1], old_enough and max(values) - min(values) <= self.settle_w

    def update(self, now_s: float, target_w: float, measured_w: float | None,
               saturated: int = 0, moving: bool = False) -> float:
        """The trim in W to add to `target_w`. `saturated` is +1 when the allocation could not
        give more than it was asked, -1 when it could not give less, else 0; `moving` says the
        fleet is still carrying out a large move (the error is its lag: the trim holds)."""
        dt_s = 0.0 if self._last_s is None else max(0.0, now_s - self._last_s)
        self._last_s = now_s
        delayed_w, steady = self._delayed(now_s, target_w)
        base_w = max(target_w, self.floor_w)
        limit_w = self.limit_frac * base_w
        if measured_w is None:
            return max(-limit_w, min(limit_w, self.gain * target_w))
        error_w = delayed_w - measured_w
        winding = (error_w > 0 and saturated > 0) or (error_w < 0 and saturated < 0)
        steady = steady and not moving
        if steady and not winding:
            self.gain += self.ki_per_s * error_w / max(delayed_w, self.floor_w) * dt_s
        self.gain = max(-self.limit_frac, min(self.limit_frac, self.gain))
        proportional_w = self.kp * error_w if steady else 0.0
        return max(-limit_w, min(limit_w, self.gain * target_w + proportional_w))
