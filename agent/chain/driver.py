"""The chain driver: brings a BM13xx chain up, feeds it work, checks every nonce it returns.

`ChainDriver` is polled by the control thread (`poll(now)`), which is the only writer to the chain;
one reader thread per port moves received bytes into a queue (`agent.chain.uart`). Bring-up
(`agent.chain.bringup`), frequency ramps (`agent.chain.ramp`) and recovery
(`agent.chain.recovery`) are state machines that send their next frame when its time has come, and
`next_deadline_s()` tells the caller when that is. Nothing waits: before a chip-fault reset the
clock steps down from the governor's floor to the reset clock at the ramp limit in state
`winding` (`agent.chain.ramp.descent_plan`), while the control loop ticks on.

While hashing it sends jobs at the family's cadence (spec §5.3), verifies every nonce against the
job it was found for, and reads a counter register every second. A chain that answers nothing for
`hung_timeout_s` is hung, a chip silent for many expected nonce intervals is dead, one whose
nonces mostly fail is flaky; each of these resets and re-initialises the chain and ramps back to
the frequency last asked for. A chain found hashing at the agent's start is taken over without a
reset (`adopt`, with `agent.chain.takeover`); one that is not what the settings say is wound down
the same way from its running clock, then reset and brought up cold (`wind_down_running`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from agent.chain.bringup import BringUp
from agent.chain.port import SerialPort
from agent.chain.ramp import FrequencyRamp, descent_plan
from agent.chain.recovery import Recovery, WindDown
from agent.chain.script import FrameScript
from agent.chain.settings import ChainSettings, job_interval_s
from agent.chain.stats import ChainStatistics, ChainStats
from agent.chain.takeover import ChainReset, RunningChain
from agent.chain.uart import ChainUart
from agent.chain.work import (
    DEFAULT_VERSION_MASK,
    JobTable,
    RecentNonces,
    Share,
    WorkSource,
    hash_difficulty,
    target_for,
)
from agent.clock import Clock
from agent.errors import ChainError
from firmware_bridge import asic
from firmware_bridge.chips import profile

log = logging.getLogger("gridminer.chain")

# driver states (ChainStats.state)
DOWN, STARTING, RAMPING, MINING, STOPPING, IDLE, FAILED, WINDING = (
    "down", "starting", "ramping", "mining", "stopping", "idle", "failed", "winding")
HASHING = (RAMPING, MINING)
TAKES_NONCES = (RAMPING, MINING, STOPPING, WINDING)  # the chips still hash their last jobs


class ChainDriver:
    """One ASIC chain on one serial port. Call `start(now)`, then `poll(now)` whenever
    `next_deadline_s()` has come (or the wake event fired); `set_frequency` and `stop` at any
    time; `stats(now)` for the figures. Only the control thread calls these methods. With
    `reopen` the port is opened again when it fails (`agent.chain.uart`)."""

    def __init__(
        self,
        port: SerialPort,
        settings: ChainSettings,
        clock: Clock,
        work: WorkSource,
        board: ChainReset | None = None,
        wake: threading.Event | None = None,
        threaded: bool = True,
        name: str = "chain",
        reopen: Callable[[], SerialPort] | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.work = work
        self.board = board
        self.name = name
        self.profile = profile(settings.family)
        self.family = self.profile.family
        self.state = DOWN
        self.error: str | None = None
        self.fatal = False  # the first bring-up failed: the chain is not what the config says
        self.adopted = False  # the chain was taken over running, without a reset
        self.foreign = False  # the chips run as another left them: wound down, their nonces ignored
        self.ticket = float(asic.ticket_difficulty(asic.ticket_mask(settings.ticket_difficulty)))
        self.stats_ = ChainStatistics(
            self.profile.small_cores,
            window_s=settings.stats_window_s,
            dead_intervals=settings.dead_intervals,
            flaky_ratio=settings.flaky_ratio,
        )
        self.stats_.set_ticket(self.ticket)
        self.jobs = JobTable(self.profile.job_id_step, grace_s=settings.job_grace_s)
        self.jobs_sent = 0
        self._recent = RecentNonces()
        self._verify_target = target_for(settings.nonce_difficulty or self.ticket)
        self._counter_reg = (asic.REG_ERROR_COUNT if self.family == "BM1397"
                             else asic.REG_TOTAL_COUNT)
        self._last_frame_s = 0.0
        self._hashing_since_s = 0.0
        self._next_job_s = 0.0
        self._next_counter_s = 0.0
        self._next_health_s = 0.0
        self._chip_version_mask = DEFAULT_VERSION_MASK  # what 0xA4 holds (bring-up writes it)
        self._uart = ChainUart(port, self.family, clock, wake, threaded, name, reopen)
        self._script = FrameScript(self._uart.write)
        self._bringup = BringUp(settings, self._uart, self._script, self.stats_, board,
                                int(self.ticket), name)
        self._ramp = FrequencyRamp(settings, self._uart, self.family)
        self._recovery = Recovery(settings, name)

    # -- public API ---------------------------------------------------------------------------

    def start(self, now: float) -> None:
        """Begin bring-up from reset (also used to re-initialise after a fault)."""
        self._script.clear()
        self._recovery.retry_at_s = None
        self._recovery.reset_pending = None
        self.error = None
        self.state = STARTING
        self.jobs.clear()
        self._ramp.reset()
        self.adopted = self.foreign = False
        self._uart.want_wake = True
        try:
            self._bringup.begin(now)
        except ChainError as exc:
            self._fail(now, str(exc))

    def set_frequency(self, freq_mhz: float) -> None:
        """Ask for a hash clock; the driver ramps there in steps and then rewrites the HCN.
        Kept across recoveries; ignored while stopping or winding down to a reset."""
        self._ramp.request(freq_mhz, retarget=self.state not in (STOPPING, WINDING))

    def stop(self, now: float) -> None:
        """Stop hashing: no more jobs, ramp to the minimum frequency, rewrite HCN, then IDLE
        (a wind-down to a reset goes on at its pace, and ends IDLE instead)."""
        if self.state in (*HASHING, WINDING):
            self.state = STOPPING
            self._ramp.stop(now)
        elif self.state != STOPPING:
            self._script.clear()
            self.state = IDLE if self.state != DOWN else DOWN
            self._recovery.retry_at_s = None

    def abort(self) -> None:
        """Forget the chain's state at once (its power was cut): DOWN, nothing more is sent."""
        self._script.clear()
        self._recovery.retry_at_s = None
        self._recovery.reset_pending = None
        self.state = DOWN
        self.foreign = False
        self._ramp.reset()
        self.jobs.clear()

    def adopt(self, now: float, running: RunningChain) -> None:
        """Take over a chain that is already hashing (the agent restarted): no reset. The chips
        keep their addresses, baud and clock; the ticket mask and version rolling are written
        again, jobs follow, and the frequency stays where it was read until asked otherwise."""
        self._script.clear()
        self._recovery.retry_at_s = None
        self.error = None
        self.jobs.clear()
        self._ramp.adopt(running.freq_mhz, running.pll_value)
        self.adopted = True
        self.foreign = False
        self._bringup.adopt(running, now)
        log.info("%s: took over %d running %s chips at %.2f MHz (no reset)", self.name,
                 len(self.addresses), self.family, self.freq_mhz)
        self._begin_hashing(now)

    def wind_down_running(self, now: float, running: RunningChain, reason: str) -> None:
        """A chain found hashing that cannot be taken over (`RunningChain.problem`: `reason`):
        its load must not drop at once either. As before a chip-fault reset (`wind_down`), its
        clock steps down to the reset clock at the ramp (state WINDING, `reset_pending` says
        why), then the chain is reset and brought up cold as the settings say. Only broadcast
        PLL writes go to the chips meanwhile, in their own family and at their baud: nothing
        that needs their count or addresses. Without a `wind_down` the reset comes at once."""
        self._script.clear()
        self._recovery.retry_at_s = None
        self.error = None
        self.jobs.clear()
        self.adopted = False
        self.foreign = True
        self._ramp.adopt(running.freq_mhz, running.pll_value, running.family)
        self._uart.set_baud(running.host_baud)
        self._uart.flush_input()
        self._recovery.reset_pending = reason
        log.warning("%s: %s; winding %d %s chips down from %.2f MHz at the ramp before a "
                    "reset", self.name, reason, running.count, running.family, running.freq_mhz)
        self._wind_down(now)

    @property
    def hashing(self) -> bool:
        return self.state in HASHING

    @property
    def phase(self) -> str:
        """Inside STARTING: reset, enumerate, configure, verify."""
        return self._bringup.phase

    @property
    def addresses(self) -> list[int]:
        """The chips' addresses, in chain order."""
        return self._bringup.addresses

    @property
    def freq_mhz(self) -> float:
        return self._ramp.freq_mhz

    @property
    def target_freq_mhz(self) -> float:
        return self._ramp.target_freq_mhz

    @property
    def requested_freq_mhz(self) -> float:
        return self._ramp.requested_mhz

    @property
    def wind_down(self) -> WindDown | None:
        """Set by the agent: a chip fault brings the load down this way before its reset, and
        so does a running chain that cannot be taken over (`wind_down_running`)."""
        return self._recovery.wind_down

    @wind_down.setter
    def wind_down(self, value: WindDown | None) -> None:
        self._recovery.wind_down = value

    @property
    def reset_pending(self) -> str | None:
        """Why a reset waits for the load to come down (None: none does)."""
        return self._recovery.reset_pending

    @property
    def recoveries(self) -> int:
        return self._recovery.recoveries

    def stats(self, now: float) -> ChainStats:
        self._sync_counters()
        self.stats_.advance(now, self.freq_mhz, self.hashing)
        return self.stats_.snapshot(
            now, self.state, self.family, self.freq_mhz, self.target_freq_mhz,
            max(self.settings.chips or 0, len(self.addresses)), self.reset_pending,
        )

    def next_deadline_s(self, now: float) -> float:
        """When `poll` next has something to do (at the latest `now + 1`)."""
        t = now + 1.0
        if self._script:
            t = min(t, self._script.due_s)
        if self.state == STARTING:
            t = min(t, self._bringup.deadline_s)
        elif self.state in (RAMPING, MINING, STOPPING, WINDING):
            if self._ramp.pending:
                t = min(t, self._ramp.next_step_s)
            if self.state in HASHING:
                t = min(t, self._next_job_s, self._next_counter_s, self._next_health_s)
        elif self.state == FAILED and self._recovery.retry_at_s is not None:
            t = min(t, self._recovery.retry_at_s)
        return t

    def close(self) -> None:
        """Stop the reader thread and close the port."""
        self._uart.close()

    # -- the poll -----------------------------------------------------------------------------

    def poll(self, now: float) -> None:
        """Take in received bytes, then do whatever is due. Never raises on bad input."""
        self._receive(now)
        self._script.run(now)
        state = self.state
        if state == STARTING:
            try:
                up = self._bringup.poll(now, self._last_frame_s)
            except ChainError as exc:
                self._fail(now, str(exc))
            else:
                if up:
                    self._begin_hashing(now)
        elif state in (RAMPING, MINING):
            self._poll_hashing(now)
        elif state == STOPPING:
            self._ramp.poll(now, len(self.addresses))
            if not self._ramp.pending:
                self.state = IDLE
                log.info("%s idle at %.2f MHz", self.name, self.freq_mhz)
        elif state == WINDING:
            self._ramp.poll(now, len(self.addresses))
            if not self._ramp.pending:
                log.info("%s: wound down to %.2f MHz", self.name, self.freq_mhz)
                self._reinitialise(now)
        elif (state == FAILED and self._recovery.retry_at_s is not None
              and now >= self._recovery.retry_at_s):
            log.info("%s: retrying initialisation", self.name)
            self.start(now)

    def bring_up(self, timeout_s: float = 10.0) -> None:
        """Blocking bring-up for tools and tests: start, poll until hashing; ChainError if the
        chain fails or does not come up within `timeout_s`."""
        now = self.clock.monotonic()
        deadline = now + timeout_s
        self.start(now)
        while True:
            self.poll(now)
            if self.hashing:
                return
            if self.state == FAILED and self._recovery.retry_at_s is None:
                raise ChainError(self.error or "chain bring-up failed")
            if now >= deadline:
                raise ChainError(f"chain bring-up timed out after {timeout_s:g} s "
                                 f"(stuck in {self.phase or self.state})")
            self.wait(min(self.next_deadline_s(now), deadline) - now)
            now = self.clock.monotonic()

    def wait(self, seconds: float) -> None:
        """Sleep until `seconds` pass or bytes arrive (with a reader thread and a wake event)."""
        self._uart.wait(seconds)

    # -- receiving ----------------------------------------------------------------------------

    def _receive(self, now: float) -> None:
        replies = self._uart.receive()
        if not replies:
            return
        self._last_frame_s = now
        for reply in replies:
            if reply.kind == "nonce":
                self._on_nonce(reply, now)
            else:
                self._on_register(reply, now)

    def _on_register(self, reply: Any, now: float) -> None:
        if self.state == STARTING and self._bringup.take(reply, now):
            return
        chip = self.stats_.chip_by_address(reply.chip_addr)
        if chip is not None:  # the counter read's answer, or any other: the chip is alive
            self.stats_.record_reply(chip.index, now)

    def _on_nonce(self, reply: Any, now: float) -> None:
        if self.state not in TAKES_NONCES or self.foreign:
            return
        stats = self.stats_
        chip = stats.chip_index(reply.chip_addr_field)
        if chip is not None and chip >= len(stats.chips):
            chip = None
        if self.profile.midstate_jobs:  # BM1397: the midstate index names the rolled version
            work = self.jobs.get(reply.job_id)
            mask = work.version_mask if work is not None else DEFAULT_VERSION_MASK
            version_bits = asic.rolled_version(0, mask, reply.midstate)
        else:
            version_bits = reply.version_bits
        if self._recent.seen((reply.job_id, reply.nonce, version_bits)):
            if chip is not None:
                stats.record_duplicate(chip, now)
            return
        stats.advance(now, self.freq_mhz, True)
        check = self.jobs.check(reply.job_id, reply.nonce, version_bits, self._verify_target, now)
        if chip is None:
            stats.unattributed += 1
            return
        if check.work is None:
            if self.adopted and now - self._hashing_since_s < self.settings.job_grace_s:
                return  # a nonce for a job the previous agent sent, before the takeover
            stats.record_hw_error(chip, now)
            return
        stats.record_valid(chip, now, check.stale)
        try:
            self.work.submit(Share(check.work, reply.nonce, version_bits,
                                   hash_difficulty(check.hash_value), chip, now))
        except Exception:  # a work source must not take the chain down
            log.exception("%s: work source rejected a share", self.name)

    def _sync_counters(self) -> None:
        self.stats_.crc_errors = self._uart.crc_errors
        self.stats_.discarded_bytes = self._uart.discarded_bytes

    # -- hashing ------------------------------------------------------------------------------

    def _begin_hashing(self, now: float) -> None:
        # every read keeps waking the control thread: a nonce is verified and goes to the pool
        # at once, not at the next control tick
        self._uart.want_wake = True
        self._recovery.up()
        self.state = RAMPING
        self.fatal = False
        self._hashing_since_s = now
        self._last_frame_s = now
        self._next_job_s = now
        self._next_counter_s = now + self.settings.counter_interval_s
        self._next_health_s = now + 1.0
        self._chip_version_mask = DEFAULT_VERSION_MASK  # bring-up and takeover write it
        self._ramp.begin(now)
        self.stats_.advance(now, self.freq_mhz, True)
        self._poll_hashing(now)
        log.info("%s: %d %s chips up, ramping to %.2f MHz", self.name, len(self.addresses),
                 self.family, self.target_freq_mhz)

    def _poll_hashing(self, now: float) -> None:
        self._ramp.poll(now, len(self.addresses))
        if self.state == MINING and self.freq_mhz != self.target_freq_mhz:
            self.state = RAMPING
        elif self.state == RAMPING and self.freq_mhz == self.target_freq_mhz:
            self.state = MINING
        if now >= self._next_job_s or self._work_stale(now):
            self._send_job(now)
        if now >= self._next_counter_s:
            self._uart.write(asic.cmd_read(self._counter_reg))
            self._next_counter_s = now + self.settings.counter_interval_s
        reason = self._recovery.due(now, self.freq_mhz)
        if reason is not None:
            self._recover(now, reason)
            return
        if now >= self._next_health_s:
            self._next_health_s = now + 1.0
            reason = self._recovery.check(now, self.stats_, now - self._last_frame_s,
                                          now - self._hashing_since_s)
            if reason is not None:
                self._recover(now, reason)

    def _work_stale(self, now: float) -> bool:
        """The work source has new work that makes the chips' work stale (a new block)."""
        try:
            return self.work.clean_pending(now)
        except Exception:
            log.exception("%s: work source failed", self.name)
            return False

    def _send_job(self, now: float) -> None:
        try:
            work = self.work.next_work(now)
        except Exception:
            log.exception("%s: work source failed", self.name)
            self._next_job_s = now + 1.0
            return
        job_id = self.jobs.next_job_id()
        mask = work.version_mask if self.profile.midstate_jobs else 0
        # hardware rolling: the chips roll what 0xA4 says (the pool's mask; 0: none)
        if not self.profile.midstate_jobs and work.version_mask != self._chip_version_mask \
                and self._uart.write(asic.cmd_write(
                    asic.REG_VERSION_ROLLING, asic.version_rolling_value(work.version_mask))):
            self._chip_version_mask = work.version_mask
        frame = asic.job_frame(self.family, job_id, work.header80, mask)
        if self._uart.write(frame):
            self.jobs.put(job_id, work, now)
            self.jobs_sent += 1
        interval = self.settings.job_interval_s
        if interval is None:
            interval = job_interval_s(self.family, max(1, len(self.addresses)), self.freq_mhz)
        self._next_job_s = now + interval

    # -- faults -------------------------------------------------------------------------------

    def _fail(self, now: float, reason: str) -> None:
        self._script.clear()
        self._uart.want_wake = False
        self.error = reason
        self.state = FAILED
        if self._recovery.failed(now, reason, self._bringup.ever_up):
            self.fatal = True

    def _recover(self, now: float, reason: str) -> None:
        rec = self._recovery
        rec.recovering(now, reason)
        self.stats_.resets += 1
        if rec.reset_pending is not None:  # the chips still take commands
            self._wind_down(now)
        else:
            self._reinitialise(now)

    def _wind_down(self, now: float) -> None:
        """Down from the clock the chips run at to the reset at the ramp limit (state WINDING,
        a step per poll; the reset follows in `poll`), paced as if all of the measured power
        were clock-bound (the slowest pace; a model is least sure down here). Without a
        `wind_down` the reset comes at once."""
        wd = self._recovery.wind_down
        if wd is None:
            self._reinitialise(now)
            return
        measured_w, f0 = wd.measured_w(), self.freq_mhz
        power_w = wd.power_w if measured_w is None or measured_w <= 0 else (
            lambda f: measured_w * f / f0)
        self.state = WINDING
        self._ramp.descend(now, descent_plan(f0, power_w, wd.ramp_w_s,
                                             self.settings.ramp_interval_s,
                                             self.settings.ramp_step_mhz))

    def _reinitialise(self, now: float) -> None:
        """Reset the chain and bring it up again."""
        self._uart.new_parser()
        self.start(now)
