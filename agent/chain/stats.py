"""Per-chip statistics of a hashing chain: valid nonces, hardware errors, silence, hashrate.

Every valid nonce at ticket difficulty T stands for T * 2**32 hashes; the hashrate is that sum over
a sliding window: per chip a long one, for the chain one just long enough to hold about 200 expected
nonces, so the chain figure is steady within ~7 % yet follows a change of load within seconds.
Silence is measured in expected nonce intervals: the hashes a chip should have done since its last
valid nonce (at the frequencies it actually ran) over T * 2**32, so a chip at a low frequency is not
called dead for being slow.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

HASHES_PER_DIFF1 = 2**32


def ticket_for(hashrate_ghs: float, nonce_rate_hz: float = 64.0, max_difficulty: int = 256) -> int:
    """The largest power-of-two ticket difficulty (1 .. max_difficulty) at which a chain hashing
    at `hashrate_ghs` still returns at least `nonce_rate_hz` nonces a second."""
    difficulty = 1
    while (difficulty * 2 <= max_difficulty
           and hashrate_ghs * 1e9 / (difficulty * 2 * HASHES_PER_DIFF1) >= nonce_rate_hz):
        difficulty *= 2
    return difficulty


@dataclass(frozen=True)
class ChipStat:
    """One chip's figures at a moment."""

    index: int
    address: int
    valid: int
    hw_errors: int
    duplicates: int
    stale: int
    hashrate_ghs: float
    silence_intervals: float  # expected nonce intervals since the last valid nonce
    last_reply_age_s: float | None  # since the chip last answered anything (None: never)
    health: str  # "ok", "silent", "flaky", "dead"


@dataclass(frozen=True)
class ChainStats:
    """What the driver tells the governor, the status line and telemetry."""

    ts_s: float
    state: str  # driver: "down", "starting", "ramping", "mining", "stopping", "idle", "failed",
    # "winding" (down to the reset clock before a chip-fault reset)
    family: str
    freq_mhz: float  # the frequency the chips run now
    target_freq_mhz: float  # where the ramp is going
    chips_expected: int
    chips_found: int
    chips_ok: int
    hashrate_ghs: float  # from verified nonces, windowed
    expected_hashrate_ghs: float  # freq * small cores * chips found
    valid: int
    hw_errors: int
    crc_errors: int
    duplicates: int
    stale: int
    unattributed: int  # nonces with a chip-address field outside the chain
    discarded_bytes: int
    resets: int
    ticket_difficulty: float
    chips: tuple[ChipStat, ...]
    reset_pending: str | None = None  # a chip fault waits for the load to come down to a reset

    @property
    def mining(self) -> bool:
        return self.state in ("ramping", "mining")


class ChipCounters:
    """Running counters of one chip."""

    __slots__ = (
        "address",
        "duplicates",
        "events",
        "expected_at_valid",
        "hw_errors",
        "index",
        "last_reply_s",
        "stale",
        "valid",
        "window",
    )

    def __init__(self, index: int, address: int) -> None:
        self.index = index
        self.address = address
        self.valid = 0
        self.hw_errors = 0
        self.duplicates = 0
        self.stale = 0
        self.last_reply_s: float | None = None
        self.expected_at_valid = 0.0  # chain's expected-hash integral at the last valid nonce
        self.window: deque[tuple[float, float]] = deque()  # (ts, hashes)
        self.events: deque[bool] = deque(maxlen=64)  # recent nonces: True valid, False bad


