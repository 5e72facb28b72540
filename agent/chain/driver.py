"""The chain driver: brings a BM13xx chain up, feeds it work, checks every nonce it returns.

`ChainDriver` is polled by the control thread (`poll(now)`), which is the only writer to the chain;
one reader thread per port moves received bytes into a queue. Nothing blocks: bring-up, frequency
ramps and recovery are state machines that send their next frame when its time has come, and
`next_deadline_s()` tells the caller when that is.

Bring-up (spec §6): reset (the board's reset_chain), UART at the initial rate, the family's
enumeration frames, count the chip-ID replies (done as soon as the configured count has arrived
and the line is quiet for a moment; ESP-Miner waits a fixed second), check ids and count, setup
frames, baud switch (frame sent at the old rate, drained, then the host rate changes), a chip-ID
read at the new rate to confirm the link, then hashing: jobs at the family's cadence (§5.3) and a
frequency ramp in configurable steps to the target, then the hash counting number (§4.6).

While hashing it reads a counter register every second; a chain that answers nothing for
`hung_timeout_s` is hung, a chip silent for many expected nonce intervals is dead, one whose
nonces mostly fail is flaky. Each of these resets and re-initialises the chain (with a back-off)
and ramps back to the frequency last asked for. A hung chain takes no commands, so it is reset at
once. A dead or flaky chip still leaves the others hashing: with a `WindDown` set, the driver
marks the reset pending (`reset_pending`, also in its stats), the governor brings the load down at
its ramp as any other move, and the reset follows once the chips run at the governor's floor (or
after the wind-down's time-out): the control thread never waits for it.

Takeover (an agent restart while the chain hashes): `read_running_chain` reads chip IDs and PLL0
at the fast baud without a reset (a chain fresh from reset answers at 115200 only) and `adopt`
goes on hashing at the clock read back, re-sending only what is safe without a reset (ticket
mask, version rolling, HCN, jobs). `wind_down` steps a running chain that cannot be taken over
down to 50 MHz within a power ramp before the reset.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from agent.chain.stats import ChainStatistics, ChainStats, ticket_for
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
from agent.errors import BoardLinkError, ChainError
from firmware_bridge import asic, bringup
from firmware_bridge.chips import FAMILIES, PROFILES, profile

log = logging.getLogger("gridminer.chain")

INITIAL_BAUD = 115200
QUIET = b""  # in the receive queue: a read returned nothing, the line is quiet
START_FREQ_MHZ = 50.0  # the chips' hash clock after reset (spec §4.1)


class ChainReset(Protocol):
    """What the driver needs from the board link: a pulse on the chips' reset line."""

    def reset_chain(self) -> None: ...


class SerialPort(Protocol):
    """The part of a pyserial port the driver uses."""

    baudrate: int

    def write(self, data: bytes) -> int | None: ...

    def read(self, size: int = 1) -> bytes: ...

    def flush(self) -> None: ...

    def reset_input_buffer(self) -> None: ...

    def close(self) -> None: ...

    @property
    def in_waiting(self) -> int: ...


def open_port(url: str, baudrate: int = INITIAL_BAUD, timeout_s: float = 0.05) -> Any:
    """Open a serial port by name or pyserial URL (pty path, /dev/ttyUSB0, rfc2217://,
    socket://, asicemu://); ChainError with the reason if it cannot be opened."""
    import serial  # pyserial; imported here so unit tests of the logic do not need a port

    try:
        return serial.serial_for_url(url, baudrate=baudrate, timeout=timeout_s, write_timeout=2.0)
    except (serial.SerialException, OSError, ValueError) as exc:
        raise ChainError(f"cannot open chain port {url}: {exc}") from None


@dataclass(frozen=True)
class WindDown:
    """How the load comes down before a chip-fault reset (set by the agent from its governor)."""

    power_w: Callable[[float], float]  # the modelled power at a frequency
    measured_w: Callable[[], float | None]  # the latest measured board power
    ramp_w_s: float  # the ramp limit
    floor_mhz: float  # the governor's lowest frequency: the reset waits for the chips to run there
    timeout_s: float  # ... or this long at most


