"""How to drive a chain: `ChainSettings` (from the [chain] config), the chips' clock and baud
after reset, and the family's job cadence."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agent.chain.stats import ticket_for
from firmware_bridge.chips import FAMILIES, PROFILES, profile

INITIAL_BAUD = 115200
START_FREQ_MHZ = 50.0  # the chips' hash clock after reset (spec §4.1)


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
    retry_s: float = 0.5  # a re-initialisation that failed is tried again after this; doubles
    retry_max_s: float = 30.0  # ... up to this, while it keeps failing
    accept_fewer_on_recovery: bool = True  # a re-init may go on with the chips that answer
    chips_probed: bool = False  # `chips` is what answered the start's probe: a chip silent then
    # may answer later, so a bring-up that finds more takes them all

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
