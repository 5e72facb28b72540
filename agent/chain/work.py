"""Work for the chain: block headers from a work source, the job-slot table, nonce checks.

A `WorkSource` hands out 80-byte block headers; the local generator makes valid, varying headers
so the chain hashes without a pool, and the pool client (`agent.pool`) takes its place when pools
are configured: its `Work` carries an `origin` the chain never reads (what makes a nonce a share
of one pool job) and it says when the chips' work has gone stale (`clean_pending`). The `JobTable`
remembers which header went out under which job id (ids are reused) and keeps a slot's previous
occupant for a short grace period, so a late nonce is still checked against the job it belongs to.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from agent.clock import Clock

#: Difficulty 1 target (bitcoin "truediffone"): a hash at difficulty D is <= DIFF1_TARGET / D.
DIFF1_TARGET = 0xFFFF * 2**208
MAX_TARGET = 2**256 - 1
#: Default rolling mask of stratum pools and ESP-Miner (0xA4 = 0x9000FFFF).
DEFAULT_VERSION_MASK = 0x1FFFE000


def target_for(difficulty: float) -> int:
    """The 256-bit target a hash (read little-endian) must not exceed at `difficulty`."""
    if difficulty <= 0:
        raise ValueError(f"difficulty must be > 0, got {difficulty}")
    if float(difficulty).is_integer():
        return min(DIFF1_TARGET // int(difficulty), MAX_TARGET)
    return min(int(DIFF1_TARGET / difficulty), MAX_TARGET)


def hash_difficulty(hash_value: int) -> float:
    """Share difficulty of a hash given as its little-endian integer."""
    return DIFF1_TARGET / max(hash_value, 1)


def _default_sha256d(data: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


def _load_sha256d() -> Callable[[bytes], bytes]:
    try:
        from agent.hashing import sha256d
    except ImportError:  # the engine's module is optional for the pure-Python path
        return _default_sha256d
    return sha256d


@dataclass(frozen=True)
class Work:
    """One block header to hash. `header80` has nonce bytes 0 and the base version."""

    header80: bytes
    work_id: int
    version_mask: int = DEFAULT_VERSION_MASK  # the bits the chips may roll (0: none)
    clean: bool = False  # a new block: earlier work is stale, send this at once
    #: opaque to the chain: what the work source needs to turn a nonce into a share
    origin: Any = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if len(self.header80) != 80:
            raise ValueError(f"header must be 80 bytes, got {len(self.header80)}")

    @property
    def version(self) -> int:
        return int.from_bytes(self.header80[0:4], "little")

    @property
    def ntime(self) -> int:
        return int.from_bytes(self.header80[68:72], "little")

    @property
    def nbits(self) -> int:
        return int.from_bytes(self.header80[72:76], "little")

    def header(self, nonce: int, version_bits: int = 0) -> bytes:
        """The hashed header: version = base | version_bits, nonce little-endian in 76..79."""
        version = self.version | version_bits
        return struct.pack("<I", version) + self.header80[4:76] + struct.pack("<I", nonce)


@dataclass(frozen=True)
class Share:
    """A verified nonce: what a pool client would submit."""

    work: Work
    nonce: int
    version_bits: int
    difficulty: float
    chip: int
    ts_s: float


class WorkSource(Protocol):
    """Where block headers come from: the local generator now, a pool client later."""

    def next_work(self, now_s: float) -> Work:
        """A fresh header for the next job (a new merkle root or a new block)."""
        ...

    def submit(self, share: Share) -> None:
        """A nonce that verified against the work it was found for."""
        ...

    def clean_pending(self, now_s: float) -> bool:
        """True when the work the chips hash has gone stale (a new block, another pool, a new
        version mask): the next job should go out now rather than at the job cadence."""
        ...


class LocalWorkSource:
    """Valid, varying headers without a pool: merkle root new per job, time advancing,
    a new previous-block hash every `block_interval_s`. Shares are counted, not sent anywhere."""

    def __init__(
        self,
        clock: Clock,
        seed: int = 0,
        version: int = 0x20000000,
        nbits: int = 0x17034219,
        version_mask: int = DEFAULT_VERSION_MASK,
        block_interval_s: float = 600.0,
    ) -> None:
        if version & version_mask:
            raise ValueError("base version must have no bits inside the rolling mask")
        self._clock = clock
        self._seed = seed.to_bytes(8, "little", signed=False)
        self._version = version
        self._nbits = nbits
        self._version_mask = version_mask
        self._block_interval_s = block_interval_s
        self._t0_s = clock.monotonic()
        self._wall0 = int(clock.time())
        self._count = 0
        self._block = -1
        self._prevhash = b""
        self.shares = 0
        self.best_difficulty = 0.0

    def next_work(self, now_s: float) -> Work:
        elapsed_s = max(0.0, now_s - self._t0_s)
        block = int(elapsed_s // self._block_interval_s) if self._block_interval_s > 0 else 0
        clean = block != self._block
        if clean:
            self._block = block
            digest = _default_sha256d(b"prev" + self._seed + block.to_bytes(8, "little"))
            # header order: display-order hashes of real blocks end in zero bytes here
            self._prevhash = digest[:24] + bytes(8)
        self._count += 1
        merkle = _default_sha256d(b"merkle" + self._seed + self._count.to_bytes(8, "little"))
        ntime = (self._wall0 + int(elapsed_s)) & 0xFFFFFFFF
        header = (
            struct.pack("<I", self._version)
            + self._prevhash
            + merkle
            + struct.pack("<II", ntime, self._nbits)
            + bytes(4)
        )
        return Work(header, self._count, self._version_mask, clean)

    def submit(self, share: Share) -> None:
        self.shares += 1
        self.best_difficulty = max(self.best_difficulty, share.difficulty)

    def clean_pending(self, now_s: float) -> bool:
        if self._block_interval_s <= 0:
            return False
        return int(max(0.0, now_s - self._t0_s) // self._block_interval_s) != self._block


@dataclass
class _Slot:
    work: Work
    sent_s: float
    previous: Work | None = None
    previous_until_s: float = 0.0


@dataclass
class NonceCheck:
    """Outcome of checking one nonce: the work it verified against (None if none did)."""

    work: Work | None
    hash_value: int
    job_id: int
    stale: bool = False  # verified against a previous occupant of the slot or a fallback id


class JobTable:
    """Job-id slots as the chip sees them. Sending a job replaces the slot's occupant; the old
    one is kept `grace_s` for late nonces. A nonce that fails its own slot is also tried against
    the ids sent just before (cgminer's fallback), because the id a chip reports is now and then
    stale."""

    def __init__(
        self,
        job_id_step: int,
        grace_s: float = 2.0,
        fallback_ids: int = 3,
        sha256d: Callable[[bytes], bytes] | None = None,
    ) -> None:
        self.job_id_step = job_id_step
        self.grace_s = grace_s
        self.fallback_ids = fallback_ids
        self._sha256d = sha256d or _load_sha256d()
        self._slots: dict[int, _Slot] = {}
        self._order: list[int] = []  # job ids, most recent last
        self._next_id = 0
        self.sent = 0

    def next_job_id(self) -> int:
        """The id the next job goes out under (ESP-Miner's sequence: +step mod 128)."""
        return (self._next_id + self.job_id_step) % 128

    def put(self, job_id: int, work: Work, now_s: float) -> None:
        """Record that `work` was sent as `job_id`."""
        old = self._slots.get(job_id)
        slot = _Slot(work, now_s)
        if old is not None:
            slot.previous = old.work
            slot.previous_until_s = now_s + self.grace_s
        self._slots[job_id] = slot
        if job_id in self._order:
            self._order.remove(job_id)
        self._order.append(job_id)
        self._next_id = job_id
        self.sent += 1

    def clear(self) -> None:
        """Forget every job (after a chain reset: nonces for old jobs cannot come any more)."""
        self._slots.clear()
        self._order.clear()

    def get(self, job_id: int) -> Work | None:
        slot = self._slots.get(job_id)
        return slot.work if slot else None

    def __len__(self) -> int:
        return len(self._slots)

    def candidates(self, job_id: int, now_s: float) -> Iterator[tuple[Work, bool]]:
        """Works a nonce reported under `job_id` may belong to, best guess first; bool = stale."""
        slot = self._slots.get(job_id)
        if slot is not None:
            yield slot.work, False
            if slot.previous is not None and now_s <= slot.previous_until_s:
                yield slot.previous, True
        if job_id in self._order:
            idx = self._order.index(job_id)
            for back in range(1, self.fallback_ids + 1):
                if idx - back < 0:
                    break
                other = self._slots[self._order[idx - back]]
                yield other.work, True

    def check(self, job_id: int, nonce: int, version_bits: int, target: int,
              now_s: float) -> NonceCheck:
        """Verify a nonce (sha256d of the rebuilt header <= target) against its job's candidates."""
        best = MAX_TARGET + 1
        for work, stale in self.candidates(job_id, now_s):
            value = int.from_bytes(self._sha256d(work.header(nonce, version_bits)), "little")
            if value <= target:
                return NonceCheck(work, value, job_id, stale)
            best = min(best, value)
        return NonceCheck(None, best, job_id)


@dataclass
class RecentNonces:
    """Duplicate filter: chips now and then send the same nonce twice."""

    size: int = 512
    _seen: dict[tuple[int, int, int], None] = field(default_factory=dict)

    def seen(self, key: tuple[int, int, int]) -> bool:
        """True if `key` came before; otherwise remember it."""
        if key in self._seen:
            return True
        self._seen[key] = None
        if len(self._seen) > self.size:
            del self._seen[next(iter(self._seen))]
        return False