@dataclass(frozen=True)
class ChainSettings:
    """How to drive the chain. Times in seconds of the injected clock."""

    family: str = "BM1370"
    chips: int | None = 1  # expected count; None: take what answers (probe)
    ticket_difficulty: float = 256
    nonce_difficulty: float | None = None  # verify nonces against this (emulation); None: ticket
    initial_baud: int = INITIAL_BAUD
    baud_switch: bool = True
    min_freq_mhz: float = START_FREQ_MHZ
    max_freq_mhz: float = 800.0
    ramp_step_mhz: float = 6.25
    ramp_interval_s: float = 0.1
    reset_settle_s: float = 0.1  # after the reset pulse, before the first frame (ESP-Miner 100 ms)
    enum_timeout_s: float = 1.0  # no further chip-ID reply for this long: counting is over
    enum_settle_s: float = 0.03  # quiet time after the configured count has arrived
    verify_timeout_s: float = 1.0  # for the chip-ID read at the new baud
    start_attempts: int = 3  # the first bring-up: tries before the error is final
    job_interval_s: float | None = None  # None: the family's cadence (spec §5.3)
    counter_interval_s: float = 1.0
    hung_timeout_s: float = 3.5
    job_grace_s: float = 2.0
    stats_window_s: float = 30.0
    dead_intervals: float = 40.0
    dead_min_s: float = 20.0  # never call a chip dead sooner than this after (re)start
    flaky_ratio: float = 0.5
    recover_backoff_s: float = 30.0  # first wait between recoveries; doubles up to the max
    recover_backoff_max_s: float = 600.0
    accept_fewer_on_recovery: bool = True  # a re-init may go on with the chips that answer

    def __post_init__(self) -> None:
        if self.family not in PROFILES:
            raise ValueError(f"unknown chip family {self.family!r}; one of {', '.join(FAMILIES)}")

    @classmethod
    def from_config(cls, chain: Any, envelope: Any | None = None,
                    **overrides: Any) -> ChainSettings:
        """Settings from agent.config's [chain] (and [envelope] frequency bounds)."""
        values: dict[str, Any] = {
            "family": chain.family,
            "chips": chain.chips,
            "ticket_difficulty": chain.ticket_difficulty or _auto_ticket(chain.family, chain.chips),
            "nonce_difficulty": chain.nonce_difficulty,
            "initial_baud": chain.baud,
            "ramp_step_mhz": chain.freq_step_mhz,
            "ramp_interval_s": chain.freq_step_interval_s,
        }
        for name in ("job_interval_s", "counter_interval_s", "hung_timeout_s"):
            if getattr(chain, name, None) is not None:
                values[name] = getattr(chain, name)
        if envelope is not None and getattr(envelope, "max_freq_mhz", None):
            values["max_freq_mhz"] = max(float(envelope.max_freq_mhz), START_FREQ_MHZ)
        values.update(overrides)
        return cls(**values)


def next_pow2(n: int) -> int:
    p = 1
    while p < n:
        p <<= 1
    return p


def _auto_ticket(family: str, chips: int) -> int:
    """Ticket difficulty for a steady hashrate figure at the family's default clock."""
    prof = profile(family)
    return ticket_for(prof.hashrate_ghs(prof.default_freq_mhz, chips))


def job_interval_s(family: str, chips: int, freq_mhz: float) -> float:
    """Time between fresh jobs (spec §5.3, ESP-Miner): BM1366 2 s, BM1368/70 0.5 s, over
    next_pow2(chips); BM1397 the time to sweep its nonce space at `freq_mhz`."""
    n = next_pow2(max(1, chips))
    if family == "BM1366":
        return 2.0 / n
    if family == "BM1397":
        if freq_mhz <= 0:
            return 0.02 / n
        return 2**24 / n / (freq_mhz * 1e6)
    return 0.5 / n


# driver states (ChainStats.state)
DOWN, STARTING, RAMPING, MINING, STOPPING, IDLE, FAILED = (
    "down", "starting", "ramping", "mining", "stopping", "idle", "failed")
HASHING = (RAMPING, MINING)


