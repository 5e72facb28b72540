"""Bring-up of a chain from reset to hashing (spec §6), one step per poll, never waiting.

Reset (the board's reset_chain), UART at the initial rate, the family's enumeration frames, count
the chip-ID replies (done as soon as the configured count has arrived and the line is quiet for a
moment; ESP-Miner waits a fixed second), check ids and count, setup frames, baud switch (frame
sent at the old rate, drained, then the host rate changes), and a chip-ID read at the new rate to
confirm the link. A chain taken over running (`adopt`) skips all of it.
"""

from __future__ import annotations

import logging
from typing import Any, NoReturn

from agent.chain.script import FrameScript
from agent.chain.settings import ChainSettings
from agent.chain.stats import ChainStatistics
from agent.chain.takeover import ChainReset, RunningChain, takeover_frames
from agent.chain.uart import ChainUart
from agent.errors import BoardLinkError, ChainError
from firmware_bridge import asic
from firmware_bridge.bringup import baud_frame, chip_addresses, enumeration_frames, setup_frames
from firmware_bridge.chips import PROFILES, profile

log = logging.getLogger("gridminer.chain")


class BringUp:
    """The bring-up's phases (`phase`: reset, enumerate, configure, verify; "" outside) and what
    it found: `chip_ids` (register 0x00 value, reporting address) and the `addresses` given."""

    def __init__(self, settings: ChainSettings, uart: ChainUart, script: FrameScript,
                 stats: ChainStatistics, board: ChainReset | None, ticket: int,
                 name: str = "chain") -> None:
        self.settings = settings
        self.uart = uart
        self.script = script
        self.stats = stats
        self.board = board
        self.ticket = ticket
        self.name = name
        self.profile = profile(settings.family)
        self.family = self.profile.family
        self.phase = ""
        self.chip_ids: list[tuple[int, int]] = []
        self.addresses: list[int] = []
        self.ever_up = False  # a bring-up (or takeover) has succeeded: a re-init may find fewer
        self.deadline_s = 0.0  # when the phase moves on
        self._verify_replies = 0
        self._verify_bytes_in = 0

    def begin(self, now: float) -> None:
        """Pulse the reset line and set the initial rate; ChainError if the board link fails."""
        self.phase = "reset"
        if self.board is not None:
            try:
                self.board.reset_chain()
            except BoardLinkError as exc:
                self._fail(f"chain reset over the board link failed: {exc}")
        self.uart.set_baud(self.settings.initial_baud)
        self.uart.flush_input()
        self.deadline_s = now + self.settings.reset_settle_s

    def adopt(self, running: RunningChain, now: float) -> None:
        """A chain found hashing: keep its chips' addresses and baud, and send again only what
        is safe without a reset (ticket mask, version rolling)."""
        self.phase = ""
        self.ever_up = True
        self.addresses = list(running.addresses)
        self.chip_ids = [((running.chip_id << 16) | a, a) for a in running.addresses]
        self.stats.set_chips(self.addresses, now)
        self.uart.set_baud(running.host_baud)
        self.uart.flush_input()
        self.script.queue(takeover_frames(self.family, self.ticket), now)
        self.script.run(now)

    def poll(self, now: float, last_frame_s: float) -> bool:
        """The next step if it is due (`last_frame_s`: when the last reply arrived); True once
        the chips answer at the host rate. ChainError when the chain is not what the settings
        say or does not answer."""
        phase = self.phase
        if phase == "reset":
            if now >= self.deadline_s:
                self.phase = "enumerate"
                self.chip_ids = []
                self.script.queue(enumeration_frames(self.family), now)
                self.script.run(now)
                self.deadline_s = now + self.settings.enum_timeout_s
        elif phase == "enumerate":
            if not self.script.done(now):
                self.deadline_s = max(self.deadline_s, now + self.settings.enum_timeout_s)
                return False
            expected = self.settings.chips
            if expected and len(self.chip_ids) >= expected:
                # all there: stop as soon as the line has been quiet for a moment
                quiet_until = last_frame_s + self.settings.enum_settle_s
                self.deadline_s = min(self.deadline_s, quiet_until)
            if now >= self.deadline_s:
                self._finish_enumeration(now)
        elif phase == "verify":
            found = len(self.addresses)
            if self._verify_replies >= found or now >= self.deadline_s:
                if self._verify_replies == 0:
                    got = self.uart.bytes_in - self._verify_bytes_in
                    self._fail(f"no chip answered after switching the chain to "
                               f"{self.uart.baud} baud ({got} bytes received, "
                               f"{self.uart.link_errors} port errors)")
                if self._verify_replies < found:
                    log.warning("%s: %d of %d chips answered at %d baud", self.name,
                                self._verify_replies, found, self.uart.baud)
                self.phase = ""
                self.ever_up = True
                return True
        return False  # "configure": the script runs; its last step moves on to "verify"

    def take(self, reply: Any, now: float) -> bool:
        """A register reply while enumerating or verifying is bring-up's (True)."""
        if self.phase == "enumerate":
            if reply.reg == asic.REG_CHIP_ID:
                self.chip_ids.append((reply.value, reply.chip_addr))
                self.deadline_s = now + self.settings.enum_timeout_s
            return True
        if self.phase == "verify":
            if reply.reg == asic.REG_CHIP_ID:
                self._verify_replies += 1
            return True
        return False

    def _finish_enumeration(self, now: float) -> None:
        found = self.chip_ids
        expected = self.settings.chips
        where = f"on {self.name}"
        if not found:
            self._fail(f"no chip answered the chip-ID read {where} "
                       f"(is the chain powered and the port right?)")
        want = self.profile.chip_id
        for i, (value, _addr) in enumerate(found):
            chip_id = value >> 16
            if chip_id != want:
                other = next((p.family for p in PROFILES.values() if p.chip_id == chip_id), None)
                what = f"a {other}" if other else f"an unknown chip 0x{chip_id:04X}"
                self._fail(f"chip {i} {where} is {what}, but the config says "
                           f"{self.family} (0x{want:04X})")
        n = len(found)
        if expected and n > expected and self.settings.chips_probed:
            # a chip that was silent when the chain was probed answers now: the chain is whole
            # (the envelope and power model keep the probed count, the safe side, until a restart)
            log.warning("%s: %d chips answer, %d answered the probe at start; mining with all",
                        self.name, n, expected)
        elif expected and n != expected:
            if not (self.ever_up and self.settings.accept_fewer_on_recovery and n < expected):
                self._fail(f"expected {expected} {self.family} chips {where}, found {n}")
            # a silent chip still relays and takes its address: configure the whole chain
            log.warning("%s: only %d of %d chips answer; mining with those", self.name, n,
                        expected)
            n = expected
        if n > 256:
            self._fail(f"{n} chips answered {where}; at most 256 can be addressed")
        self.addresses = chip_addresses(n)
        self.stats.set_chips(self.addresses, now)
        self.phase = "configure"
        self.script.queue(setup_frames(self.family, n, self.ticket), now)
        if self.settings.baud_switch:
            self.script.queue_step(self._switch_baud)
        self.script.queue_step(self._start_verify)
        self.script.run(now)

    def _switch_baud(self, now: float) -> None:
        frame, host_baud = baud_frame(self.family)
        self.uart.write(frame)
        self.uart.drain()  # the frame must leave at the old rate
        self.uart.set_baud(host_baud)
        self.uart.flush_input()

    def _start_verify(self, now: float) -> None:
        self.phase = "verify"
        self._verify_replies = 0
        self._verify_bytes_in = self.uart.bytes_in
        self.uart.write(asic.cmd_read(asic.REG_CHIP_ID))
        self.deadline_s = now + self.settings.verify_timeout_s

    def _fail(self, reason: str) -> NoReturn:
        self.phase = ""
        raise ChainError(reason)
