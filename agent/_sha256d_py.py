"""Pure-Python SHA-256d nonce engine: the reference the compiled kernels must match.

Same names, arguments, results and errors as `agent._sha256d` (minus its `kernel=` choice).
It copies the hashlib state after the first 64 header bytes instead of rehashing them.
"""

from __future__ import annotations

import hashlib
import operator
from typing import Any

IMPLEMENTATION = "python"
NONCE_SPACE = 1 << 32


def _bytes_like(value: Any, name: str) -> bytes:
    if isinstance(value, str):
        raise TypeError(f"{name} must be bytes-like (bytes, bytearray, memoryview), not str")
    try:
        view = memoryview(value)
    except TypeError:
        raise TypeError(
            f"{name} must be bytes-like (bytes, bytearray, memoryview), not {type(value).__name__}"
        ) from None
    return view.tobytes()


def _integer(value: Any, name: str) -> int:
    if isinstance(value, bool) or not hasattr(type(value), "__index__"):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    return operator.index(value)


def scan_arguments(header: Any, start: Any, count: Any, target: Any) -> tuple[bytes, int, int, int]:
    """`scan`'s arguments checked and normalised; TypeError/ValueError with the reason.
    The compiled module checks with this same function."""
    raw = _bytes_like(header, "header")
    if len(raw) != 80:
        raise ValueError(f"header must be 80 bytes, got {len(raw)}")
    start = _integer(start, "start")
    count = _integer(count, "count")
    target = _integer(target, "target")
    if start < 0 or start > NONCE_SPACE:
        raise ValueError(f"start must be in [0, 2**32], got {start}")
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if start + count > NONCE_SPACE:
        raise ValueError(f"start + count must be <= 2**32, got {start} + {count}")
    if target < 0 or target >> 256:
        raise ValueError(f"target must be in [0, 2**256), got {target:#x}")
    return raw, start, count, target


def sha256d(data: bytes) -> bytes:
    """SHA-256 of SHA-256 of `data` (bytes-like), as the 32 digest bytes hashlib returns."""
    raw = _bytes_like(data, "data")
    return hashlib.sha256(hashlib.sha256(raw).digest()).digest()


def scan(header: bytes, start: int, count: int, target: int) -> list[int]:
    """Nonces in [start, start + count) whose sha256d, read little-endian, is <= target.

    The nonce goes little-endian into header bytes 76..79 (whatever they held is ignored).
    `start` may be 2**32 only with `count` 0 (an empty range at the end of the nonce space).
    """
    raw, start, count, target = scan_arguments(header, start, count, target)

    first = hashlib.sha256(raw[:64])
    tail = raw[64:76]
    sha256 = hashlib.sha256
    from_bytes = int.from_bytes
    found = []
    for nonce in range(start, start + count):
        inner = first.copy()
        inner.update(tail + nonce.to_bytes(4, "little"))
        if from_bytes(sha256(inner.digest()).digest(), "little") <= target:
            found.append(nonce)
    return found
