"""The runtime's side of the board link: the board requests of a control tick, what the board
confirmed of them, and whether the board still answers.

Every write is answered with what the bridge applied (core voltage, fan duty, chain power), and
only that is kept. The requests of a tick go out while it is open: one that fails slowly (a
time-out) ends them. A board sample older than `stale_s` is no measurement (`fresh`); once the
sample is stale and reads time out, the link is down and only probed (a read after
`LINK_PROBE_S`, the wait doubling up to `LINK_PROBE_MAX_S`). Losing and regaining the link are
logged once each (a reminder every `LINK_DOWN_LOG_S`), its failed writes meanwhile only counted.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Protocol

from agent.clock import Clock
from agent.control.alerts import AlertLog
from agent.errors import BoardLinkError

log = logging.getLogger("gridminer.runtime")

LINK_PROBE_S = 1.0  # while the board link is down, one sample read probes it after this,
LINK_PROBE_MAX_S = 5.0  # ... the wait doubling up to this
LINK_DOWN_LOG_S = 60.0  # ... and a reminder this often that it still is
SLOW_FAILURE_SHARE = 0.5  # a board request failing after this share of a period timed out
PROBE_WAIT_PERIODS = 1.5  # the tick's sample read waits this many periods for its reply,
PROBE_WAIT_MIN_S = 0.05  # ... at least this long (a bridge at 115200 baud answers in ~5 ms)


class Board(Protocol):
    """The board link as the runtime uses it (agent.chain.board.BoardClient)."""

    def read_sample(self) -> Any: ...

    def probe_sample(self, timeout_s: float | None = None) -> Any: ...  # one try, no retry

    def heartbeat(self) -> Any: ...

    def set_fan_pct(self, pct: int) -> int: ...  # the duty the bridge applied

    def set_vcore_mv(self, mv: int) -> int: ...  # the core voltage the bridge applied

    def set_chain_power(self, on: bool) -> bool: ...  # the chain power the bridge applied

    def reset_chain(self) -> Any: ...

    def take_reboot(self) -> str | None: ...  # why the bridge restarted since the last call


class LinkCounters(Protocol):
    """The runtime's counters the board link adds to (agent.control.runtime.RuntimeCounters)."""

    board_errors: int  # sample reads that failed
    board_write_errors: int
    board_skipped: int  # board requests left out: the link was down or timing out
    vcore_unconfirmed: int  # core voltage writes the board did not apply as asked


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _error_text(exc: Exception) -> str:
    return str(exc) if isinstance(exc, BoardLinkError) else repr(exc)


