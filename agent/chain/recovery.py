"""When a faulty chain is reset and re-initialised, and when a failed bring-up is tried again.

A chain that answers nothing for `hung_timeout_s` is hung and takes no commands: it is reset at
once. A dead or flaky chip still leaves the others hashing: with a `WindDown` set, the reset is
marked pending (`reset_pending`, also in the chain's stats), the governor brings the load down at
its ramp, and the reset follows once the chips run at its floor (or after the wind-down's
time-out). Chip-fault recoveries back off: the wait doubles up to `recover_backoff_max_s` and is
forgotten after an hour without one. A first bring-up that fails is tried `start_attempts` times,
then the error is final (`fatal`); a re-initialisation that fails is tried again soon (a grid
resource that stays down has failed its service): after `retry_s`, the wait doubling up to
`retry_max_s` while it keeps failing, and starting over once the chain is up again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from agent.chain.settings import ChainSettings
from agent.chain.stats import ChainStatistics

log = logging.getLogger("gridminer.chain")


@dataclass(frozen=True)
class WindDown:
    """How the load comes down before a chip-fault reset, or the reset of a running chain that
    cannot be taken over (set by the agent from its governor)."""

    power_w: Callable[[float], float]  # the modelled power at a frequency
    measured_w: Callable[[], float | None]  # the latest measured board power
    ramp_w_s: float  # the ramp limit
    floor_mhz: float  # the governor's lowest frequency: the reset waits for the chips to run there
    timeout_s: float  # ... or this long at most


class Recovery:
    """The health verdicts and the back-off; the driver does the reset they call for."""

    def __init__(self, settings: ChainSettings, name: str = "chain") -> None:
        self.settings = settings
        self.name = name
        self.wind_down: WindDown | None = None
        self.reset_pending: str | None = None  # why a reset waits for the load to come down
        self.retry_at_s: float | None = None  # when a failed bring-up is tried again
        self.recoveries = 0
        self._reset_due_s = 0.0  # when the pending reset comes anyway
        self._backoff_s = settings.recover_backoff_s
        self._last_recover_s: float | None = None
        self._attempts = 0
        self._retry_s = settings.retry_s

    def check(self, now: float, stats: ChainStatistics, silent_s: float,
              hashing_s: float) -> str | None:
        """The health check (once a second while hashing), after `silent_s` without a reply
        and `hashing_s` of hashing: why the chain must be reset now, else None."""
        if silent_s >= self.settings.hung_timeout_s:
            self.reset_pending = None  # a hung chain takes no commands: reset at once
            return f"chain hung: no reply for {silent_s:.1f} s"
        if self.reset_pending is not None or hashing_s < self.settings.dead_min_s:
            return None
        for chip in stats.chips:
            health = stats.health(chip, now)
            if health in ("dead", "flaky"):
                return self.chip_fault(now, f"chip {chip.index} (address {chip.address}) "
                                            f"is {health}")
        if self._last_recover_s is not None and now - self._last_recover_s > 3600:
            self._backoff_s = self.settings.recover_backoff_s
        return None

    def chip_fault(self, now: float, reason: str) -> str | None:
        """A dead or flaky chip: the reason to reset now, or None when the back-off is not over
        or the reset waits for the load to come down (`reset_pending`)."""
        if self._last_recover_s is not None and now - self._last_recover_s < self._backoff_s:
            return None  # a chip fault right after a recovery: wait out the back-off
        if self.wind_down is None:
            return reason
        log.warning("%s: %s; bringing the load down at the ramp before a reset", self.name,
                    reason)
        self.reset_pending = reason
        self._reset_due_s = now + self.wind_down.timeout_s
        return None

    def due(self, now: float, freq_mhz: float) -> str | None:
        """The pending reset's reason once the chips run at the floor (or its time is up)."""
        wd = self.wind_down
        if self.reset_pending is not None and wd is not None and (
                freq_mhz <= wd.floor_mhz + 1e-6 or now >= self._reset_due_s):
            return self.reset_pending
        return None

    def recovering(self, now: float, reason: str) -> None:
        """A reset for `reason` begins: count it and back off."""
        log.warning("%s: %s; resetting and re-initialising", self.name, reason)
        last = self._last_recover_s
        if last is not None and now - last < self._backoff_s * 2:
            self._backoff_s = min(self._backoff_s * 2, self.settings.recover_backoff_max_s)
        self._last_recover_s = now
        self.recoveries += 1

    def failed(self, now: float, reason: str, ever_up: bool) -> bool:
        """A bring-up failed: schedule the retry (`retry_at_s`); True when there is none (the
        first bring-up ran out of attempts: the chain is not what the config says)."""
        if not ever_up:
            self._attempts += 1
            if self._attempts < self.settings.start_attempts:
                log.warning("%s: %s; trying again", self.name, reason)
                self.retry_at_s = now
                return False
            self.retry_at_s = None
            log.error("%s: %s", self.name, reason)
            return True
        self.retry_at_s = now + self._retry_s
        log.error("%s: %s; retrying in %.1f s", self.name, reason, self._retry_s)
        self._retry_s = min(self._retry_s * 2, self.settings.retry_max_s)
        return False

    def up(self) -> None:
        """The chain is up (hashing) again: the next failed re-initialisation retries soon."""
        self._retry_s = self.settings.retry_s
