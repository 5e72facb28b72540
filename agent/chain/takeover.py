"""Blocking helpers for the agent's start, before the driver takes the chain: find a chain that
is already hashing (an agent restart) and say whether it can be taken over, probe one that is not.

`read_running_chain` reads chip IDs and PLL0 at the fast baud without a reset (a chain fresh from
reset answers at 115200 only); `ChainDriver.adopt` then goes on hashing at the clock read back,
re-sending only `takeover_frames` (safe without a reset), then the HCN and jobs. A running chain
that cannot be taken over (`RunningChain.problem`) is the driver's to wind down at the ramp
before its reset, while the control loop runs (`ChainDriver.wind_down_running`).
`probe_chain` enumerates a chain without configuring it (`gridminer probe`, and the
agent's detection of the family and chip count the config leaves out).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any, Protocol

from agent.chain.port import SerialPort
from agent.chain.settings import INITIAL_BAUD, START_FREQ_MHZ
from agent.clock import Clock
from agent.errors import BoardLinkError, ChainError
from firmware_bridge import asic, bringup
from firmware_bridge.chips import PROFILES, profile

log = logging.getLogger("gridminer.chain")


class ChainReset(Protocol):
    """What the driver and the probe need of the board link: a pulse on the chips' reset
    line."""

    def reset_chain(self) -> None: ...


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


@dataclass(frozen=True)
class ProbeResult:
    """What answered a probe."""

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