class ChainStatistics:
    """Collects nonce outcomes per chip and turns them into `ChainStats`."""

    def __init__(
        self,
        small_cores: int,
        window_s: float = 30.0,
        chain_window_nonces: float = 200.0,
        min_chain_window_s: float = 2.0,
        dead_intervals: float = 40.0,
        silent_intervals: float = 12.0,
        flaky_ratio: float = 0.5,
        flaky_min_events: int = 16,
    ) -> None:
        self.small_cores = small_cores
        self.window_s = window_s
        self.chain_window_nonces = chain_window_nonces
        self.min_chain_window_s = min_chain_window_s
        self.dead_intervals = dead_intervals
        self.silent_intervals = silent_intervals
        self.flaky_ratio = flaky_ratio
        self.flaky_min_events = flaky_min_events
        self.chips: list[ChipCounters] = []
        self._addresses: list[int] = []
        self.ticket_difficulty = 256.0
        self.crc_errors = 0
        self.discarded_bytes = 0
        self.unattributed = 0
        self.resets = 0
        self._expected = 0.0  # integral of expected hashes per chip since start
        self._expected_ts: float | None = None
        self._freq_mhz = 0.0
        self._since_s: float | None = None  # start of the current mining stretch

    # -- set-up -----------------------------------------------------------------------------

    def set_chips(self, addresses: list[int], now_s: float) -> None:
        """A (re)initialised chain: keep counters of chips that stay, restart timing."""
        old = {c.address: c for c in self.chips}
        self.chips = []
        for i, addr in enumerate(addresses):
            chip = old.get(addr) or ChipCounters(i, addr)
            chip.index = i
            chip.window.clear()
            chip.events.clear()
            chip.expected_at_valid = self._expected
            self.chips.append(chip)
        self._addresses = list(addresses)
        self._since_s = now_s

    def set_ticket(self, difficulty: float) -> None:
        self.ticket_difficulty = float(difficulty)

    def advance(self, now_s: float, freq_mhz: float, hashing: bool) -> None:
        """Integrate the hashes each chip should have done since the last call."""
        if self._expected_ts is not None and hashing and now_s > self._expected_ts:
            rate = self._freq_mhz * 1e6 * self.small_cores
            self._expected += rate * (now_s - self._expected_ts)
        self._expected_ts = now_s
        self._freq_mhz = freq_mhz if hashing else 0.0

    # -- events -----------------------------------------------------------------------------

    def chip_index(self, addr_field: int) -> int | None:
        """The chip whose address range holds a nonce's chip-address field (spec 3.5)."""
        addrs = self._addresses
        if not addrs or addr_field < addrs[0]:
            return None
        lo, hi = 0, len(addrs) - 1
        while lo < hi:  # last address <= addr_field
            mid = (lo + hi + 1) // 2
            if addrs[mid] <= addr_field:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def chip_by_address(self, addr: int) -> ChipCounters | None:
        idx = self.chip_index(addr)
        if idx is None or self._addresses[idx] != addr:
            return None
        return self.chips[idx]

    def record_valid(self, chip: int, now_s: float, stale: bool = False) -> None:
        c = self.chips[chip]
        c.valid += 1
        if stale:
            c.stale += 1
        c.last_reply_s = now_s
        c.expected_at_valid = self._expected_now(now_s)
        c.window.append((now_s, self.ticket_difficulty * HASHES_PER_DIFF1))
        c.events.append(True)

    def record_hw_error(self, chip: int, now_s: float) -> None:
        c = self.chips[chip]
        c.hw_errors += 1
        c.last_reply_s = now_s
        c.events.append(False)

    def record_duplicate(self, chip: int, now_s: float) -> None:
        c = self.chips[chip]
        c.duplicates += 1
        c.last_reply_s = now_s

    def record_reply(self, chip: int, now_s: float) -> None:
        """A register answer: the chip is alive on the UART."""
        self.chips[chip].last_reply_s = now_s

    # -- figures ----------------------------------------------------------------------------

    def _expected_now(self, now_s: float) -> float:
        if self._expected_ts is None or now_s <= self._expected_ts:
            return self._expected
        rate = self._freq_mhz * 1e6 * self.small_cores
        return self._expected + rate * (now_s - self._expected_ts)

    def chip_hashrate_ghs(self, chip: ChipCounters, now_s: float) -> float:
        cutoff = now_s - self.window_s
        window = chip.window
        while window and window[0][0] < cutoff:
            window.popleft()
        start = max(cutoff, self._since_s if self._since_s is not None else cutoff)
        span = now_s - start
        if span <= 0:
            return 0.0
        return sum(h for _, h in window) / max(span, 1.0) / 1e9

    def chain_hashrate_ghs(self, now_s: float, freq_mhz: float) -> float:
        """Verified hashes of all chips over a window holding about `chain_window_nonces`
        expected nonces at `freq_mhz` (between `min_chain_window_s` and `window_s`)."""
        per_nonce = self.ticket_difficulty * HASHES_PER_DIFF1
        rate_hz = freq_mhz * 1e6 * self.small_cores * len(self.chips) / per_nonce
        window_s = self.window_s
        if rate_hz > 0:
            window_s = min(window_s, max(self.min_chain_window_s,
                                         self.chain_window_nonces / rate_hz))
        cutoff = now_s - window_s
        start = max(cutoff, self._since_s if self._since_s is not None else cutoff)
        span = now_s - start
        if span <= 0:
            return 0.0
        hashes = 0.0
        for chip in self.chips:
            for ts, h in reversed(chip.window):
                if ts < cutoff:
                    break
                hashes += h
        return hashes / max(span, min(1.0, window_s)) / 1e9

    def silence_intervals(self, chip: ChipCounters, now_s: float) -> float:
        per_nonce = self.ticket_difficulty * HASHES_PER_DIFF1
        return (self._expected_now(now_s) - chip.expected_at_valid) / per_nonce

    def health(self, chip: ChipCounters, now_s: float) -> str:
        events = chip.events
        if len(events) >= self.flaky_min_events:
            bad = len(events) - sum(events)
            if bad / len(events) >= self.flaky_ratio:
                return "flaky"
        silence = self.silence_intervals(chip, now_s)
        if silence >= self.dead_intervals:
            return "dead"
        if silence >= self.silent_intervals:
            return "silent"
        return "ok"

    def snapshot(
        self,
        now_s: float,
        state: str,
        family: str,
        freq_mhz: float,
        target_freq_mhz: float,
        chips_expected: int,
        reset_pending: str | None = None,
    ) -> ChainStats:
        chips = []
        for c in self.chips:
            chips.append(
                ChipStat(
                    index=c.index,
                    address=c.address,
                    valid=c.valid,
                    hw_errors=c.hw_errors,
                    duplicates=c.duplicates,
                    stale=c.stale,
                    hashrate_ghs=self.chip_hashrate_ghs(c, now_s),
                    silence_intervals=self.silence_intervals(c, now_s),
                    last_reply_age_s=None if c.last_reply_s is None else now_s - c.last_reply_s,
                    health=self.health(c, now_s),
                )
            )
        hashing = state in ("ramping", "mining")
        return ChainStats(
            ts_s=now_s,
            state=state,
            family=family,
            freq_mhz=freq_mhz,
            target_freq_mhz=target_freq_mhz,
            chips_expected=chips_expected,
            chips_found=len(self.chips),
            chips_ok=sum(1 for c in chips if c.health == "ok") if hashing else 0,
            hashrate_ghs=self.chain_hashrate_ghs(now_s, freq_mhz) if hashing else 0.0,
            expected_hashrate_ghs=(freq_mhz * self.small_cores * len(chips) / 1000.0
                                   if hashing else 0.0),
            valid=sum(c.valid for c in chips),
            hw_errors=sum(c.hw_errors for c in chips),
            crc_errors=self.crc_errors,
            duplicates=sum(c.duplicates for c in chips),
            stale=sum(c.stale for c in chips),
            unattributed=self.unattributed,
            discarded_bytes=self.discarded_bytes,
            resets=self.resets,
            ticket_difficulty=self.ticket_difficulty,
            chips=tuple(chips),
            reset_pending=reset_pending,
        )
