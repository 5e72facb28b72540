"""SHA-256d nonce engine: verifies the nonces the chips return and measures the host.

`sha256d(data)` is the double SHA-256 of `data`; `scan(header, start, count, target)` returns, in
increasing order, the nonces in [start, start + count) whose double hash of the 80-byte header
(nonce little-endian in bytes 76..79), read as a 256-bit little-endian integer, is <= target.
`IMPLEMENTATION` names the kernel in use.

The compiled module `agent._sha256d` (built from ext/) is used when it loaded; it picks the
fastest kernel the CPU supports (AVX-512, SHA extensions, AVX2, SSE2/NEON, scalar C) and runs it
without the GIL. GRIDMINER_NO_EXTENSIONS=1 forces the pure-Python reference `agent._sha256d_py`;
GRIDMINER_SHA256D_KERNEL=<name> forces one compiled kernel. `LOAD_ERROR` says why the compiled
module is not in use, `OMITTED_KERNELS` which kernels of this CPU family the compiler left out of
the build (said at import, as a warning in the log), `describe()` both in one line.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
from collections.abc import Callable
from types import ModuleType

from agent import _sha256d_py

ScanFn = Callable[[bytes, int, int, int], list[int]]

NO_EXTENSIONS = os.environ.get("GRIDMINER_NO_EXTENSIONS", "") not in ("", "0")
"""GRIDMINER_NO_EXTENSIONS was set: the compiled module is not even imported."""


log = logging.getLogger("gridminer.hashing")


def _load_compiled() -> tuple[ModuleType | None, str | None]:
    if NO_EXTENSIONS:
        return None, "GRIDMINER_NO_EXTENSIONS is set"
    try:
        return importlib.import_module("agent._sha256d"), None
    except ImportError as exc:  # not built (no compiler, no Cython) or broken: the pure one serves
        return None, f"agent._sha256d did not load: {exc}"


_compiled, LOAD_ERROR = _load_compiled()
"""LOAD_ERROR: why the compiled module is not in use (None when it is)."""

COMPILED: bool = _compiled is not None
"""The compiled module loaded."""

OMITTED_KERNELS: dict[str, str] = dict(getattr(_compiled, "OMITTED_KERNELS", {}))
"""Kernels of this CPU family the compiler left out of the build: name -> why."""
for _name, _why in OMITTED_KERNELS.items():
    log.warning("SHA-256d kernel %s is not in this build: %s", _name, _why)

if _compiled is not None:
    sha256d: Callable[[bytes], bytes] = _compiled.sha256d
    scan: ScanFn = _compiled.scan
    IMPLEMENTATION: str = _compiled.IMPLEMENTATION
else:
    sha256d = _sha256d_py.sha256d
    scan = _sha256d_py.scan
    IMPLEMENTATION = _sha256d_py.IMPLEMENTATION

MAX_TARGET = (1 << 256) - 1
DIFF1_TARGET = 0xFFFF << 208


def describe() -> str:
    """The kernel in use in one line, with why the compiled module or a kernel is missing."""
    if _compiled is None:
        return f"SHA-256d on the pure-Python path ({LOAD_ERROR})"
    text = f"SHA-256d kernel {IMPLEMENTATION} (compiled; usable: {', '.join(_compiled.KERNELS)})"
    if OMITTED_KERNELS:
        text += f"; left out of the build: {', '.join(OMITTED_KERNELS)}"
    return text


def kernels() -> dict[str, ScanFn]:
    """Every kernel usable here, name -> scan function: compiled ones first, then "python"."""
    found: dict[str, ScanFn] = {}
    if _compiled is not None:
        for name in _compiled.KERNELS:
            found[name] = functools.partial(_compiled.scan, kernel=name)
    found[_sha256d_py.IMPLEMENTATION] = _sha256d_py.scan
    return found


def target_from_difficulty(difficulty: float) -> int:
    """The share target of difficulty D: int(0xFFFF * 2**208 / D), clamped to [0, 2**256 - 1]."""
    if isinstance(difficulty, bool) or not isinstance(difficulty, int | float):
        raise TypeError(f"difficulty must be a number, not {type(difficulty).__name__}")
    if not difficulty > 0 or difficulty == float("inf"):
        raise ValueError(f"difficulty must be a finite number > 0, got {difficulty}")
    value = DIFF1_TARGET / difficulty
    return MAX_TARGET if value >= MAX_TARGET else int(value)
