"""Emulated chain of BM13xx chips, byte-compatible at the UART (spec bm13xx-protocol.md §2-§4, §9).

`AsicChain` takes the host's bytes (`feed`), decodes them with firmware_bridge's CommandParser,
and acts like a chain of `EmulatedChip`s:

* chain inactive / set address: after 0x53 every chip stops relaying, and each set-address frame is
  taken by the first chip in chain order without an address (§2.3);
* reads are answered by every chip the command reaches and addresses, nearest first, 9 bytes before
  version rolling is enabled (0xA4 bit 31), 11 after (BM1397 always 9); 0x00 answers
  CHIP_ID | CORE_NUM | addr, 0x08 the last value written with bit 31 (LOCKED) set, 0x8C / 0x88-0x8B
  / 0x4C the counters;
* writes change behaviour: 0x08 the hash clock, 0x14 the ticket difficulty, 0xA4 version rolling
  and its mask, 0x28 (0x18 on BM1397) the UART rate, applied after the whole frame;
* jobs (BM1397: midstate jobs, finished from the midstate in pure Python, see below): every
  nonce is a real SHA-256d solution at the emulation difficulty D of the job's header
  with the rolled version; found with `agent.hashing.scan` over fresh 256-nonce windows inside the
  chip's slice of the nonce space (§3.5: core id in nonce_h[31:25], chip address field in [24:17]
  within [addr, addr + interval)); nonces arrive as Poisson events at the model's rate
  hashrate / (2**32 * ticket difficulty), so the host's hashrate from nonce counts matches the
  model.
* counters 0x8C (+1 per 2**32 hashes), 0x88-0x8B (the share of each hash domain) and 0x4C (hardware
  errors, in difficulty-1 units) follow the modelled hashrate; they restart at 0 on reset.

Commands with a bad CRC are dropped (counted in `parser.crc_errors`); the chain never raises on
input.
Time is emulated (the callers pass `now_s`); randomness comes from the `random.Random` given.
"""

from __future__ import annotations

import math
import random
import struct
from collections import deque
from collections.abc import Callable, Sequence
from hashlib import sha256 as _sha256
from typing import Any

from agent import hashing
from agent.chain.work import target_for
from firmware_bridge import asic
from firmware_bridge.chips import profile

HASHING = hashing.IMPLEMENTATION
_scan = hashing.scan
_sha256d = hashing.sha256d

DEFAULT_DIFFICULTY = 2.0**-24
WINDOW = 256  # nonces per scan window: all core ids and the address MSB for one counter value
IDLE_RESYNC_S = 0.05  # a partial frame with no new byte for this long is resynced
TWO32 = float(2**32)
PLL_RESET_MHZ = 50.0  # hosts assume 50 MHz after reset (§4.1)
MAX_QUEUED_FRAMES = 100_000
MIDSTATE_COST = 4096  # budget units of one BM1397 (pure-Python) hash vs one scan hash
_PAD_640 = b"\x80" + bytes(39) + (640).to_bytes(8, "big")  # SHA-256 padding of an 80-byte header


def _reset_registers(family: str) -> dict[int, int]:
    p = profile(family)
    regs = {
        0x08: asic.pll_value(p.family, PLL_RESET_MHZ),
        0x14: 0,
        0x1C: 0x01000000,
        0x2C: 0x000F0000,
        0x3C: 0x00004000,
        0x44: 0x00000100,
        0x48: 0xFF000000,
        0x5C: 0x0000FFFF,
        0x60: 0x00640111,
        0x64: 0x00680111,
        0x68: 0x00700111,
        0x70: 0x03040607,
        0x80: 0xD95C8410,
        0x84: 0xFB73EA62,
    }
    if p.family == "BM1397":
        regs.update({0x04: 0x80000000, 0x18: 0x00003A01, 0x20: 0x0000FFFF, 0x28: 0x0600000F,
                     0x58: 0x02112111})
    else:
        regs.update({0x18: 0x0000C100, 0x28: 0x01301A00, 0xA4: 0x0000FFFF, 0xA8: 0x00070000})
    return regs