class ChainDriver:
    """One ASIC chain on one serial port. Call `start(now)`, then `poll(now)` whenever
    `next_deadline_s()` has come (or the wake event fired); `set_frequency` and `stop` at any
    time; `stats(now)` for the figures. Only the control thread calls these methods."""

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
    ) -> None:
        self.port = port
        self.settings = settings
        self.clock = clock
        self.work = work
        self.board = board
        self.wake = wake
        self.name = name
        self.profile = profile(settings.family)
        self.family = self.profile.family
        self.state = DOWN
        self.phase = ""  # inside STARTING: reset, enumerate, configure, verify
        self.error: str | None = None
        self.fatal = False  # the first bring-up failed: the chain is not what the config says
        self.ever_hashed = False
        self.chip_ids: list[tuple[int, int]] = []  # (register 0x00 value, reporting address)
        self.wind_down: WindDown | None = None  # set by the agent: chip faults wind down first
        self.reset_pending: str | None = None  # why a reset waits for the load to come down
        self._reset_due_s = 0.0  # when it comes anyway
        self.addresses: list[int] = []
        self.freq_mhz = START_FREQ_MHZ
        self.target_freq_mhz = max(settings.min_freq_mhz, START_FREQ_MHZ)
        self._requested_mhz = self.target_freq_mhz
        self.ticket = float(asic.ticket_difficulty(asic.ticket_mask(settings.ticket_difficulty)))
        self._verify_target = target_for(settings.nonce_difficulty or self.ticket)
        self.stats_ = ChainStatistics(
            self.profile.small_cores,
            window_s=settings.stats_window_s,
            dead_intervals=settings.dead_intervals,
            flaky_ratio=settings.flaky_ratio,
        )
        self.stats_.set_ticket(self.ticket)
        self.jobs = JobTable(self.profile.job_id_step, grace_s=settings.job_grace_s)
        self._recent = RecentNonces()
        self._parser = asic.ResponseParser(self.family)
        self._crc_base = 0
        self._discard_base = 0
        self._script: deque[tuple[bytes | Callable[[float], None], float]] = deque()
        self._script_due = 0.0
        self._phase_until = 0.0
        self._last_frame_s = 0.0
        self._next_ramp_s = 0.0
        self._next_job_s = 0.0
        self._next_counter_s = 0.0
        self._next_health_s = 0.0
        self._hashing_since_s = 0.0
        self._retry_at_s: float | None = None
        self._backoff_s = settings.recover_backoff_s
        self._last_recover_s: float | None = None
        self._verify_replies = 0
        self._verify_bytes_in = 0
        self._hcn_pending = False
        self._pll_value = asic.pll_value(self.family, START_FREQ_MHZ)
        self._hcn_written: bytes | None = None
        self._counter_reg = (asic.REG_ERROR_COUNT if self.family == "BM1397"
                             else asic.REG_TOTAL_COUNT)
        self.counters: dict[int, int] = {}  # chip address -> last counter register value
        self.bytes_out = 0
        self.bytes_in = 0
        self.link_errors = 0
        self.recoveries = 0
        self.jobs_sent = 0
        self.nonces = 0
        self.recovery_reasons: list[str] = []
        self._attempts = 0
        self.adopted = False  # the chain was taken over running, without a reset
        # reader thread
        self._rx: queue.SimpleQueue[bytes | BaseException] = queue.SimpleQueue()
        self._threaded = threaded
        self._closing = threading.Event()
        self._want_wake = False
        self._reader: threading.Thread | None = None
        if threaded:
            self._reader = threading.Thread(target=self._read_loop, name=f"{name}-reader",
                                            daemon=True)
            self._reader.start()

    # -- public API ---------------------------------------------------------------------------

    def start(self, now: float) -> None:
        """Begin bring-up from reset (also used to re-initialise after a fault)."""
        self._script.clear()
        self._retry_at_s = None
        self.reset_pending = None
        self.error = None
        self.state = STARTING
        self.jobs.clear()
        self.freq_mhz = START_FREQ_MHZ
        self._pll_value = asic.pll_value(self.family, START_FREQ_MHZ)
        self._hcn_written = None
        self._hcn_pending = False
        self.adopted = False
        self.phase = "reset"
        self._want_wake = True
        if self.board is not None:
            try:
                self.board.reset_chain()
            except BoardLinkError as exc:
                self._fail(now, f"chain reset over the board link failed: {exc}")
                return
        self._set_host_baud(self.settings.initial_baud)
        self._flush_input()
        self._phase_until = now + self.settings.reset_settle_s

    def set_frequency(self, freq_mhz: float) -> None:
        """Ask for a hash clock; the driver ramps there in steps and then rewrites the HCN.
        Kept across recoveries; ignored while stopping."""
        f = min(max(float(freq_mhz), self.settings.min_freq_mhz), self.settings.max_freq_mhz)
        self._requested_mhz = f
        if self.state != STOPPING:
            self.target_freq_mhz = f

    def stop(self, now: float) -> None:
        """Stop hashing: no more jobs, ramp to the minimum frequency, rewrite HCN, then IDLE."""
        if self.state in HASHING:
            self.state = STOPPING
            self.target_freq_mhz = START_FREQ_MHZ
            self._next_ramp_s = min(self._next_ramp_s, now)
        elif self.state != STOPPING:
            self._script.clear()
            self.state = IDLE if self.state != DOWN else DOWN
            self._retry_at_s = None

    def abort(self) -> None:
        """Forget the chain's state at once (its power was cut): DOWN, nothing more is sent."""
        self._script.clear()
        self._retry_at_s = None
        self.reset_pending = None
        self.state = DOWN
        self.freq_mhz = START_FREQ_MHZ
        self.jobs.clear()

    def adopt(self, now: float, running: RunningChain) -> None:
        """Take over a chain that is already hashing (the agent restarted): no reset. The chips
        keep their addresses, baud and clock; the ticket mask and version rolling are written
        again, jobs follow, and the frequency stays where it was read until asked otherwise."""
        self._script.clear()
        self._retry_at_s = None
        self.error = None
        self.phase = ""
        self.jobs.clear()
        self.addresses = list(running.addresses)
        self.chip_ids = [((running.chip_id << 16) | a, a) for a in running.addresses]
        self.stats_.set_chips(self.addresses, now)
        self._set_host_baud(running.host_baud)
        self._flush_input()
        self.freq_mhz = running.freq_mhz
        self._pll_value = running.pll_value
        self._requested_mhz = self.target_freq_mhz = running.freq_mhz
        self._hcn_written = None
        self._hcn_pending = True  # the counting number for this clock and count, written again
        self.adopted = True
        self._queue(takeover_frames(self.family, int(self.ticket)), now)
        self._run_script(now)
        log.info("%s: took over %d running %s chips at %.2f MHz (no reset)", self.name,
                 len(self.addresses), self.family, self.freq_mhz)
        self._begin_hashing(now)

    @property
    def hashing(self) -> bool:
        return self.state in HASHING

    @property
    def requested_freq_mhz(self) -> float:
        return self._requested_mhz

    def stats(self, now: float) -> ChainStats:
        self._sync_counters()
        self.stats_.advance(now, self.freq_mhz, self.hashing)
        return self.stats_.snapshot(
            now, self.state, self.family, self.freq_mhz, self.target_freq_mhz,
            self.settings.chips or len(self.addresses), self.reset_pending,
        )

    def next_deadline_s(self, now: float) -> float:
        """When `poll` next has something to do (at the latest `now + 1`)."""
        t = now + 1.0
        if self._script:
            t = min(t, self._script_due)
        if self.state == STARTING:
            t = min(t, self._phase_until)
        elif self.state in (RAMPING, MINING, STOPPING):
            if self.freq_mhz != self.target_freq_mhz or self._hcn_pending:
                t = min(t, self._next_ramp_s)
            if self.state != STOPPING:
                t = min(t, self._next_job_s, self._next_counter_s, self._next_health_s)
        elif self.state == FAILED and self._retry_at_s is not None:
            t = min(t, self._retry_at_s)
        return t

    def close(self) -> None:
        """Stop the reader thread and close the port."""
        self._closing.set()
        if self._reader is not None:
            self._reader.join(timeout=1.0)
        with contextlib.suppress(Exception):
            self.port.close()

    # -- the poll -----------------------------------------------------------------------------

    def poll(self, now: float) -> None:
        """Take in received bytes, then do whatever is due. Never raises on bad input."""
        self._receive(now)
        self._run_script(now)
        state = self.state
        if state == STARTING:
            self._poll_starting(now)
        elif state in (RAMPING, MINING):
            self._poll_hashing(now)
        elif state == STOPPING:
            self._poll_ramp(now)
            if self.freq_mhz == self.target_freq_mhz and not self._hcn_pending:
                self.state = IDLE
                log.info("%s idle at %.2f MHz", self.name, self.freq_mhz)
        elif state == FAILED and self._retry_at_s is not None and now >= self._retry_at_s:
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
            if self.state == FAILED and self._retry_at_s is None:
                raise ChainError(self.error or "chain bring-up failed")
            if now >= deadline:
                raise ChainError(f"chain bring-up timed out after {timeout_s:g} s "
                                 f"(stuck in {self.phase or self.state})")
            self.wait(min(self.next_deadline_s(now), deadline) - now)
            now = self.clock.monotonic()

    def wait(self, seconds: float) -> None:
        """Sleep until `seconds` pass or bytes arrive (with a reader thread and a wake event)."""
        if seconds <= 0:
            return
        if self.wake is not None and self._threaded:
            self.wake.wait(seconds)
            self.wake.clear()
        elif self._threaded:
            self.clock.sleep(seconds)
        else:  # bytes are read in poll: look again soon
            self.clock.sleep(min(seconds, 0.005))

    # -- receiving ----------------------------------------------------------------------------

    def _read_loop(self) -> None:
        port = self.port
        quiet = True
        while not self._closing.is_set():
            try:
                waiting = port.in_waiting
                data = port.read(max(1, min(int(waiting or 0), 65536)))
            except Exception as exc:  # port closed, device gone: report and back off
                if self._closing.is_set():
                    return
                self._rx.put(exc)
                self._closing.wait(0.5)
                continue
            if data:
                self._rx.put(bytes(data))
                quiet = False
            elif not quiet:  # a read timed out: tell the parser the line went quiet (QUIET)
                self._rx.put(QUIET)
                quiet = True
            else:
                continue
            if self._want_wake and self.wake is not None:
                self.wake.set()

    def _take_rx(self) -> list[bytes]:
        chunks: list[bytes] = []
        if self._threaded:
            while True:
                try:
                    item = self._rx.get_nowait()
                except queue.Empty:
                    break
                if isinstance(item, BaseException):
                    self.link_errors += 1
                    log.warning("%s: read error: %s", self.name, item)
                else:
                    chunks.append(item)
        else:
            try:
                waiting = self.port.in_waiting
                chunks.append(bytes(self.port.read(waiting)) if waiting else QUIET)
            except Exception as exc:
                self.link_errors += 1
                log.warning("%s: read error: %s", self.name, exc)
        return chunks

    def _flush_input(self) -> None:
        with contextlib.suppress(Exception):
            self.port.reset_input_buffer()
        self._take_rx()
        self._parser.reset()

    def _receive(self, now: float) -> None:
        chunks = self._take_rx()
        if not chunks:
            return
        data = b"".join(chunks)
        replies: list[Any] = []
        if data:
            self.bytes_in += len(data)
            replies = self._parser.feed(data)
        if not chunks[-1] and self._parser.pending():
            # the last read found the line quiet: a reply with AA 55 inside was held back
            replies += self._parser.flush()
        if not replies:
            return
        self._last_frame_s = now
        for reply in replies:
            if reply.kind == "nonce":
                self._on_nonce(reply, now)
            else:
                self._on_register(reply, now)

    def _on_register(self, reply: Any, now: float) -> None:
        phase = self.phase if self.state == STARTING else ""
        if phase == "enumerate":
            if reply.reg == asic.REG_CHIP_ID:
                self.chip_ids.append((reply.value, reply.chip_addr))
                self._phase_until = now + self.settings.enum_timeout_s
            return
        if phase == "verify":
            if reply.reg == asic.REG_CHIP_ID:
                self._verify_replies += 1
            return
        chip = self.stats_.chip_by_address(reply.chip_addr)
        if chip is not None:
            self.stats_.record_reply(chip.index, now)
            if reply.reg == self._counter_reg:
                self.counters[reply.chip_addr] = reply.value

    def _on_nonce(self, reply: Any, now: float) -> None:
        if self.state not in (RAMPING, MINING, STOPPING):
            return
        self.nonces += 1
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
        self.stats_.crc_errors = self._crc_base + self._parser.crc_errors
        self.stats_.discarded_bytes = self._discard_base + self._parser.discarded_bytes

    # -- sending ------------------------------------------------------------------------------

    def _write(self, data: bytes) -> bool:
        try:
            self.port.write(data)
        except Exception as exc:  # write timeout, port gone
            self.link_errors += 1
            log.warning("%s: write failed: %s", self.name, exc)
            return False
        self.bytes_out += len(data)
        return True

    def _set_host_baud(self, baud: int) -> None:
        try:
            if self.port.baudrate != baud:
                self.port.baudrate = baud
        except Exception as exc:
            self.link_errors += 1
            log.warning("%s: cannot set %d baud: %s", self.name, baud, exc)

    def _queue(self, frames: list[tuple[bytes, int]], now: float) -> None:
        if not self._script:
            self._script_due = now
        for frame, delay_ms in frames:
            self._script.append((frame, delay_ms / 1000.0))

    def _queue_call(self, fn: Callable[[float], None], delay_s: float = 0.0) -> None:
        self._script.append((fn, delay_s))

    def _run_script(self, now: float) -> None:
        while self._script and now >= self._script_due:
            item, delay_s = self._script.popleft()
            if callable(item):
                item(now)
            else:
                self._write(item)
            self._script_due = now + delay_s

    def _script_done(self, now: float) -> bool:
        return not self._script and now >= self._script_due

    # -- bring-up -----------------------------------------------------------------------------

    def _poll_starting(self, now: float) -> None:
        phase = self.phase
        if phase == "reset":
            if now >= self._phase_until:
                self.phase = "enumerate"
                self.chip_ids = []
                self._queue(bringup.enumeration_frames(self.family), now)
                self._run_script(now)
                self._phase_until = now + self.settings.enum_timeout_s
        elif phase == "enumerate":
            if not self._script_done(now):
                self._phase_until = max(self._phase_until, now + self.settings.enum_timeout_s)
                return
            expected = self.settings.chips
            if expected and len(self.chip_ids) >= expected:
                # all there: stop as soon as the line has been quiet for a moment
                quiet_until = self._last_frame_s + self.settings.enum_settle_s
                self._phase_until = min(self._phase_until, quiet_until)
            if now >= self._phase_until:
                self._finish_enumeration(now)
        elif phase == "configure":
            pass  # the script runs; its last item moves on to "verify"
        elif phase == "verify":
            found = len(self.addresses)
            if self._verify_replies >= found or now >= self._phase_until:
                if self._verify_replies == 0:
                    got = self.bytes_in - self._verify_bytes_in
                    self._fail(now, f"no chip answered after switching the chain to "
                                    f"{self._host_baud()} baud ({got} bytes received, "
                                    f"{self.link_errors} port errors)")
                    return
                if self._verify_replies < found:
                    log.warning("%s: %d of %d chips answered at %d baud", self.name,
                                self._verify_replies, found, self._host_baud())
                self._begin_hashing(now)

    def _host_baud(self) -> int:
        try:
            return int(self.port.baudrate)
        except Exception:
            return 0

    def _finish_enumeration(self, now: float) -> None:
        found = self.chip_ids
        expected = self.settings.chips
        where = f"on {self.name}"
        if not found:
            self._fail(now, f"no chip answered the chip-ID read {where} "
                            f"(is the chain powered and the port right?)")
            return
        want = self.profile.chip_id
        for i, (value, _addr) in enumerate(found):
            chip_id = value >> 16
            if chip_id != want:
                other = next((p.family for p in PROFILES.values() if p.chip_id == chip_id), None)
                what = f"a {other}" if other else f"an unknown chip 0x{chip_id:04X}"
                self._fail(now, f"chip {i} {where} is {what}, but the config says "
                                f"{self.family} (0x{want:04X})")
                return
        n = len(found)
        if expected and n != expected:
            fewer_ok = (self.ever_hashed and self.settings.accept_fewer_on_recovery
                        and n < expected)
            if not fewer_ok:
                self._fail(now, f"expected {expected} {self.family} chips {where}, found {n}")
                return
            # a silent chip still relays and takes its address: configure the whole chain
            log.warning("%s: only %d of %d chips answer; mining with those", self.name, n,
                        expected)
            n = expected
        if n > 256:
            self._fail(now, f"{n} chips answered {where}; at most 256 can be addressed")
            return
        self.addresses = bringup.chip_addresses(n)
        self.stats_.set_chips(self.addresses, now)
        self.phase = "configure"
        self._queue(bringup.setup_frames(self.family, n, int(self.ticket)), now)
        if self.settings.baud_switch:
            self._queue_call(self._switch_baud)
        self._queue_call(self._start_verify)
        self._run_script(now)

    def _switch_baud(self, now: float) -> None:
        frame, host_baud = bringup.baud_frame(self.family)
        self._write(frame)
        with contextlib.suppress(Exception):
            self.port.flush()  # drain: the frame must leave at the old rate
        self._set_host_baud(host_baud)
        self._flush_input()

    def _start_verify(self, now: float) -> None:
        self.phase = "verify"
        self._verify_replies = 0
        self._verify_bytes_in = self.bytes_in
        self._write(asic.cmd_read(asic.REG_CHIP_ID))
        self._phase_until = now + self.settings.verify_timeout_s

    def _begin_hashing(self, now: float) -> None:
        self.phase = ""
        self._want_wake = False
        self.state = RAMPING
        self.ever_hashed = True
        self.fatal = False
        self._hashing_since_s = now
        self._last_frame_s = now
        self._next_job_s = now
        self._next_ramp_s = now
        self._next_counter_s = now + self.settings.counter_interval_s
        self._next_health_s = now + 1.0
        self.target_freq_mhz = self._requested_mhz
        self.stats_.advance(now, self.freq_mhz, True)
        self._poll_hashing(now)
        log.info("%s: %d %s chips up, ramping to %.2f MHz", self.name, len(self.addresses),
                 self.family, self.target_freq_mhz)

    def _fail(self, now: float, reason: str) -> None:
        self._script.clear()
        self._want_wake = False
        self.error = reason
        self.state = FAILED
        self.phase = ""
        if not self.ever_hashed:
            self._attempts += 1
            if self._attempts < self.settings.start_attempts:
                log.warning("%s: %s; trying again", self.name, reason)
                self._retry_at_s = now
                return
            self.fatal = True
            self._retry_at_s = None
            log.error("%s: %s", self.name, reason)
        else:
            self._retry_at_s = now + self._backoff_s
            log.error("%s: %s; retrying in %.0f s", self.name, reason, self._backoff_s)
            self._backoff_s = min(self._backoff_s * 2, self.settings.recover_backoff_max_s)

    # -- hashing ------------------------------------------------------------------------------

    def _poll_hashing(self, now: float) -> None:
        self._poll_ramp(now)
        if self.state == MINING and self.freq_mhz != self.target_freq_mhz:
            self.state = RAMPING
        elif self.state == RAMPING and self.freq_mhz == self.target_freq_mhz:
            self.state = MINING
        if now >= self._next_job_s:
            self._send_job(now)
        if now >= self._next_counter_s:
            self._write(asic.cmd_read(self._counter_reg))
            self._next_counter_s = now + self.settings.counter_interval_s
        if self.reset_pending is not None and self.wind_down is not None and (
                self.freq_mhz <= self.wind_down.floor_mhz + 1e-6 or now >= self._reset_due_s):
            self._recover(now, self.reset_pending)
            return
        if now >= self._next_health_s:
            self._next_health_s = now + 1.0
            self._check_health(now)

    def _poll_ramp(self, now: float) -> None:
        if now < self._next_ramp_s:
            return
        if self.freq_mhz != self.target_freq_mhz:
            step = asic.ramp_steps(self.freq_mhz, self.target_freq_mhz,
                                   self.settings.ramp_step_mhz)[0]
            self._write_freq(step)
            self._next_ramp_s = now + self.settings.ramp_interval_s
            if self.freq_mhz == self.target_freq_mhz:
                self._hcn_pending = True
        if self._hcn_pending and self.freq_mhz == self.target_freq_mhz:
            self._hcn_pending = False
            frame = bringup.hcn_frame(self.family, self.freq_mhz, max(1, len(self.addresses)))
            if frame is not None and frame != self._hcn_written:
                self._write(frame)
                self._hcn_written = frame

    def _write_freq(self, freq_mhz: float) -> None:
        value = asic.pll_value(self.family, freq_mhz)
        if value != self._pll_value:  # the PLL's grid is coarser than a governor's request
            if self.family == "BM1397":
                self._write(asic.cmd_write(asic.REG_PLL0_DIVIDER, 0x0F0F0F00))
            self._write(asic.cmd_write(asic.REG_PLL0, value))
            self._pll_value = value
        self.freq_mhz = freq_mhz

    def _send_job(self, now: float) -> None:
        try:
            work = self.work.next_work(now)
        except Exception:
            log.exception("%s: work source failed", self.name)
            self._next_job_s = now + 1.0
            return
        job_id = self.jobs.next_job_id()
        mask = work.version_mask if self.profile.midstate_jobs else 0
        frame = asic.job_frame(self.family, job_id, work.header80, mask)
        if self._write(frame):
            self.jobs.put(job_id, work, now)
            self.jobs_sent += 1
        interval = self.settings.job_interval_s
        if interval is None:
            interval = job_interval_s(self.family, max(1, len(self.addresses)), self.freq_mhz)
        self._next_job_s = now + interval

    def _check_health(self, now: float) -> None:
        silent_s = now - self._last_frame_s
        if silent_s >= self.settings.hung_timeout_s:
            self.reset_pending = None  # a hung chain takes no commands: reset at once
            self._recover(now, f"chain hung: no reply for {silent_s:.1f} s")
            return
        if self.reset_pending is not None or now - self._hashing_since_s < self.settings.dead_min_s:
            return
        self._sync_counters()
        for chip in self.stats_.chips:
            health = self.stats_.health(chip, now)
            if health in ("dead", "flaky"):
                self._chip_fault(now, f"chip {chip.index} (address {chip.address}) is {health}")
                return
        if self._last_recover_s is not None and now - self._last_recover_s > 3600:
            self._backoff_s = self.settings.recover_backoff_s

    def _chip_fault(self, now: float, reason: str) -> None:
        """A dead or flaky chip: reset now, or once the governor has brought the load down."""
        if self._last_recover_s is not None and now - self._last_recover_s < self._backoff_s:
            return  # a chip fault right after a recovery: wait out the back-off
        if self.wind_down is None:
            self._recover(now, reason)
            return
        log.warning("%s: %s; bringing the load down at the ramp before a reset", self.name,
                    reason)
        self.reset_pending = reason
        self._reset_due_s = now + self.wind_down.timeout_s

    def _recover(self, now: float, reason: str) -> None:
        log.warning("%s: %s; resetting and re-initialising", self.name, reason)
        if self._last_recover_s is not None and now - self._last_recover_s < self._backoff_s * 2:
            self._backoff_s = min(self._backoff_s * 2, self.settings.recover_backoff_max_s)
        self._last_recover_s = now
        self.recoveries += 1
        self.recovery_reasons.append(reason)
        self.stats_.resets += 1
        self._crc_base += self._parser.crc_errors
        self._discard_base += self._parser.discarded_bytes
        wd = self.wind_down
        if wd is not None and self.reset_pending is not None:
            # the chips still take commands: from the governor's floor on down to the reset
            # at the ramp limit too (a short wait), paced as if all of the measured power were
            # clock-bound (the slowest pace; a model is least sure down here)
            measured_w, f0 = wd.measured_w(), self.freq_mhz
            power_w = wd.power_w if measured_w is None else (lambda f: measured_w * f / f0)
            wind_down(self.port, self.clock, self.family, f0, power_w, wd.ramp_w_s,
                      tick=getattr(self.board, "heartbeat", None))
        self._parser = asic.ResponseParser(self.family)
        self.start(now)


