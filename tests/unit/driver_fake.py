"""A synchronous stand-in for a BM13xx chain behind a serial port, for the driver's unit tests.

It decodes what the driver writes with the project's codec (CommandParser) and answers the way the
chips do: chip-ID replies, addressing after chain inactive, register reads, a baud rate that only
matches after the fast-UART write, and nonces found on request for the job a slot holds.
"""

from __future__ import annotations

import hashlib

from agent.chain.work import target_for
from firmware_bridge import asic
from firmware_bridge.chips import profile

EASY = 2.0**-28  # about one nonce in 16 meets it


def sha256d(data: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


class FakeChip:
    def __init__(self, family: str) -> None:
        self.family = family
        self.address: int | None = None
        self.regs: dict[int, int] = {}
        self.silent = False


class FakeChainPort:
    """pyserial-like port (write/read/in_waiting/baudrate) with a chain behind it."""

    def __init__(self, family: str = "BM1370", chips: int = 4, chip_family: str | None = None,
                 difficulty: float = EASY) -> None:
        self.family = family
        self.profile = profile(family)
        self.chip_family = chip_family or family
        self.n = chips
        self.difficulty = difficulty
        self.baudrate = 115200
        self.timeout = 0.0
        self.written: list[bytes] = []
        self.commands: list[asic.Command] = []
        self.out = bytearray()
        self.hung = False
        self.resets = 0
        self.reset()

    # -- chain behaviour ------------------------------------------------------------------------

    def reset(self) -> None:
        self.resets += 1
        self.chips = [FakeChip(self.chip_family) for _ in range(self.n)]
        self.chip_baud = 115200
        self.inactive = False
        self.jobs: dict[int, asic.Command] = {}
        self.parser = asic.CommandParser(self.family)
        self.hung = False
        self.out.clear()

    def _reply(self, data: bytes) -> None:
        if self.hung:
            return
        if self.chip_baud != self.baudrate:
            data = bytes((b ^ 0x5A) for b in data)  # wrong rate: the host reads garbage
        self.out += data

    def _handle(self, cmd: asic.Command) -> None:
        self.commands.append(cmd)
        chip_id = profile(self.chip_family).chip_id_value
        if cmd.kind == "read":
            for chip in self.chips:
                if chip.silent:
                    continue
                if not cmd.broadcast and chip.address != cmd.chip:
                    continue
                addr = chip.address or 0
                value = chip_id | addr if cmd.reg == 0 else chip.regs.get(cmd.reg, 0)
                self._reply(asic.register_reply(value, addr, cmd.reg, self.profile.reply_len))
        elif cmd.kind == "chain_inactive":
            self.inactive = True
        elif cmd.kind == "set_address":
            for chip in self.chips:
                if chip.address is None:
                    chip.address = cmd.chip
                    break
        elif cmd.kind == "write":
            for chip in self.chips:
                if cmd.broadcast or chip.address == cmd.chip:
                    chip.regs[cmd.reg] = cmd.value
            baud = asic.chip_baud(self.family, cmd.reg, cmd.value)
            if baud is not None and cmd.broadcast:
                self.chip_baud = 1000000 if baud > 1000000 else baud  # the host's nearest rate
                if self.family == "BM1397":
                    self.chip_baud = 3125000
        elif cmd.kind == "job":
            self.jobs[cmd.job_id] = cmd

    @property
    def freq_mhz(self) -> float:
        value = self.chips[0].regs.get(asic.REG_PLL0)
        return asic.pll_freq_mhz(self.family, value) if value else 50.0

    def nonce_for(self, chip: int, job_id: int | None = None, version_bits: int = 0,
                  valid: bool = True, start: int = 0) -> tuple[int, int]:
        """(job_id, nonce) of a nonce from `chip` (its address in bits 24..17 of nonce_h)."""
        if job_id is None:
            job_id = list(self.jobs)[-1]
        header = self.jobs[job_id].header80
        version = int.from_bytes(header[0:4], "little") | version_bits
        base = version.to_bytes(4, "little") + header[4:76]
        addr = self.chips[chip].address or 0
        target = target_for(self.difficulty)
        for counter in range(start, start + 200_000):
            nonce_h = (3 << 25) | (addr << 17) | counter
            nonce = int.from_bytes(nonce_h.to_bytes(4, "big"), "little")
            ok = int.from_bytes(sha256d(base + nonce.to_bytes(4, "little")), "little") <= target
            if ok == valid:
                return job_id, nonce
        raise AssertionError("no nonce")

    def emit_nonce(self, chip: int, job_id: int | None = None, version_bits: int = 0,
                   valid: bool = True) -> int:
        self._emitted = getattr(self, "_emitted", 0) + 1
        start = self._emitted * 1000  # a different nonce every time
        job_id, nonce = self.nonce_for(chip, job_id, version_bits, valid, start)
        self.send_nonce(job_id, nonce, version_bits)
        return nonce

    def send_nonce(self, job_id: int, nonce: int, version_bits: int = 0) -> None:
        small = (version_bits >> 13) & 0x0F
        self._reply(asic.nonce_reply(self.family, nonce, job_id, small, version_bits))

    def inject(self, data: bytes) -> None:
        self.out += data

    # -- pyserial side --------------------------------------------------------------------------

    def write(self, data: bytes) -> int:
        self.written.append(bytes(data))
        if self.chip_baud != self.baudrate:
            data = bytes((b ^ 0x5A) for b in data)
        for cmd in self.parser.feed(bytes(data)):
            if not self.hung:
                self._handle(cmd)
        return len(data)

    @property
    def in_waiting(self) -> int:
        return len(self.out)

    def read(self, size: int = 1) -> bytes:
        data = bytes(self.out[:size])
        del self.out[:size]
        return data

    def flush(self) -> None:
        pass

    def reset_input_buffer(self) -> None:
        self.out.clear()

    def close(self) -> None:
        pass


class FakeBoard:
    """The board link's reset line."""

    def __init__(self, chain: FakeChainPort) -> None:
        self.chain = chain

    def reset_chain(self) -> None:
        self.chain.reset()
