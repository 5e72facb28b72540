"""The control thread: the one place that reads the board, asks the governor and writes the
hardware.

`Runtime.run()` loops until `request_stop()` (SIGINT/SIGTERM): every control period it reads a
board sample (and heartbeats the bridge firmware), takes the chain's figures from the driver, calls
`Governor.update`, and applies the actuation (chain power, core voltage, fan, frequency). Between
ticks it polls the driver whenever the driver has something due (frame scripts, ramp steps, jobs)
and serves the optional `GridSession` whenever the MQTT thread wakes it (`wake` Event) or its
policy has something due. One status line per `log.status_period_s`. On stop the chain ramps to
its minimum frequency, is powered off through the board, and every thread is joined.

All hardware writes happen here; the driver's reader thread and the MQTT thread only queue what
they received. Nothing a board, chain or broker sends can raise out of the loop.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from agent.chain.driver import DOWN, FAILED, IDLE, STOPPING, ChainDriver
from agent.chain.stats import ChainStats
from agent.clock import Clock
from agent.errors import BoardLinkError

log = logging.getLogger("gridminer.runtime")

HEARTBEAT_PERIOD_S = 0.5
STOP_RAMP_TIMEOUT_S = 5.0
ERROR_LOG_PERIOD_S = 10.0
VCORE_SETTLE_S = 0.05  # after a voltage-only step (regulators settle well within this)


class Board(Protocol):
    """The board link as the runtime uses it (agent.chain.board.BoardClient)."""

    def read_sample(self) -> Any: ...

    def heartbeat(self) -> Any: ...

    def set_fan_pct(self, pct: int) -> Any: ...

    def set_vcore_mv(self, mv: int) -> Any: ...

    def set_chain_power(self, on: bool) -> Any: ...

    def reset_chain(self) -> Any: ...


class Controller(Protocol):
    """The governor as the runtime uses it (agent.control.governor.Governor)."""

    def update(self, now_s: float, sample: Any, chain_stats: Any = None) -> Any: ...

    def set_target(self, power_w: float, ramp_w_s: float | None = None) -> Any: ...

    def curtail(self, ramp_w_s: float | None = None) -> Any: ...

    def standby(self, ramp_w_s: float | None = None) -> Any: ...

    def resume(self, ramp_w_s: float | None = None) -> Any: ...

    def caps(self) -> Any: ...


class Session(Protocol):
    """The grid session as the runtime uses it (agent.grid.session.GridSession; `start(hot=...)` is
    called first when it has one)."""

    def service(self, now_s: float | None = None) -> float: ...


class GovernorSink:
    """The governor as the grid session's setpoint sink (agent.grid.session.SetpointSink)."""

    def __init__(self, governor: Controller, on_apply: Callable[[], None] | None = None) -> None:
        self.governor = governor
        self.on_apply = on_apply  # e.g. Runtime.request_tick: act on a command without waiting

    def apply(self, op: str, power_w: float | None, ramp_w_s: float | None) -> Any:
        if self.on_apply is not None:
            self.on_apply()
        g = self.governor
        if op == "setpoint":
            return g.set_target(0.0 if power_w is None else float(power_w), ramp_w_s)
        if op == "curtail":
            return g.curtail(ramp_w_s)
        if op == "standby":
            return g.standby(ramp_w_s)
        if op == "resume":
            return g.resume(ramp_w_s)
        raise ValueError(f"unknown op {op!r}")

    def caps(self) -> Any:
        return self.governor.caps()


@dataclass
class RuntimeCounters:
    ticks: int = 0
    overruns: int = 0  # ticks that started more than one period late
    board_errors: int = 0
    board_write_errors: int = 0
    grid_errors: int = 0
    driver_errors: int = 0


def _hottest(sample: Any) -> float | None:
    temps = [t for t in (getattr(sample, "chip_temps_c", None) or [])
             if isinstance(t, int | float) and math.isfinite(t)]
    return max(temps) if temps else None