# -- probing --------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunningChain:
    """A chain found hashing at the fast baud (an agent restart): what its chips answered."""

    family: str
    chip_id: int
    addresses: tuple[int, ...]  # as the chips report them, in chain order
    pll_values: tuple[int, ...]  # register 0x08 of each chip that answered
    host_baud: int

    @property
    def count(self) -> int:
        return len(self.addresses)

    @property
    def pll_value(self) -> int:
        """The PLL0 value of the fastest chip (the one the power follows)."""
        return max(self.pll_values, key=lambda v: asic.pll_freq_mhz(self.family, v))

    @property
    def freq_mhz(self) -> float:
        return asic.pll_freq_mhz(self.family, self.pll_value)

    def problem(self, family: str, chips: int | None) -> str | None:
        """Why this chain cannot be taken over as the config says (None: it can)."""
        fam = profile(family).family
        if self.family != fam:
            return f"the running chips are {self.family}, the config says {fam}"
        if chips and self.count != chips:
            return f"{self.count} running chips answered, the config says {chips}"
        if self.addresses != tuple(bringup.chip_addresses(self.count)):
            return f"the running chips report addresses {list(self.addresses)}"
        if len(self.pll_values) != self.count:
            return f"{len(self.pll_values)} of {self.count} chips answered the PLL0 read"
        freqs = {round(asic.pll_freq_mhz(self.family, v), 2) for v in self.pll_values}
        if len(freqs) != 1:
            return f"the running chips disagree on their clock ({sorted(freqs)} MHz)"
        f = self.freq_mhz
        if f <= START_FREQ_MHZ + 0.5:
            return "the chips run at their reset clock (idle or never configured)"
        if f > 2000:
            return f"the running chips report an implausible clock ({f:.1f} MHz)"
        return None


