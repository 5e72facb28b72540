"""The control thread: the one place that reads the board, asks the governor and writes the
hardware.

`Runtime.run()` loops until `request_stop()` (SIGINT/SIGTERM): every control period it reads a
board sample (and heartbeats the bridge firmware), takes the chain's figures from the driver, calls
`Governor.update`, and applies the actuation (chain power, core voltage, fan, frequency). Between
ticks it polls the driver whenever the driver has something due (frame scripts, ramp steps, jobs)
and serves the optional `GridSession` whenever the MQTT thread wakes it (`wake` Event) or its
policy has something due. One status line per `log.status_period_s`. On stop (`request_stop`, or
`fail(text, code)` from any thread) the chain ramps to its minimum frequency, is powered off
through the board, and every thread is joined.

All hardware writes happen here; the driver's reader thread and the MQTT thread only queue what
they received. Nothing a board, chain or broker sends can raise out of the loop.

Actuation fails safe: the board link (`agent.control.boardlink`) answers every write with what
the bridge applied, and only that counts. The chain is powered on only on a confirmed core
voltage; the frequency goes no higher than the confirmed voltage supports (a failed or short
voltage write leaves it where it is, counted in `vcore_unconfirmed` and logged); what was applied
goes back to the governor, whose envelope plans the next tick from it.

The control thread keeps its pace: a board request that fails slowly (a time-out) ends the
board requests of its tick, and a link that is down is only probed; between the commands of a
burst the grid session hands to the governor, a control tick that fell due runs at once.

A board sample older than the governor's `sensor_stale_s` is no measurement: `snapshot()` and
the status line leave its figures out and say `board: lost`.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from agent.chain.driver import DOWN, FAILED, IDLE, STOPPING, WINDING, ChainDriver
from agent.chain.stats import ChainStats
from agent.clock import Clock
from agent.control import readout
from agent.control.alerts import AlertLog
from agent.control.boardlink import Board, BoardLink

log = logging.getLogger("gridminer.runtime")

HEARTBEAT_PERIOD_S = 0.5
STOP_RAMP_TIMEOUT_S = 5.0
VCORE_SETTLE_S = 0.05  # after a voltage-only step (regulators settle well within this)


class Controller(Protocol):
    """The governor as the runtime uses it (agent.control.governor.Governor)."""

    def update(self, now_s: float, sample: Any, chain_stats: Any = None) -> Any: ...

    def set_target(self, power_w: float, ramp_w_s: float | None = None) -> Any: ...

    def curtail(self, ramp_w_s: float | None = None) -> Any: ...

    def standby(self, ramp_w_s: float | None = None) -> Any: ...

    def resume(self, ramp_w_s: float | None = None) -> Any: ...

    def caps(self) -> Any: ...

    def applied(self, *, freq_mhz: float | None = None, vcore_mv: int | None = None,
                fan_pct: int | None = None, chain_power_on: bool | None = None) -> None: ...

    def freq_supported_mhz(self, vcore_mv: float) -> float: ...

    @property
    def sensor_stale_s(self) -> float: ...


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
    board_errors: int = 0  # sample reads that failed
    board_write_errors: int = 0
    board_skipped: int = 0  # board requests left out: the link was down or timing out
    vcore_unconfirmed: int = 0  # core voltage writes the board did not apply as asked
    freq_held: int = 0  # ticks the frequency stayed below the governor's for want of voltage
    grid_errors: int = 0
    driver_errors: int = 0


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
        #: called with the time after every control tick, on the control thread (the outward
        #: surfaces read the figures here); a hook that fails is logged and the loop goes on
        self.on_tick: list[Callable[[float], None]] = []
        self.counters = RuntimeCounters()
        self.sample_stale_s = float(governor.sensor_stale_s)
        self._alerts = AlertLog(log, clock)
        self.board_link = BoardLink(board, clock, self.counters, self._alerts, period_s=period_s,
                              stale_s=self.sample_stale_s)
        self._lock = threading.Lock()  # error and exit_code (fail() comes from other threads)
        self._stop = threading.Event()
        self._grid_pending = True
        self._grid_due_s = 0.0
        self._next_tick_s: float | None = None
        self._tick_now = False
        self._next_status_s: float | None = None
        self._next_heartbeat_s = 0.0
        self._prev_freq_mhz = 0.0  # the frequency last asked of the driver
        self._control_thread: int | None = None
        self._serving_grid = False
        self._in_tick = False
        self.sample: Any = None  # the latest board sample (current or not: see board_fresh)
        self.chain: ChainStats | None = None
        self.actuation: Any = None
        self.energy_wh = 0.0
        self._last_power_s: float | None = None
        self.exit_code = 0
        self.error: str | None = None
        self.hot = False  # the chain was taken over running (an agent restart)
        self._grid_started = False

    # -- control from other threads ---------------------------------------------------------

    def request_stop(self) -> None:
        """Ask the loop to idle the chain and return (signal handlers call this)."""
        self._stop.set()
        self.wake.set()

    def fail(self, text: str, exit_code: int = 1) -> None:
        """Stop on a fatal error (any thread): `run()` idles the chain as on a stop and returns
        `exit_code`, with `error` = `text`. The first failure is the one reported."""
        with self._lock:
            first = self.error is None
            if first:
                self.error, self.exit_code = text, exit_code
        if first:
            log.error("stopping: %s", text)
        self.request_stop()

    def request_tick(self) -> None:
        """Run the control tick on the next pass (a new target is to be acted on now). Called on
        the control thread while the grid session works through a burst of commands, it also
        runs a control tick that has fallen due meanwhile."""
        self._tick_now = True
        if self._serving_grid and not self._in_tick \
                and threading.get_ident() == self._control_thread:
            now = self.clock.monotonic()
            if self._next_tick_s is not None and now >= self._next_tick_s:
                self._periodic_tick(now)
                self._poll_driver(now)

    def notify_grid(self) -> None:
        """The MQTT thread queued something: serve the grid session now."""
        self._grid_pending = True
        self.wake.set()

    def adopt(self, now: float, freq_mhz: float) -> None:
        """The chain is already powered and hashing at `freq_mhz` (the driver and the governor
        have taken it over): no power-on and no bring-up; the grid session starts hot."""
        self.hot = True
        self.board_link.chain_on = True
        self.board_link.chain_on_s = now
        self._prev_freq_mhz = float(freq_mhz)

    # -- the loop -----------------------------------------------------------------------------

    def run(self) -> int:
        """Run until stopped; returns the exit code (0 after a clean stop, 1 when the chain
        could not be brought up, the code given to `fail()`)."""
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
        self._control_thread = threading.get_ident()
        if self._next_tick_s is None:
            self._next_tick_s = now
            self._next_status_s = now + self.status_period_s
        if now >= self._next_tick_s:
            self._periodic_tick(now)
        self._poll_driver(now)
        if self.grid is not None and (self._grid_pending or now >= self._grid_due_s):
            self._grid_pending = False
            self._serving_grid = True
            try:
                if not self._grid_started:
                    self._grid_started = True
                    start = getattr(self.grid, "start", None)
                    if start is not None:
                        start(hot=self.hot)
                delay = self.grid.service(now)
            except Exception:
                self.counters.grid_errors += 1
                self._alerts.warn("grid", "grid session failed")
                delay = 1.0
            finally:
                self._serving_grid = False
            self._grid_due_s = now + max(0.0, min(float(delay), 1.0))
        if self._tick_now:
            self._tick_now = False
            self._next_tick_s = now
        if self.status_period_s > 0 and self._next_status_s is not None \
                and now >= self._next_status_s:
            self._next_status_s = now + self.status_period_s
            self.status_out(self.status_line(now))

    def _periodic_tick(self, now: float) -> None:
        """The control tick that is due, and when the next one is."""
        assert self._next_tick_s is not None
        if now - self._next_tick_s > self.period_s:
            self.counters.overruns += 1
        act = self.tick(now)
        for hook in self.on_tick:
            try:
                hook(now)
            except Exception:
                self._alerts.warn("tick_hook", "a tick hook failed")
        self._next_tick_s += self.period_s
        if self._next_tick_s <= now:
            self._next_tick_s = now + self.period_s
        held = self.board_link.vcore_mv
        if act is not None and "vcore_first" in getattr(act, "limits", ()) \
                and held is not None and held >= act.vcore_mv:
            # the voltage went up first; the frequency follows once the regulator settled
            self._next_tick_s = min(self._next_tick_s, now + VCORE_SETTLE_S)

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
            self._alerts.warn("driver", "chain driver failed")
        if self.driver.state == FAILED and self.driver.fatal and self.error is None:
            self.fail(self.driver.error or "chain bring-up failed", 1)

    # -- one control period --------------------------------------------------------------------

    def tick(self, now: float) -> Any:
        """Read, decide, actuate."""
        self.counters.ticks += 1
        self._in_tick = True
        try:
            return self._tick(now)
        finally:
            self._in_tick = False
            self.board_link.end_tick()

    def _tick(self, now: float) -> Any:
        link = self.board_link
        sample = link.read(now)
        reboot = link.rebooted()
        if reboot is not None:  # the chips may have been reset with it
            log.warning("%s; re-initialising the board and the chain", reboot)
            self.driver.abort()
        if sample is not None:
            self.sample = sample
            self._integrate_energy(now, sample)
            if link.chain_on and getattr(sample, "chain_powered", True) is False \
                    and now - link.chain_on_s > 1.0:
                # the bridge cut chain power on its own (its trip or watchdog): the chips lost
                # their state, so power on and bring up again when the governor asks for it
                log.warning("the board reports the chain unpowered; re-initialising")
                self.driver.abort()
                link.chain_on = None
        if now >= self._next_heartbeat_s and link.open:
            self._next_heartbeat_s = now + HEARTBEAT_PERIOD_S
            link.call("heartbeat")
        self.chain = self.driver.stats(now)
        try:
            act = self.governor.update(now, sample, self.chain)
        except Exception:
            self._alerts.warn("governor", "governor failed; idling the chain")
            act = None
        if act is None:
            self._apply_idle()
            return None
        self.actuation = act
        self._apply(now, act)
        self.governor.applied(
            freq_mhz=self._prev_freq_mhz if link.chain_on else None, vcore_mv=link.vcore_mv,
            fan_pct=link.fan_pct if link.fan_pct is not None else 0,  # none confirmed: no air
            chain_power_on=link.chain_on is True)
        return act

    @property
    def board_fresh(self) -> bool:
        """The latest board sample is a current measurement (not older than sample_stale_s)."""
        return self.board_link.fresh

    def _integrate_energy(self, now: float, sample: Any) -> None:
        power = getattr(sample, "power_w", None)
        if isinstance(power, int | float) and math.isfinite(power) and power >= 0:
            if self._last_power_s is not None:
                self.energy_wh += power * min(now - self._last_power_s, 5.0) / 3600.0
            self._last_power_s = now

    def _apply(self, now: float, act: Any) -> None:
        link = self.board_link
        if not act.chain_power_on:
            if act.mode == "standby" and self.driver.state == WINDING:
                return  # the chips' clock is still on its way down to the reset clock
            self._power_down()  # standby ramps to the minimum before this; a trip cuts at once
            link.set_fan(act.fan_pct)
            link.set_vcore(act.vcore_mv)
            return
        if link.chain_on is not True and not self._power_on(now, act):
            link.set_fan(act.fan_pct)
            return
        drv = self.driver
        if drv.state in (DOWN, IDLE):
            drv.set_frequency(act.freq_mhz)
            self._prev_freq_mhz = act.freq_mhz
            drv.start(now)
        # voltage before a rise in frequency, after a fall (the envelope orders its outputs too:
        # a lower voltage still supports the frequencies it asked for in the last moments, so it
        # may be written once the chips run no faster than this or the previous actuation)
        vcore = int(act.vcore_mv)
        prev = self._prev_freq_mhz
        rising = link.vcore_mv is None or vcore >= link.vcore_mv
        if rising:
            link.set_vcore(vcore)
        freq = self._supported(act.freq_mhz, prev)
        drv.set_frequency(freq)
        self._prev_freq_mhz = freq
        if not rising and drv.freq_mhz <= max(freq, prev) + 1e-6:
            link.set_vcore(vcore)
        link.set_fan(act.fan_pct)

    def _power_on(self, now: float, act: Any) -> bool:
        """Chain power on at the actuation's (minimum) frequency, only on a confirmed core
        voltage; False when it did not happen."""
        vcore = int(act.vcore_mv)
        held = self.board_link.set_vcore(vcore)
        if held is None or held < vcore or not self.board_link.power_on(now):
            return False
        self.driver.set_frequency(act.freq_mhz)
        self._prev_freq_mhz = act.freq_mhz
        self.driver.start(now)
        return True

    def _supported(self, freq_mhz: float, prev_mhz: float) -> float:
        """`freq_mhz`, or less: no higher than the confirmed core voltage supports (nor than
        `prev_mhz`, where it already ran, when no voltage is confirmed)."""
        held = self.board_link.vcore_mv
        ceiling = prev_mhz if held is None else \
            max(prev_mhz, self.governor.freq_supported_mhz(held))
        if freq_mhz <= ceiling + 1e-6:
            return freq_mhz
        self.counters.freq_held += 1
        self._alerts.warn("freq_held", f"frequency held at {ceiling:.1f} MHz, not "
                        f"{freq_mhz:.1f} MHz: core voltage in force {held} mV")
        return ceiling

    def _apply_idle(self) -> None:
        if self.driver.hashing:
            self.driver.set_frequency(self.driver.settings.min_freq_mhz)
        self.board_link.set_fan(100)

    def _power_down(self) -> None:
        """Cut chain power (once): the driver forgets the chain, the board powers it off
        (until the board confirms, the power is unknown and asked again)."""
        if self.board_link.chain_on is not False:
            self.driver.abort()
            self.board_link.power_off()

    # -- stopping -----------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Idle the chain (ramp to the minimum frequency), power it off, stop every thread."""
        drv = self.driver
        now = self.clock.monotonic()
        try:
            drv.stop(now)  # STOPPING only when the chips run (hashing or winding down)
            end = now + STOP_RAMP_TIMEOUT_S
            while drv.state == STOPPING and now < end:  # the ramp to the minimum
                drv.poll(now)
                self.clock.sleep(max(0.0, min(drv.next_deadline_s(now) - now, 0.05)))
                now = self.clock.monotonic()
        except Exception:
            log.exception("stopping the chain failed")
        self.board_link.end_tick()  # the last word to the board is tried whatever happened
        self._power_down()
        for close in [*self.on_stop, drv.close]:
            try:
                close()
            except Exception:
                log.exception("closing failed")
        log.info("stopped: chain at %.2f MHz, powered %s", drv.freq_mhz,
                 "off" if self.board_link.chain_on is False else "unknown")

    # -- figures ------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """What telemetry publishes (agent.grid.telemetry.SNAPSHOT_FIELDS), plus `board` ("ok",
        or "lost": the measured figures are left out), `mode_reason` and the work source's
        figures (a pool's shares), when it has any."""
        fresh = self.board_fresh
        snap = readout.snapshot(self.actuation, self.chain, readout.measured(self.sample, fresh),
                                freq_mhz=self.driver.freq_mhz, energy_wh=self.energy_wh,
                                fresh=fresh)
        figures = getattr(getattr(self.driver, "work", None), "figures", None)
        if callable(figures):
            snap.update(figures())
        return snap

    def status_line(self, now: float) -> str:
        """One line: mode, target, measured power, hashrate, hottest chip, fan, chain, board
        link (its sample's age once lost), grid link state; why, when tripped or lost."""
        c = self.chain or self.driver.stats(now)
        fresh = self.board_fresh
        grid_state = getattr(getattr(self.grid, "link", None), "state", None)
        return readout.status_line(now, self.actuation, c, readout.measured(self.sample, fresh),
                                   fresh=fresh, sample_s=self.board_link.sample_s,
                                   grid_state=grid_state)
