# cython: language_level=3, boundscheck=False, wraparound=False
"""Compiled SHA-256d nonce engine (see agent.hashing for the public API).

`scan` validates its arguments exactly like the pure-Python reference, builds the nonce-independent
job (midstate, fixed words, target words) once, then runs the chosen C kernel without the GIL in
chunks, so several threads scanning disjoint ranges use several cores.
"""

from libc.stdint cimport uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from cpython.exc cimport PyErr_CheckSignals

import os
import time
import warnings

from agent import _sha256d_py as _pure


cdef extern from "sha256d_kernels.h":
    enum: SHA256D_CHUNK
    ctypedef struct sha256d_job:
        pass
    ctypedef size_t (*sha256d_scan_fn)(const sha256d_job *job, uint32_t start, uint64_t count,
                                       uint32_t *out) noexcept nogil
    void sha256d_job_init(sha256d_job *job, const unsigned char *header,
                          const uint32_t *target) noexcept nogil
    int sha256d_kernel_count() noexcept nogil
    const char *sha256d_kernel_name(int index) noexcept nogil
    int sha256d_kernel_usable(int index) noexcept nogil
    sha256d_scan_fn sha256d_kernel_fn(int index) noexcept nogil
    const char *sha256d_kernels_omitted() noexcept nogil


cdef uint64_t NONCE_SPACE = 1 << 32
# nonces per GIL-free call (see sha256d_kernels.h)
cdef uint64_t CHUNK = SHA256D_CHUNK

COMPILED_KERNELS = tuple(sha256d_kernel_name(i).decode() for i in range(sha256d_kernel_count()))
"""Kernels compiled into this build, widest first."""
KERNELS = tuple(
    sha256d_kernel_name(i).decode()
    for i in range(sha256d_kernel_count())
    if sha256d_kernel_usable(i)
)
"""Kernels the running CPU supports, widest first."""
OMITTED_KERNELS = dict(
    line.split(": ", 1) for line in sha256d_kernels_omitted().decode().splitlines()
)
"""Kernels of this CPU family that the compiler left out of this build: name -> why."""
KERNEL_ENV = "GRIDMINER_SHA256D_KERNEL"

cdef dict _FUNCTIONS = {}


cdef class _Kernel:
    cdef sha256d_scan_fn fn


cdef _Kernel _kernel(int index):
    cdef _Kernel k = _Kernel()
    k.fn = sha256d_kernel_fn(index)
    return k


for _i in range(sha256d_kernel_count()):
    if sha256d_kernel_usable(_i):
        _FUNCTIONS[sha256d_kernel_name(_i).decode()] = _kernel(_i)


def _pick_kernel():
    """The default kernel: $GRIDMINER_SHA256D_KERNEL if usable, else the fastest of the leading
    (widest) kernels, timed on a few thousand nonces (about 2 ms at import)."""
    forced = os.environ.get(KERNEL_ENV, "")
    if forced:
        if forced in KERNELS:
            return forced
        warnings.warn(
            f"{KERNEL_ENV}={forced!r} is not usable here (usable: {', '.join(KERNELS)})",
            RuntimeWarning,
            stacklevel=2,
        )
    candidates = KERNELS[:3] if len(KERNELS) > 1 and KERNELS[0] != "scalar" else KERNELS[:1]
    if len(candidates) == 1:
        return candidates[0]
    header = bytes(range(80))
    best_name, best_s = candidates[0], float("inf")
    for name in candidates:
        for _ in range(3):
            t0 = time.perf_counter()
            scan(header, 0, 4096, 0, name)
            elapsed_s = time.perf_counter() - t0
            if elapsed_s < best_s:
                best_name, best_s = name, elapsed_s
    return best_name


# hashlib already runs one SHA-256 at C speed; argument checks are shared with the reference
sha256d = _pure.sha256d


def scan(header, start, count, target, kernel=None):
    """Nonces in [start, start + count) whose sha256d, read little-endian, is <= target.

    `kernel` forces one of KERNELS (default: IMPLEMENTATION).
    """
    cdef bytes raw
    cdef bytes target_bytes
    cdef _Kernel k
    cdef sha256d_job job
    cdef uint32_t target_words[8]
    cdef uint32_t *buf
    cdef uint64_t pos, end, step, found, j
    cdef int i

    raw, start, count, target = _pure.scan_arguments(header, start, count, target)
    if kernel is None:
        kernel = IMPLEMENTATION
    try:
        k = _FUNCTIONS[kernel]
    except (KeyError, TypeError):
        raise ValueError(
            f"kernel must be one of {', '.join(KERNELS)} on this CPU, got {kernel!r}"
        ) from None

    result = []
    if count == 0:
        return result
    target_bytes = target.to_bytes(32, "little")
    for i in range(8):
        target_words[i] = int.from_bytes(target_bytes[4 * i:4 * i + 4], "little")
    sha256d_job_init(&job, raw, target_words)

    pos = start
    end = <uint64_t>start + <uint64_t>count
    step = min(<uint64_t>count, CHUNK)
    buf = <uint32_t *>malloc(step * sizeof(uint32_t))
    if buf == NULL:
        raise MemoryError()
    try:
        while pos < end:
            step = min(end - pos, CHUNK)
            with nogil:
                found = k.fn(&job, <uint32_t>pos, step, buf)
            for j in range(found):
                result.append(buf[j])
            pos += step
            if pos < end:
                PyErr_CheckSignals()  # Ctrl-C during a long scan from the main thread
    finally:
        free(buf)
    return result


IMPLEMENTATION = _pick_kernel()
"""The kernel `scan` uses by default."""