def poisson(rng: random.Random, lam: float) -> int:
    """A Poisson-distributed count with mean `lam` from `rng`."""
    if lam <= 0.0:
        return 0
    if lam > 30.0:
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    limit = math.exp(-lam)
    k, p = 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


class EmulatedChip:
    """One chip's registers, address, counters and nonce search state."""

    def __init__(self, index: int, family: str, rng: random.Random) -> None:
        self.index = index
        self.profile = profile(family)
        self.rng = rng
        self.reset()

    def reset(self) -> None:
        """NRST or power loss: every register back to its reset value, address 0, no job."""
        self.addr = 0
        self.assigned = False
        self.regs = _reset_registers(self.profile.family)
        self.total_count = 0.0  # 0x8C, in 2**32-hash units
        self.domain_count = [0.0] * 4  # 0x88..0x8B
        self.error_count = 0.0  # 0x4C
        self.job: tuple[int, bytes] | None = None  # (job id, header80; BM1397: tail12)
        self.midstates: list[tuple[int, ...]] = []  # BM1397 jobs: state words per midstate
        self.window = 0
        self.pool: list[tuple[int, int]] = []  # found (nonce, version field), current job
        self.owed = 0  # valid nonces due by the model and not found yet
        self.nonces = 0
        self.hw_nonces = 0

    # ---- register-derived state --------------------------------------------------------------
    @property
    def freq_mhz(self) -> float:
        try:
            return asic.pll_freq_mhz(self.profile.family, self.regs[0x08] & 0xFFFFFFFF)
        except ValueError:
            return 0.0

    @property
    def ticket_difficulty(self) -> int:
        return asic.ticket_difficulty(self.regs.get(0x14, 0))

    @property
    def version_rolling(self) -> bool:
        return self.profile.version_rolling and bool(self.regs.get(0xA4, 0) & 0x80000000)

    @property
    def version_mask(self) -> int:
        """Rolled-version mask (bits 13..28) while rolling is on, else 0."""
        return (self.regs.get(0xA4, 0) & 0xFFFF) << 13 if self.version_rolling else 0

    @property
    def reply_len(self) -> int:
        return 11 if self.version_rolling else 9

    def read(self, reg: int) -> int:
        if reg == 0x00:
            return self.profile.chip_id_value | self.addr
        if reg == 0x08:
            return self.regs[0x08] | 0x80000000
        if reg == 0x8C:
            return int(self.total_count) & 0xFFFFFFFF
        if 0x88 <= reg <= 0x8B:
            return int(self.domain_count[reg - 0x88]) & 0xFFFFFFFF
        if reg == 0x4C:
            return int(self.error_count) & 0xFFFFFFFF
        return self.regs.get(reg, 0)

    def write(self, reg: int, value: int) -> None:
        if reg == 0x00:
            return  # read-only
        if reg == 0xA4 and (value ^ self.regs.get(0xA4, 0)) & 0x8000FFFF:
            self.pool.clear()  # other versions from now on
        self.regs[reg] = value & 0xFFFFFFFF

    def state(self) -> dict[str, Any]:
        return {
            "index": self.index, "addr": self.addr, "freq_mhz": round(self.freq_mhz, 4),
            "ticket_difficulty": self.ticket_difficulty, "version_rolling": self.version_rolling,
            "reply_len": self.reply_len, "job_id": self.job[0] if self.job else None,
            "nonces": self.nonces, "hw_nonces": self.hw_nonces, "owed": self.owed,
            "total_count": int(self.total_count) & 0xFFFFFFFF,
            "error_count": int(self.error_count) & 0xFFFFFFFF,
        }


