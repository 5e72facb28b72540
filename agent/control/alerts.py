"""Warnings about failures that repeat: a board request, the grid session, the chain driver or
the governor can fail on every control tick, so each kind of failure is logged at most once per
`ERROR_LOG_PERIOD_S`, the next time with the count of those left out meanwhile (and the
exception's traceback when the logger is at DEBUG)."""

from __future__ import annotations

import logging

from agent.clock import Clock

ERROR_LOG_PERIOD_S = 10.0


class AlertLog:
    """Rate-limited warnings of the control thread, one period per key."""

    def __init__(self, log: logging.Logger, clock: Clock,
                 period_s: float = ERROR_LOG_PERIOD_S) -> None:
        self.log = log
        self.clock = clock
        self.period_s = period_s
        self._last: dict[str, tuple[float, int]] = {}  # key: (logged at, suppressed)

    def warn(self, key: str, text: str) -> None:
        """Log a warning at most every `period_s` per `key`, with the count of those left out
        meanwhile."""
        now = self.clock.monotonic()
        last_s, suppressed = self._last.get(key, (None, 0))
        if last_s is None or now - last_s >= self.period_s:
            self._last[key] = (now, 0)
            more = f" ({suppressed} more like it since)" if suppressed else ""
            self.log.warning("%s%s", text, more, exc_info=self.log.isEnabledFor(logging.DEBUG))
        else:
            self._last[key] = (last_s, suppressed + 1)