def takeover_frames(family: str, difficulty: int) -> list[tuple[bytes, int]]:
    """What a running chain gets again on a takeover (safe without a reset): ticket mask and
    version rolling (BM1366/68/70)."""
    frames = [(asic.cmd_write(asic.REG_TICKET_MASK, asic.ticket_mask(difficulty)), 0)]
    if profile(family).family != "BM1397":
        frames.append((asic.cmd_write(asic.REG_VERSION_ROLLING,
                                      asic.version_rolling_value()), 0))
    return frames


def read_running_chain(
    port: SerialPort, clock: Clock, family: str | None = None, timeout_s: float = 0.5,
) -> RunningChain | None:
    """Look for a chain that is already hashing, without a reset: chip-ID and PLL0 broadcast
    reads at the family's fast host baud (a chain fresh from reset answers at 115200 only).
    None (and the port's baud as it was) when nothing answers there."""
    try:
        before = int(port.baudrate)
    except Exception:
        before = INITIAL_BAUD
    families = [profile(family).family] if family else ["BM1370", "BM1397"]
    for fam in families:
        host_baud = bringup.baud_frame(fam)[1]
        try:
            port.baudrate = host_baud
        except Exception as exc:
            log.warning("cannot set %d baud on the chain port: %s", host_baud, exc)
            continue
        with contextlib.suppress(Exception):
            port.reset_input_buffer()
        port.write(asic.cmd_read(asic.REG_CHIP_ID))
        ids = _collect(port, clock, asic.ResponseParser(fam), timeout_s, asic.REG_CHIP_ID)
        if not ids:
            continue
        chip_id = ids[0].value >> 16
        found = next((p.family for p in PROFILES.values() if p.chip_id == chip_id), fam)
        port.write(asic.cmd_read(asic.REG_PLL0))
        plls = _collect(port, clock, asic.ResponseParser(fam), timeout_s, asic.REG_PLL0)
        return RunningChain(found, chip_id, tuple(r.chip_addr for r in ids),
                            tuple(r.value for r in plls), host_baud)
    with contextlib.suppress(Exception):
        port.baudrate = before
    return None


