"""The SHA-256d nonce scan as the tests define it, from hashlib alone: the reference every kernel
(compiled here, or cross-compiled for ARM in tests/arm) must agree with, and real Bitcoin block
headers whose nonces meet their bits target."""

from __future__ import annotations

import hashlib

SPACE = 1 << 32  # the nonce space
MAX_TARGET = (1 << 256) - 1


def reference(header: bytes, start: int, count: int, target: int) -> list[int]:
    """The obvious hashlib loop the kernels must agree with."""
    prefix = bytes(header[:76])
    found = []
    for nonce in range(start, start + count):
        value = hash_value(prefix, nonce)
        if value <= target:
            found.append(nonce)
    return found


def hash_value(header: bytes, nonce: int) -> int:
    """SHA-256d of the header's first 76 bytes and `nonce`, as the number compared with a target."""
    data = bytes(header[:76]) + nonce.to_bytes(4, "little")
    return int.from_bytes(hashlib.sha256(hashlib.sha256(data).digest()).digest(), "little")


def bits_target(bits: int) -> int:
    """The target a header's compact `bits` field encodes."""
    return (bits & 0xFFFFFF) << (8 * ((bits >> 24) - 3))


def block_header(version: int, prev_hex: str, merkle_hex: str, time_s: int, bits: int,
                 nonce: int) -> bytes:
    """The 80-byte header from the fields as block explorers print them (hashes big-endian)."""
    return (
        version.to_bytes(4, "little")
        + bytes.fromhex(prev_hex)[::-1]
        + bytes.fromhex(merkle_hex)[::-1]
        + time_s.to_bytes(4, "little")
        + bits.to_bytes(4, "little")
        + nonce.to_bytes(4, "little")
    )


# Public block headers: (header, nonce, bits, block hash as block explorers print it).
REAL_BLOCKS = {
    "genesis": (
        block_header(
            1,
            "00" * 32,
            "4a5e1e4baab89f3a32518a88c31bc87f618f76673e2cc77ab2127b7afdeda33b",
            1231006505,
            0x1D00FFFF,
            2083236893,
        ),
        2083236893,
        0x1D00FFFF,
        "000000000019d6689c085ae165831e934ff763ae46a2a6c172b3f1b60a8ce26f",
    ),
    "block-100000": (
        block_header(
            1,
            "000000000002d01c1fccc21636b607dfd930d31d01c3a62104612a1719011250",
            "f3e94742aca4b5ef85488dc37c06c3282295ffec960994b2c0d5ac2a25a95766",
            1293623863,
            0x1B04864C,
            274148111,
        ),
        274148111,
        0x1B04864C,
        "000000000003ba27aa200b1cecaad478d2b00432346c3f1f3986da1afd33e506",
    ),
    "block-125552": (
        block_header(
            1,
            "00000000000008a3a41b85b8b29ad444def299fee21793cd8b9e567eab02cd81",
            "2b12fcf1b09288fcaff797d71e950e71ae42b91e8bdb2304758dfcffc2b620e3",
            1305998791,
            0x1A44B9F2,
            2504433986,
        ),
        2504433986,
        0x1A44B9F2,
        "00000000000000001e8d6829a8a21adc5d38d0a473b144b6765798e61f98bd1d",
    ),
}