class Runtime:
    """The agent's control loop. `tick(now)` is one control period and `service(now)` one pass
    between ticks, so tests drive both with a fake clock; `run()` is the loop itself."""

    def __init__(
        self,
        clock: Clock,
        driver: ChainDriver,
        board: Board,
        governor: Controller,
        grid: Session | None = None,
        period_s: float = 0.1,
        status_period_s: float = 10.0,
        wake: threading.Event | None = None,
        status_out: Callable[[str], None] | None = None,
        on_stop: list[Callable[[], None]] | None = None,
    ) -> None:
        self.clock = clock
        self.driver = driver
        self.board = board
        self.governor = governor
        self.grid = grid
        self.period_s = period_s
        self.status_period_s = status_period_s
        self.wake = wake or threading.Event()
        self.status_out = status_out or (lambda line: print(line, flush=True))
        self.on_stop = on_stop or []  # closers run at the end (grid link, ports)
        self.counters = RuntimeCounters()
        self._stop = threading.Event()
        self._grid_pending = True
        self._grid_due_s = 0.0
        self._next_tick_s: float | None = None
        self._tick_now = False
        self._next_status_s: float | None = None
        self._next_heartbeat_s = 0.0
        self._chain_on: bool | None = None  # what we last told the board
        self._chain_on_s = 0.0
        self._vcore_set: int | None = None
        self._fan_set: int | None = None
        self._pending_vcore: int | None = None
        self._prev_freq_mhz = 0.0  # the frequency of the previous actuation
        self.sample: Any = None
        self.chain: ChainStats | None = None
        self.actuation: Any = None
        self.energy_wh = 0.0
        self._last_power_s: float | None = None
        self._last_error_log: dict[str, float] = {}
        self.exit_code = 0
        self.error: str | None = None
        self.hot = False  # the chain was taken over running (an agent restart)
        self._grid_started = False

    # -- control from other threads ---------------------------------------------------------

    def request_stop(self) -> None:
        """Ask the loop to idle the chain and return (signal handlers call this)."""
        self._stop.set()
        self.wake.set()

    def request_tick(self) -> None:
        """Run the control tick on the next pass (a new target is to be acted on now)."""
        self._tick_now = True

    def notify_grid(self) -> None:
        """The MQTT thread queued something: serve the grid session now."""
        self._grid_pending = True
        self.wake.set()

    def adopt(self, now: float, freq_mhz: float) -> None:
        """The chain is already powered and hashing at `freq_mhz` (the driver and the governor
        have taken it over): no power-on and no bring-up; the grid session starts hot."""
        self.hot = True
        self._chain_on = True
        self._chain_on_s = now
        self._prev_freq_mhz = float(freq_mhz)

    # -- the loop -----------------------------------------------------------------------------

    def run(self) -> int:
        """Run until stopped; returns the exit code (0 after a clean stop, 1 when the chain
        could not be brought up)."""
        try:
            while not self._stop.is_set():
                now = self.clock.monotonic()
                self.service(now)
                if self.error is not None:
                    break
                self._sleep_until(self.next_deadline_s(now), now)
        finally:
            self.shutdown()
        return self.exit_code

    def service(self, now: float) -> None:
        """One pass: the control tick if due, the driver, the grid session if due."""
        if self._next_tick_s is None:
            self._next_tick_s = now
            self._next_status_s = now + self.status_period_s
        if now >= self._next_tick_s:
            if now - self._next_tick_s > self.period_s:
                self.counters.overruns += 1
            act = self.tick(now)
            self._next_tick_s += self.period_s
            if self._next_tick_s <= now:
                self._next_tick_s = now + self.period_s
            if act is not None and "vcore_first" in getattr(act, "limits", ()):
                # the voltage went up first; the frequency follows once the regulator settled
                self._next_tick_s = min(self._next_tick_s, now + VCORE_SETTLE_S)
        self._poll_driver(now)
        if self.grid is not None and (self._grid_pending or now >= self._grid_due_s):
            self._grid_pending = False
            try:
                if not self._grid_started:
                    self._grid_started = True
                    start = getattr(self.grid, "start", None)
                    if start is not None:
                        start(hot=self.hot)
                delay = self.grid.service(now)
            except Exception:
                self.counters.grid_errors += 1
                self._log_error("grid", "grid session failed")
                delay = 1.0
            self._grid_due_s = now + max(0.0, min(float(delay), 1.0))
        if self._tick_now:
            self._tick_now = False
            self._next_tick_s = now
        if self.status_period_s > 0 and self._next_status_s is not None \
                and now >= self._next_status_s:
            self._next_status_s = now + self.status_period_s
            self.status_out(self.status_line(now))

    def next_deadline_s(self, now: float) -> float:
        t = self._next_tick_s if self._next_tick_s is not None else now
        t = min(t, self.driver.next_deadline_s(now))
        if self.grid is not None:
            t = min(t, self._grid_due_s)
        return t

    def _sleep_until(self, deadline: float, now: float) -> None:
        timeout = deadline - now
        if timeout > 0:
            self.wake.wait(timeout)
        self.wake.clear()

    def _poll_driver(self, now: float) -> None:
        try:
            self.driver.poll(now)
        except Exception:  # a driver bug must not stop the control of power and heat
            self.counters.driver_errors += 1
            self._log_error("driver", "chain driver failed")
        if self.driver.state == FAILED and self.driver.fatal and self.error is None:
            self.error = self.driver.error or "chain bring-up failed"
            self.exit_code = 1

    # -- one control period --------------------------------------------------------------------

    def tick(self, now: float) -> Any:
        """Read, decide, actuate."""
        self.counters.ticks += 1
        sample = None
        try:
            sample = self.board.read_sample()
        except BoardLinkError as exc:
            self.counters.board_errors += 1
            self._log_error("board", f"board sample failed: {exc}")
        except Exception:
            self.counters.board_errors += 1
            self._log_error("board", "board sample failed")
        if sample is not None:
            self.sample = sample
            self._integrate_energy(now, sample)
            if self._chain_on and getattr(sample, "chain_powered", True) is False \
                    and now - self._chain_on_s > 1.0:
                # the bridge cut chain power on its own (its trip or watchdog): the chips lost
                # their state, so power on and bring up again when the governor asks for it
                log.warning("the board reports the chain unpowered; re-initialising")
                self.driver.abort()
                self._chain_on = None
        if now >= self._next_heartbeat_s:
            self._next_heartbeat_s = now + HEARTBEAT_PERIOD_S
            self._board_call("heartbeat")
        self.chain = self.driver.stats(now)
        try:
            act = self.governor.update(now, sample, self.chain)
        except Exception:
            self._log_error("governor", "governor failed; idling the chain")
            act = None
        if act is None:
            self._apply_idle()
            return None
        self.actuation = act
        self._apply(now, act)
        return act

    def _integrate_energy(self, now: float, sample: Any) -> None:
        power = getattr(sample, "power_w", None)
        if isinstance(power, int | float) and math.isfinite(power) and power >= 0:
            if self._last_power_s is not None:
                self.energy_wh += power * min(now - self._last_power_s, 5.0) / 3600.0
            self._last_power_s = now

    def _board_call(self, name: str, *args: Any) -> bool:
        try:
            getattr(self.board, name)(*args)
        except BoardLinkError as exc:
            self.counters.board_write_errors += 1
            self._log_error(f"board.{name}", f"board {name} failed: {exc}")
            return False
        except Exception:
            self.counters.board_write_errors += 1
            self._log_error(f"board.{name}", f"board {name} failed")
            return False
        return True

    def _apply(self, now: float, act: Any) -> None:
        drv = self.driver
        if not act.chain_power_on:
            self._power_down()  # standby ramps to the minimum before this; a trip cuts at once
            self._set_fan(act.fan_pct)
            self._set_vcore(act.vcore_mv)
            return
        powering_on = self._chain_on is not True
        if powering_on:
            self._set_vcore(act.vcore_mv)
            if not self._board_call("set_chain_power", True):
                self._set_fan(act.fan_pct)
                return
            self._chain_on = True
            self._chain_on_s = now
        if powering_on or drv.state in (DOWN, IDLE):
            drv.set_frequency(act.freq_mhz)
            drv.start(now)
        # voltage before a rise in frequency, after a fall (the envelope orders its outputs too:
        # a lower voltage still supports the frequencies it asked for in the last moments, so it
        # may be written once the chips run no faster than this or the previous actuation)
        vcore = int(act.vcore_mv)
        covered = max(act.freq_mhz, self._prev_freq_mhz)
        self._prev_freq_mhz = act.freq_mhz
        if self._vcore_set is None or vcore >= self._vcore_set:
            self._set_vcore(vcore)
            drv.set_frequency(act.freq_mhz)
        else:
            drv.set_frequency(act.freq_mhz)
            if drv.freq_mhz <= covered + 1e-6:
                self._set_vcore(vcore)
        self._set_fan(act.fan_pct)

    def _apply_idle(self) -> None:
        if self.driver.hashing:
            self.driver.set_frequency(self.driver.settings.min_freq_mhz)
        self._set_fan(100)

    def _power_down(self) -> None:
        """Cut chain power (once): the driver forgets the chain, the board powers it off."""
        if self._chain_on is not False:
            self.driver.abort()
            if self._board_call("set_chain_power", False):
                self._chain_on = False

    def _set_vcore(self, mv: int) -> None:
        mv = int(mv)
        if mv != self._vcore_set and self._board_call("set_vcore_mv", mv):
            self._vcore_set = mv

    def _set_fan(self, pct: int) -> None:
        pct = int(pct)
        if pct != self._fan_set and self._board_call("set_fan_pct", pct):
            self._fan_set = pct

    # -- stopping -----------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Idle the chain (ramp to the minimum frequency), power it off, stop every thread."""
        drv = self.driver
        now = self.clock.monotonic()
        try:
            hashing = drv.hashing
            drv.stop(now)
            end = now + STOP_RAMP_TIMEOUT_S
            while hashing and drv.state == STOPPING and now < end:  # the ramp to the minimum
                drv.poll(now)
                self.clock.sleep(max(0.0, min(drv.next_deadline_s(now) - now, 0.05)))
                now = self.clock.monotonic()
        except Exception:
            log.exception("stopping the chain failed")
        self._power_down()
        for close in [*self.on_stop, drv.close]:
            try:
                close()
            except Exception:
                log.exception("closing failed")
        log.info("stopped: chain at %.2f MHz, powered %s", drv.freq_mhz,
                 "off" if self._chain_on is False else "unknown")

    # -- figures ------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """What telemetry publishes (agent.grid.telemetry.SNAPSHOT_FIELDS)."""
        act, s, c = self.actuation, self.sample, self.chain
        return {
            "mode": getattr(act, "mode", "starting"),
            "power_w": getattr(s, "power_w", None),
            "target_w": getattr(act, "target_w", None),
            "hashrate_ghs": c.hashrate_ghs if c is not None else None,
            "freq_mhz": self.driver.freq_mhz,
            "vcore_mv": getattr(s, "vcore_mv", None),
            "temp_c": _hottest(s),
            "board_temp_c": getattr(s, "board_temp_c", None),
            "fan_pct": self._fan_pct(),
            "hw_err": c.hw_errors if c is not None else 0,
            "chips_ok": c.chips_ok if c is not None else 0,
            "energy_wh": self.energy_wh,
        }

    def status_line(self, now: float) -> str:
        """One line: mode, target, measured power, hashrate, hottest chip, fan, chain."""
        act, s = self.actuation, self.sample
        c = self.chain or self.driver.stats(now)

        def num(v: Any, fmt: str, unit: str) -> str:
            return f"{v:{fmt}}{unit}" if isinstance(v, int | float) and math.isfinite(v) else "-"

        hot = _hottest(s)
        fan = self._fan_pct()
        rate = c.hashrate_ghs
        rate_text = f"{rate / 1000:.2f}TH/s" if rate >= 1000 else f"{rate:.1f}GH/s"
        return (
            f"mode={getattr(act, 'mode', 'starting')} "
            f"target={num(getattr(act, 'target_w', None), '.1f', 'W')} "
            f"power={num(getattr(s, 'power_w', None), '.1f', 'W')} "
            f"hashrate={rate_text} "
            f"hottest={num(hot, '.1f', 'C')} "
            f"fan={num(fan, '.0f', '%')} "
            f"freq={c.freq_mhz:.0f}MHz chain={c.state} chips={c.chips_ok}/{c.chips_expected} "
            f"hw={c.hw_errors} crc={c.crc_errors}"
        )

    def _fan_pct(self) -> Any:
        """The fan duty the board reports (before any sample: the one last set)."""
        s = self.sample
        return getattr(s, "fan_pct", None) if s is not None else self._fan_set

    def _log_error(self, key: str, text: str) -> None:
        now = self.clock.monotonic()
        last = self._last_error_log.get(key)
        if last is None or now - last >= ERROR_LOG_PERIOD_S:
            self._last_error_log[key] = now
            log.warning("%s", text, exc_info=log.isEnabledFor(logging.DEBUG))