def wind_down(
    port: SerialPort, clock: Clock, family: str, freq_mhz: float,
    power_w: Callable[[float], float], ramp_w_s: float, tick: Callable[[], None] | None = None,
    period_s: float = 0.1, step_mhz: float = 6.25,
) -> float:
    """Bring a hashing chain's clock from `freq_mhz` down to 50 MHz with broadcast PLL0 writes,
    at most 90 % of `ramp_w_s` of modelled power (`power_w(freq_mhz)`) per period: the safe way
    to a reset (a running chain that cannot be taken over, a chip fault). Each step waits before
    it as long as its drop needs, and so does the reset after it (its drop taken as all of the
    power at 50 MHz), so the moves before and after stay within the ramp too. `tick` runs every
    period (the board heartbeat). Returns the seconds it took."""
    start = clock.monotonic()
    f = freq_mhz
    budget = 0.9 * ramp_w_s * period_s

    def pay(drop_w: float) -> None:
        if tick is not None:
            with contextlib.suppress(Exception):
                tick()
        clock.sleep(period_s * max(1.0, drop_w / budget if budget > 0 else 1.0))

    steps = asic.ramp_steps(f, START_FREQ_MHZ, step_mhz) if f > START_FREQ_MHZ else []
    i = 0
    while i < len(steps):
        # the lowest next step whose power is within the budget (at least one step)
        j = i
        while j + 1 < len(steps) and power_w(f) - power_w(steps[j + 1]) <= budget:
            j += 1
        pay(power_w(f) - power_w(steps[j]))
        f = steps[j]
        i = j + 1
        if family == "BM1397":
            port.write(asic.cmd_write(asic.REG_PLL0_DIVIDER, 0x0F0F0F00))
        port.write(asic.cmd_write(asic.REG_PLL0, asic.pll_value(family, f)))
    pay(power_w(f))  # room for the reset that follows
    log.info("wound the chain down from %.2f MHz in %.1f s", freq_mhz, clock.monotonic() - start)
    return clock.monotonic() - start


