"""`gridminer bench`: SHA-256d throughput of every kernel, one thread and all cores.

Each kernel scans the genesis block header at the difficulty-1 target for `--seconds`, first in one
thread, then in `--threads` threads calling `scan` on disjoint nonce ranges (threads only add up if
the kernel releases the GIL). A plain hashlib loop runs in the same process as the yardstick.
Figures are best-of `--repeat` runs, because other processes share the cores.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import os
import platform
import threading
import time
from collections.abc import Callable

from agent import hashing

GENESIS_HEADER = bytes.fromhex(
    "01000000"
    + "00" * 32
    + "3ba3edfd7a7b12b27ac72c3e67768f617fc81bc3888a51323a9fb8aa4b1e5e4a"
    + "29ab5f49"
    + "ffff001d"
    + "1dac2b7c"
)
ScanFn = Callable[[bytes, int, int, int], list[int]]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--seconds", type=float, default=1.5, help="duration of each measurement (default 1.5)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="threads for the all-cores figure (default: the CPU count)",
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs per figure, the best is shown (default 3)"
    )
    parser.add_argument(
        "--kernel",
        action="append",
        metavar="NAME",
        help="measure only this kernel (repeatable); default: every usable one",
    )


def hashlib_loop_hs(seconds: float) -> float:
    """Hashes per second of the obvious Python loop: hashlib twice per nonce, int compare."""
    sha256 = hashlib.sha256
    prefix = GENESIS_HEADER[:76]
    target = hashing.DIFF1_TARGET
    done = 0
    hits = 0
    t0 = time.perf_counter()
    deadline = t0 + seconds
    while True:
        for nonce in range(done, done + 4096):
            digest = sha256(sha256(prefix + nonce.to_bytes(4, "little")).digest()).digest()
            if int.from_bytes(digest, "little") <= target:
                hits += 1
        done += 4096
        now = time.perf_counter()
        if now >= deadline:
            return done / (now - t0)


def scan_hs(scan: ScanFn, seconds: float, threads: int) -> float:
    """Hashes per second of `threads` threads, each scanning its own share of nonce space."""
    region = (1 << 32) // threads
    barrier = threading.Barrier(threads + 1)
    done = [0] * threads
    target = hashing.DIFF1_TARGET

    def worker(index: int) -> None:
        nonce = index * region
        limit = nonce + region
        chunk = 1024
        barrier.wait()
        deadline = time.perf_counter() + seconds
        while True:
            if nonce + chunk > limit:
                nonce = index * region
            t0 = time.perf_counter()
            scan(GENESIS_HEADER, nonce, chunk, target)
            now = time.perf_counter()
            nonce += chunk
            done[index] += chunk
            if now >= deadline:
                return
            if now - t0 < 0.05 and chunk < region // 4:
                chunk *= 2

    pool = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)]
    for thread in pool:
        thread.start()
    barrier.wait()
    t0 = time.perf_counter()
    for thread in pool:
        thread.join()
    return sum(done) / (time.perf_counter() - t0)


def _best(measure: Callable[[], float], repeat: int) -> float:
    return max(measure() for _ in range(max(1, repeat)))


def run(args: argparse.Namespace) -> int:
    available = hashing.kernels()
    names = args.kernel or list(available)
    unknown = [name for name in names if name not in available]
    if unknown:
        print(f"unknown kernel(s) {', '.join(unknown)}; usable here: {', '.join(available)}")
        return 2
    threads = max(1, args.threads)
    seconds = max(0.05, args.seconds)
    print(
        f"gridminer bench: {platform.machine()}, {os.cpu_count()} CPUs, "
        f"default kernel {hashing.IMPLEMENTATION!r}, compiled module "
        f"{'loaded' if hashing.COMPILED else 'NOT loaded'}; best of {args.repeat} x {seconds:g} s"
    )
    base_hs = _best(functools.partial(hashlib_loop_hs, seconds), args.repeat)
    print(f"{'hashlib loop':<14} {base_hs / 1e6:8.3f} MH/s  (1 thread)")
    many = f"{threads} thread{'s' if threads > 1 else ''}"
    print(f"{'kernel':<14} {'1 thread':>13} {many:>13} {'scaling':>8} {'x hashlib':>10}")
    for name in names:
        scan = available[name]
        one_hs = _best(functools.partial(scan_hs, scan, seconds, 1), args.repeat)
        many_hs = (
            _best(functools.partial(scan_hs, scan, seconds, threads), args.repeat)
            if threads > 1
            else one_hs
        )
        print(
            f"{name:<14} {one_hs / 1e6:8.2f} MH/s {many_hs / 1e6:8.2f} MH/s "
            f"{many_hs / one_hs:7.2f}x {one_hs / base_hs:9.1f}x"
        )
    return 0
