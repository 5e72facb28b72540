"""Block headers from Stratum V1 jobs: coinbase, merkle root, the 80 header bytes.

A `mining.notify` carries the coinbase split around the extranonces and the merkle branch of the
coinbase's leaf; the client fills in extranonce1 (from the pool) and extranonce2 (its own roll),
hashes the coinbase, folds the branch into the root, and lays out the header:

    coinbase = coinb1 ‖ extranonce1 ‖ extranonce2 ‖ coinb2        (bytes as sent, no swaps)
    root     = dsha(coinbase), then root = dsha(root ‖ b) for each branch hash b, in order
    header   = version(LE) ‖ prevhash ‖ root ‖ ntime(LE) ‖ nbits(LE) ‖ nonce(LE)

The notify's prevhash has every 4-byte word byte-reversed relative to the header
(`words_swapped`); version, nbits and ntime are big-endian hex in JSON and little-endian in the
header. extranonce2 is a little-endian counter of `extranonce2_size` bytes (ESP-Miner and cgminer
fill it that way; a pool echoes whatever bytes it gets).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass

#: the header's last four bytes: the nonce the chips search
NONCE_OFFSET = 76


def dsha(data: bytes) -> bytes:
    """SHA-256 of SHA-256 of `data` (bitcoin's hash256), raw digest order."""
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


def words_swapped(data: bytes) -> bytes:
    """`data` with the byte order of each 4-byte word reversed (the notify's prevhash form and
    the header's, one from the other)."""
    if len(data) % 4:
        raise ValueError(f"length {len(data)} is not a multiple of 4")
    count = len(data) // 4
    return struct.pack(f"<{count}I", *struct.unpack(f">{count}I", data))


def coinbase(coinb1: bytes, extranonce1: bytes, extranonce2: bytes, coinb2: bytes) -> bytes:
    """The coinbase transaction (non-witness serialization) as the pool will rebuild it."""
    return coinb1 + extranonce1 + extranonce2 + coinb2


def merkle_root(coinbase_tx: bytes, branch: Sequence[bytes]) -> bytes:
    """The merkle root in header (internal) byte order: the coinbase txid folded with `branch`."""
    node = dsha(coinbase_tx)
    for sibling in branch:
        node = dsha(node + sibling)
    return node


def extranonce2_bytes(counter: int, size: int) -> bytes:
    """Extranonce2 number `counter` as `size` little-endian bytes (1 with size 4: 01000000)."""
    return counter.to_bytes(size, "little")


def block_header(version: int, prevhash: bytes, root: bytes, ntime: int, nbits: int,
                 nonce: int = 0) -> bytes:
    """The 80-byte header; `prevhash` and `root` in header byte order."""
    if len(prevhash) != 32 or len(root) != 32:
        raise ValueError("prevhash and merkle root must be 32 bytes")
    return (struct.pack("<I", version) + prevhash + root
            + struct.pack("<III", ntime, nbits, nonce))


def header_hash_value(header: bytes) -> int:
    """The header's hash as the 256-bit integer targets compare against (little-endian)."""
    return int.from_bytes(dsha(header), "little")


def nbits_target(nbits: int) -> int:
    """The block target the compact `nbits` encodes."""
    exponent, mantissa = nbits >> 24, nbits & 0x007FFFFF
    if exponent <= 3:
        return mantissa >> (8 * (3 - exponent))
    return mantissa << (8 * (exponent - 3))


@dataclass(frozen=True)
class Job:
    """One `mining.notify`, decoded: hex turned into bytes, prevhash in header order."""

    job_id: str
    prevhash: bytes  # header byte order (the notify's words swapped back)
    coinb1: bytes
    coinb2: bytes
    branch: tuple[bytes, ...]
    version: int
    nbits: int
    ntime: int
    clean: bool

    def root(self, extranonce1: bytes, extranonce2: bytes) -> bytes:
        return merkle_root(coinbase(self.coinb1, extranonce1, extranonce2, self.coinb2),
                           self.branch)

    def header(self, extranonce1: bytes, extranonce2: bytes, ntime: int | None = None,
               nonce: int = 0, version_bits: int = 0) -> bytes:
        """The header a chip hashes for these extranonces (nonce and rolled bits 0 unless
        given); `ntime` defaults to the job's."""
        return block_header(self.version | version_bits, self.prevhash,
                            self.root(extranonce1, extranonce2),
                            self.ntime if ntime is None else ntime, self.nbits, nonce)