@dataclass(frozen=True)
class ProbeResult:
    family: str
    chip_id: int
    count: int
    addresses: tuple[int, ...]  # as the chips report them after addressing
    running: RunningChain | None = None  # found hashing: listed without a reset


def probe_chain(
    port: SerialPort,
    clock: Clock,
    family: str | None = None,
    board: ChainReset | None = None,
    timeout_s: float = 1.0,
) -> ProbeResult:
    """Enumerate a chain without configuring it: chip-ID read (family inferred from the answer
    when not given), chain inactive, addresses, then a chip-ID read to list the addresses.
    A chain already hashing (it answers at the fast baud) is listed as it runs, without a
    reset (`running` set). ChainError if no chip answers."""
    try:
        baud = int(port.baudrate)
    except Exception:
        baud = INITIAL_BAUD
    running = read_running_chain(port, clock, family, min(timeout_s, 0.5))
    if running is not None and running.problem(running.family, None) is None:
        if profile(running.family).chip_id != running.chip_id:
            raise ChainError(f"{running.count} running chips answered with an unknown chip id "
                             f"0x{running.chip_id:04X}")
        return ProbeResult(running.family, running.chip_id, running.count, running.addresses,
                           running)
    if running is not None:  # answered at the fast rate, but not a configured, hashing chain
        with contextlib.suppress(Exception):
            port.baudrate = baud
    if board is not None:
        try:
            board.reset_chain()
        except BoardLinkError as exc:
            raise ChainError(f"chain reset over the board link failed: {exc}") from None
        clock.sleep(0.1)
    with contextlib.suppress(Exception):
        port.reset_input_buffer()
    families = [profile(family).family] if family else ["BM1370", "BM1397"]
    for fam in families:
        parser11 = asic.ResponseParser(fam)
        for frame, delay_ms in bringup.enumeration_frames(fam):
            port.write(frame)
            clock.sleep(delay_ms / 1000.0)
        ids = _collect(port, clock, parser11, timeout_s, asic.REG_CHIP_ID)
        if not ids:
            continue
        chip_id = ids[0].value >> 16
        found = next((p.family for p in PROFILES.values() if p.chip_id == chip_id), None)
        if found is None:
            raise ChainError(f"{len(ids)} chips answered with an unknown chip id 0x{chip_id:04X}")
        if found != fam and profile(found).reply_len != profile(fam).reply_len:
            raise ChainError(f"chips answer as {found}; probe again with --family {found}")
        addrs = bringup.chip_addresses(len(ids))
        port.write(asic.cmd_chain_inactive())
        for a in addrs:
            port.write(asic.cmd_set_address(a))
        port.write(asic.cmd_read(asic.REG_CHIP_ID))
        again = _collect(port, clock, asic.ResponseParser(found), timeout_s, asic.REG_CHIP_ID)
        reported = tuple(r.chip_addr for r in again) or tuple(addrs)
        return ProbeResult(found, chip_id, len(ids), reported)
    raise ChainError("no chip answered the chip-ID read (is the chain powered and the port "
                     "right?)")


def _collect(port: SerialPort, clock: Clock, parser: Any, timeout_s: float, reg: int) -> list[Any]:
    out: list[Any] = []
    deadline = clock.monotonic() + timeout_s
    while clock.monotonic() < deadline:
        try:
            data = port.read(max(1, port.in_waiting or 0))
        except Exception as exc:
            raise ChainError(f"reading the chain port failed: {exc}") from None
        if data:
            got = [r for r in parser.feed(data) if r.kind == "register" and r.reg == reg]
            if got:
                out += got
                deadline = clock.monotonic() + min(timeout_s, 0.2)
        else:
            clock.sleep(0.01)
    return out