class BoardLink:
    """The control thread's board requests: the tick's sample, confirmed writes, the link's
    health. `open` says whether requests may still go out in this tick (`end_tick` opens it). The
tick's sample is read in one attempt that waits at most `PROBE_WAIT_PERIODS` periods
(`Board.probe_sample`): a board that stopped answering holds a tick up that long, no more."""

    def __init__(self, board: Board, clock: Clock, counters: LinkCounters, alerts: AlertLog,
                 *, period_s: float, stale_s: float) -> None:
        self.board = board
        self.clock = clock
        self.counters = counters
        self.alerts = alerts
        self.period_s = period_s
        self.stale_s = stale_s
        self.open = True  # board requests may go out in this tick
        self.chain_on: bool | None = None  # chain power as the board confirmed (None: unknown)
        self.chain_on_s = 0.0
        self.vcore_mv: int | None = None  # the core voltage the board confirmed
        self.fan_pct: int | None = None  # the fan duty the board confirmed
        self.sample_s: float | None = None  # when the latest board sample arrived
        self._down_s: float | None = None  # since when the board link does not answer
        self._slow = False  # ... and its reads time out: it is only probed
        self._next_probe_s = 0.0
        self._probe_wait_s = LINK_PROBE_S
        self._log_s = 0.0
        self._reads_failed = 0

    @property
    def fresh(self) -> bool:
        """The latest board sample is a current measurement (not older than stale_s)."""
        return self.sample_s is not None and self.clock.monotonic() - self.sample_s <= self.stale_s

    def end_tick(self) -> None:
        """The tick is over: the next one may send requests again."""
        self.open = True

    def rebooted(self) -> str | None:
        """Why the bridge restarted since the last call (None: it did not). A bridge that
        restarted forgot the fan, core voltage and chain power it confirmed: so does this."""
        why = getattr(self.board, "take_reboot", lambda: None)()
        if why is not None:
            self.chain_on = None
            self.vcore_mv = None
            self.fan_pct = None
        return why

    def read(self, now: float) -> Any:
        """The board sample of this tick (None: none). A read that times out ends the tick's
        board requests; once the sample is stale too, the link is down and only probed (a read
        after LINK_PROBE_S, the wait doubling up to LINK_PROBE_MAX_S) until it answers."""
        if self._slow and now < self._next_probe_s:
            self.open = False
            return None
        t0 = self.clock.monotonic()
        try:
            sample = self.board.probe_sample(
                max(PROBE_WAIT_MIN_S, PROBE_WAIT_PERIODS * self.period_s))
        except Exception as exc:
            self.counters.board_errors += 1
            slow = self._timed_out(t0)
            if slow:
                self.open = False
            self._read_failed(now, exc, slow)
            return None
        if self._down_s is not None:
            log.info("board link back after %.1f s (%d reads failed)", now - self._down_s,
                     self._reads_failed)
        self._down_s, self._slow = None, False
        if sample is not None:
            self.sample_s = now
        return sample

    def _timed_out(self, t0: float) -> bool:
        return self.clock.monotonic() - t0 >= SLOW_FAILURE_SHARE * self.period_s

    def _read_failed(self, now: float, exc: Exception, slow: bool) -> None:
        """A sample read failed (`slow`: it timed out). While the latest sample is current it
        is a missed read; after that the link is down."""
        text = _error_text(exc)
        if self.fresh:
            self.alerts.warn("board", f"board sample failed: {text}")
            return
        if self._down_s is None:
            self._down_s, self._log_s, self._reads_failed = now, now, 0
            log.warning("board link lost (%s): its measurements are left out of telemetry until "
                        "it answers", text)
        self._reads_failed += 1
        if slow:  # the envelope has tripped on the stale sample: probing will do
            self._probe_wait_s = min(2 * self._probe_wait_s, LINK_PROBE_MAX_S) \
                if self._slow else LINK_PROBE_S
            self._next_probe_s = now + self._probe_wait_s
        self._slow = slow
        if now - self._log_s >= LINK_DOWN_LOG_S:
            self._log_s = now
            log.warning("board link still down after %.0f s (%d reads failed): %s",
                        now - self._down_s, self._reads_failed, text)

    def call(self, name: str, *args: Any) -> tuple[bool, Any]:
        """One board request: (answered, the reply). Left out when the tick's requests are
        over; one that fails slowly (a time-out) ends them."""
        if not self.open:
            self.counters.board_skipped += 1
            return False, None
        t0 = self.clock.monotonic()
        try:
            reply = getattr(self.board, name)(*args)
        except Exception as exc:
            self.counters.board_write_errors += 1
            if self._down_s is None:  # else the link's own warnings say it
                self.alerts.warn(f"board.{name}", f"board {name} failed: {_error_text(exc)}")
            if self._timed_out(t0):
                self.open = False
            return False, None
        return True, reply

    def set_vcore(self, mv: int) -> int | None:
        """Ask for a core voltage; returns the one the board confirmed in force (None: none)."""
        mv = int(mv)
        if mv != self.vcore_mv and self.open:
            answered, applied = self.call("set_vcore_mv", mv)
            if answered and _is_number(applied):
                self.vcore_mv = int(applied)
            if self.vcore_mv != mv:
                self.counters.vcore_unconfirmed += 1
                if self._down_s is None:  # else the link's own warnings say it
                    self.alerts.warn("vcore", f"core voltage {mv} mV not confirmed by the board "
                                     f"(in force: {self.vcore_mv} mV); the frequency waits")
        return self.vcore_mv

    def set_fan(self, pct: int) -> None:
        """Ask for a fan duty; `fan_pct` is then the one the board confirmed."""
        pct = int(pct)
        if pct != self.fan_pct and self.open:
            answered, applied = self.call("set_fan_pct", pct)
            if answered and _is_number(applied):
                self.fan_pct = int(applied)

    def power_on(self, now: float) -> bool:
        """Ask for chain power; True when the board confirmed it on."""
        answered, on = self.call("set_chain_power", True)
        if not answered or not on:
            return False
        self.chain_on = True
        self.chain_on_s = now
        return True

    def power_off(self) -> None:
        """Ask for chain power off; until the board confirms, the power is unknown."""
        answered, on = self.call("set_chain_power", False)
        self.chain_on = False if answered and on is not None and not on else None