class AsicChain:
    """A chain of `chips` emulated chips of `family` behind one UART.

    Host side: `feed(data, now_s)`; chip side output: `pop_frames(now_s)` -> whole reply frames
    released at the chain's UART rate (10 bits per byte). `step(now_s, dt_s, hashrates_hs,
    error_fractions)` advances counters and produces nonces. `reset()` is NRST, `set_powered()`
    the chain power switch."""

    def __init__(self, family: str, chips: int, difficulty: float = DEFAULT_DIFFICULTY,
                 rng: random.Random | None = None, scan_budget: int = 1 << 22,
                 scan: Callable[[bytes, int, int, int], list[int]] | None = None) -> None:
        self.profile = profile(family)
        self.family = self.profile.family
        if not 1 <= chips <= 256:
            raise ValueError(f"chips must be in 1..256, got {chips}")
        if not (difficulty > 0 and math.isfinite(difficulty)):
            raise ValueError(f"difficulty must be > 0, got {difficulty}")
        self.difficulty = float(difficulty)
        self.target = target_for(difficulty)
        self.rng = rng or random.Random(0)
        self.chips = [EmulatedChip(i, self.family, random.Random(self.rng.getrandbits(64)))
                      for i in range(chips)]
        self.scan = scan or _scan
        self.scan_budget = scan_budget  # hashes per step; nonces beyond it are late, not lost
        self.parser = asic.CommandParser(self.family)
        self.powered = True
        self.hung = False
        self.inactive = False  # chain-inactive received: unaddressed chips do not relay
        self.baud = asic.uart_baud(26)  # 115 740 bd after reset
        self.silent: set[int] = set()  # chips that stopped answering (fault)
        self.hw_error_rate_hz: dict[int, float] = {}  # injected invalid nonces per second
        self._queue: deque[tuple[float, bytes]] = deque()
        self._uart_free_s = 0.0
        self._last_input_s = 0.0
        self.stats = {"commands": 0, "jobs": 0, "reads": 0, "writes": 0, "replies": 0,
                      "nonces": 0, "hw_nonces": 0, "ignored_commands": 0, "dropped_frames": 0,
                      "resyncs": 0, "resets": 0, "hashes_scanned": 0, "baud_changes": 0}
        self.model_nonce_rate_hz = 0.0
        self._slices: dict[int, tuple[int, int, list[int]]] = {}
        #: observation hook: called as `on_write(reg, value, chip, now_s)` for every register write
        #: the chain acts on (`chip` None = broadcast), from the thread that feeds the bytes, after
        #: the chips took it; for benchmarks and tests (e.g. command -> first PLL write latency)
        self.on_write: Callable[[int, int, int | None, float], None] | None = None

    # ---- host -> chips -----------------------------------------------------------------------
    def feed(self, data: bytes, now_s: float) -> None:
        """Bytes from the host; never raises."""
        if not data:
            return
        self._last_input_s = now_s
        for cmd in self.parser.feed(data):
            self._command(cmd, now_s)

    def _resync_idle(self, now_s: float) -> None:
        # A frame start whose remaining bytes never came (noise that looked like 55 AA 21 ...):
        # after IDLE_RESYNC_S of silence the parser takes a held frame or drops that first byte.
        if self.parser.pending() and now_s - self._last_input_s >= IDLE_RESYNC_S:
            self.stats["resyncs"] += 1
            for cmd in self.parser.resync():
                self._command(cmd, now_s)

    def _reached(self) -> list[EmulatedChip]:
        """Chips a command reaches: up to and including the first one that does not relay."""
        out = []
        for chip in self.chips:
            out.append(chip)
            if self.inactive and not chip.assigned:
                break
        return out

    def _command(self, cmd: Any, now_s: float) -> None:
        if not self.powered or self.hung:
            self.stats["ignored_commands"] += 1
            return
        self.stats["commands"] += 1
        kind = cmd.kind
        if kind == "chain_inactive":
            self.inactive = True
            for chip in self.chips:
                chip.assigned = False
        elif kind == "set_address":
            self._slices.clear()
            for chip in self._reached():
                if not (self.inactive and chip.assigned):
                    chip.addr = cmd.chip
                    chip.assigned = True
                    if self.inactive:
                        break
        elif kind == "read":
            self.stats["reads"] += 1
            for chip in self._reached():
                if (cmd.broadcast or chip.addr == cmd.chip) and chip.index not in self.silent:
                    frame = asic.register_reply(chip.read(cmd.reg), chip.addr, cmd.reg,
                                                chip.reply_len)
                    self._emit(frame, now_s)
        elif kind == "write":
            self.stats["writes"] += 1
            for chip in self._reached():
                if cmd.broadcast or chip.addr == cmd.chip:
                    chip.write(cmd.reg, cmd.value)
            if self.chips and (cmd.broadcast or self.chips[0].addr == cmd.chip):
                baud = asic.chip_baud(self.family, cmd.reg, cmd.value)
                if baud is not None and baud != self.baud:
                    self.baud = baud  # after the whole frame: replies from now on use it
                    self.stats["baud_changes"] += 1
            if self.on_write is not None:
                self.on_write(cmd.reg, cmd.value, None if cmd.broadcast else cmd.chip, now_s)
        elif kind == "job":
            self.stats["jobs"] += 1
            midstates: list[tuple[int, ...]] = []
            if cmd.header80 is None:  # BM1397: midstates + the header's last 16 bytes
                data = struct.pack("<III", cmd.merkle_tail, cmd.ntime, cmd.nbits)
                count = min(max(cmd.num_midstates, 1), len(cmd.midstates))
                midstates = [asic.midstate_state(m) for m in cmd.midstates[:count]]
                if not midstates:
                    return
            else:
                data = bytes(cmd.header80)
            for chip in self._reached():
                chip.job = (cmd.job_id, data)
                chip.midstates = midstates
                chip.pool.clear()

    # ---- chips -> host -----------------------------------------------------------------------
    def _emit(self, frame: bytes, now_s: float) -> None:
        if len(self._queue) >= MAX_QUEUED_FRAMES:
            self.stats["dropped_frames"] += 1
            return
        self._queue.append((now_s, frame))
        self.stats["replies"] += 1

    def pop_frames(self, now_s: float) -> list[bytes]:
        """Whole frames the UART has sent by `now_s` at the current baud (10 bits per byte)."""
        out = []
        while self._queue:
            ready_s, frame = self._queue[0]
            start = max(self._uart_free_s, ready_s)
            if start > now_s:
                break
            self._queue.popleft()
            self._uart_free_s = start + len(frame) * 10.0 / self.baud
            out.append(frame)
        return out

    @property
    def queued_frames(self) -> int:
        return len(self._queue)

    # ---- power, reset ------------------------------------------------------------------------
    def reset(self) -> None:
        """NRST pulse: chips lose all state (addresses, PLL, counters, jobs); a hang ends."""
        for chip in self.chips:
            chip.reset()
        self._slices.clear()
        self.hung = False
        self.inactive = False
        self.baud = asic.uart_baud(26)
        self.parser.reset()
        self._queue.clear()
        self.stats["resets"] += 1

    def set_powered(self, on: bool) -> None:
        if on == self.powered:
            return
        self.powered = on
        self.reset()

    # ---- hashing -----------------------------------------------------------------------------
    def freqs_mhz(self) -> list[float]:
        return [c.freq_mhz for c in self.chips]

    def active(self) -> list[bool]:
        """Chips doing work (a job and a running clock), for the power model."""
        return [self.powered and not self.hung and c.job is not None for c in self.chips]

    def _slice(self, chip: EmulatedChip) -> tuple[int, int, list[int]]:
        """(first, end) of the chip's address-field range and its distinct low 7 bits."""
        cached = self._slices.get(chip.index)
        if cached is None:
            above = [c.addr for c in self.chips if c.addr > chip.addr]
            end = min(above) if above else 256
            cached = (chip.addr, end, sorted({f & 0x7F for f in range(chip.addr, end)}))
            self._slices[chip.index] = cached
        return cached

    def step(self, now_s: float, dt_s: float, hashrates_hs: Sequence[float],
             error_fractions: Sequence[float]) -> None:
        """Advance `dt_s`: counters, Poisson nonce arrivals, the nonce search."""
        self._resync_idle(now_s)
        if not self.powered:
            self.model_nonce_rate_hz = 0.0
            return
        budget = self.scan_budget
        rate = 0.0
        for chip in self.chips:
            i = chip.index
            h = hashrates_hs[i] if chip.freq_mhz > 0 else 0.0
            e = min(max(error_fractions[i], 0.0), 1.0)
            diff1 = h * dt_s / TWO32
            chip.total_count += diff1
            domains = self.profile.domains
            for d in range(domains):
                chip.domain_count[d] += diff1 / domains
            chip.error_count += diff1 * e
            if self.hung or chip.job is None or h <= 0:
                continue
            ticket = chip.ticket_difficulty
            lam_valid = h * (1.0 - e) / (TWO32 * ticket)
            lam_err = h * e / (TWO32 * ticket)
            fault_rate = self.hw_error_rate_hz.get(i, self.hw_error_rate_hz.get(-1, 0.0))
            rate += lam_valid + lam_err + fault_rate
            chip.owed += poisson(chip.rng, lam_valid * dt_s)
            n_err = poisson(chip.rng, lam_err * dt_s)
            n_fault = poisson(chip.rng, fault_rate * dt_s)
            chip.error_count += n_fault * ticket
            silent = i in self.silent
            if silent:  # a chip that stopped answering: its results are lost
                chip.owed = 0
                continue
            for _ in range(n_err + n_fault):
                chip.hw_nonces += 1
                self.stats["hw_nonces"] += 1
                self._emit(self._invalid_nonce(chip), now_s)
            while chip.owed > 0 and budget > 0:
                found, cost = self._valid_nonce(chip, budget)
                budget -= cost
                if found is None:
                    break
                chip.owed -= 1
                chip.nonces += 1
                self.stats["nonces"] += 1
                self._emit(found, now_s)
        self.model_nonce_rate_hz = rate

    def _window_start(self, chip: EmulatedChip) -> int:
        """First LE nonce of the chip's next fresh window (§3.5 slice, see module doc)."""
        fields = self._slice(chip)[2]
        w = chip.window
        chip.window += 1
        f7 = fields[w % len(fields)]
        cnt = (w // len(fields)) & 0x1FFFF
        b3 = (f7 << 1) | (cnt >> 16)
        return (b3 << 8) | (((cnt >> 8) & 0xFF) << 16) | ((cnt & 0xFF) << 24)

    def _in_slice(self, chip: EmulatedChip, nonce: int) -> bool:
        b2, b3 = nonce & 0xFF, (nonce >> 8) & 0xFF
        field = ((b2 & 1) << 7) | (b3 >> 1)
        lo, end, _ = self._slice(chip)
        return (b2 >> 1) < self.profile.cores and lo <= field < end

    def _version_field(self, chip: EmulatedChip, base_version: int) -> int:
        """Rolled version bits >> 13: inside the mask, clear in the base version."""
        mask = chip.version_mask >> 13
        if not mask:
            return 0
        return chip.rng.getrandbits(16) & mask & ~(base_version >> 13) & 0xFFFF

    def _header(self, header80: bytes, version_field: int) -> bytes:
        version = int.from_bytes(header80[0:4], "little") | (version_field << 13)
        return struct.pack("<I", version & 0xFFFFFFFF) + header80[4:76] + b"\x00\x00\x00\x00"

    def _reply(self, chip: EmulatedChip, nonce: int, vfield: int, small_core: int) -> bytes:
        job_id = chip.job[0] if chip.job else 0
        return asic.nonce_reply(self.family, nonce, job_id, small_core, vfield << 13, 0,
                                chip.reply_len)

    def _small_core(self, chip: EmulatedChip, vfield: int) -> int:
        spc = self.profile.small_cores_per_core
        return (vfield if chip.version_rolling else chip.rng.getrandbits(8)) & (spc - 1)

    def _valid_nonce(self, chip: EmulatedChip, budget: int) -> tuple[bytes | None, int]:
        """A real solution from the chip's pool or fresh windows; (frame or None, hashes spent)."""
        if chip.midstates:
            return self._valid_nonce_midstate(chip, budget)
        cost = 0
        assert chip.job is not None
        header80 = chip.job[1]
        while not chip.pool:
            if cost >= budget:
                return None, cost
            vfield = self._version_field(chip, int.from_bytes(header80[0:4], "little"))
            start = self._window_start(chip)
            hits = self.scan(self._header(header80, vfield), start, WINDOW, self.target)
            cost += WINDOW
            self.stats["hashes_scanned"] += WINDOW
            chip.pool = [(n, vfield) for n in hits if self._in_slice(chip, n)]
        nonce, vfield = chip.pool.pop(0)
        return self._reply(chip, nonce, vfield, self._small_core(chip, vfield)), cost

    # BM1397: the job carries midstates, not the header. The chip finishes SHA-256 from the
    # midstate (firmware_bridge.asic.sha256_compress, pure Python: slow, fine for small boards),
    # nonce_h = core[31:24] | midstate index[23:22] | chip address field[21:14] | counter[13:0].
    def _midstate_hash(self, chip: EmulatedChip, m: int, nonce: int) -> int:
        assert chip.job is not None
        block = chip.job[1] + struct.pack("<I", nonce) + _PAD_640
        state = asic.sha256_compress(chip.midstates[m], block)
        first = b"".join(w.to_bytes(4, "big") for w in state)
        return int.from_bytes(_sha256(first).digest(), "little")

    def _midstate_candidate(self, chip: EmulatedChip) -> tuple[int, int]:
        lo, end, _ = self._slice(chip)
        w = chip.window
        chip.window += 1
        field = lo + w % (end - lo)
        counter = (w // (end - lo)) & 0x3FFF
        core = chip.rng.randrange(self.profile.cores)
        m = chip.rng.randrange(len(chip.midstates))
        nonce_h = (core << 24) | (m << 22) | (field << 14) | counter
        return int.from_bytes(nonce_h.to_bytes(4, "big"), "little"), m

    def _valid_nonce_midstate(self, chip: EmulatedChip, budget: int) -> tuple[bytes | None, int]:
        cost = 0  # in budget units: one pure-Python midstate hash counts MIDSTATE_COST
        while cost < budget:
            nonce, m = self._midstate_candidate(chip)
            cost += MIDSTATE_COST
            self.stats["hashes_scanned"] += 1
            if self._midstate_hash(chip, m, nonce) <= self.target:
                assert chip.job is not None
                return asic.nonce_reply(self.family, nonce, chip.job[0], m, 0, 0, 9), cost
        return None, cost

    def _invalid_nonce(self, chip: EmulatedChip) -> bytes:
        """A nonce in the chip's slice that does NOT meet the emulation difficulty."""
        if chip.midstates:
            while True:
                nonce, m = self._midstate_candidate(chip)
                if self._midstate_hash(chip, m, nonce) > self.target:
                    assert chip.job is not None
                    return asic.nonce_reply(self.family, nonce, chip.job[0], m, 0, 0, 9)
        assert chip.job is not None
        header80 = chip.job[1]
        vfield = self._version_field(chip, int.from_bytes(header80[0:4], "little"))
        header = self._header(header80, vfield)
        while True:
            start = self._window_start(chip)
            nonce = start | (chip.rng.getrandbits(8) << 0)
            if not self._in_slice(chip, nonce):
                continue
            h = _sha256d(header[:76] + struct.pack("<I", nonce))
            if int.from_bytes(h, "little") > self.target:
                return self._reply(chip, nonce, vfield, self._small_core(chip, vfield))

    def state(self) -> dict[str, Any]:
        return {
            "family": self.family, "chips": len(self.chips), "difficulty": self.difficulty,
            "powered": self.powered, "hung": self.hung, "baud": self.baud,
            "hashing": HASHING, "model_nonce_rate_hz": round(self.model_nonce_rate_hz, 4),
            "nonces_owed": sum(c.owed for c in self.chips), "queued_frames": len(self._queue),
            "parser": {"frames": self.parser.frames, "crc_errors": self.parser.crc_errors,
                       "discarded_bytes": self.parser.discarded_bytes},
            **self.stats,
            "freq_mhz": [round(c.freq_mhz, 4) for c in self.chips],
            "chip": [c.state() for c in self.chips],
        }
