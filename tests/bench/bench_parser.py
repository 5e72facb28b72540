"""Reply-parser throughput on CPython: decoded nonce replies per second on one core.

Run: .venv/bin/python tests/bench/bench_parser.py [--family BM1370] [--replies 200000]
Prints figures only (no pass/fail); the target is >= 200,000 replies/s.
"""

import argparse
import random
import time

from firmware_bridge import asic
from firmware_bridge.chips import PROFILES


def stream(family, count, seed=1):
    p = PROFILES[family]
    rnd = random.Random(seed)
    frames = []
    for _ in range(4096):
        sc = rnd.randrange(p.small_cores_per_core)
        vb = (rnd.getrandbits(16) << 13) if p.version_rolling else 0
        frames.append(asic.nonce_reply(family, rnd.getrandbits(32),
                                       rnd.randrange(0, 128, p.job_id_step), sc, vb))
    data = b"".join(frames)
    reps = count // len(frames) + 1
    return data * reps, len(frames) * reps


def run(family, count, chunk):
    data, n = stream(family, count)
    parser = asic.ResponseParser(family)
    got = 0
    t0 = time.perf_counter()
    for i in range(0, len(data), chunk):
        got += len(parser.feed(data[i : i + chunk]))
    got += len(parser.flush())
    dt = time.perf_counter() - t0
    return got, n, dt


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", default="all", choices=["all", *PROFILES])
    ap.add_argument("--replies", type=int, default=200_000)
    ap.add_argument("--chunk", type=int, default=4096, help="bytes per feed() call")
    args = ap.parse_args()
    families = list(PROFILES) if args.family == "all" else [args.family]
    for family in families:
        got, n, dt = run(family, args.replies, args.chunk)
        print(f"{family}: {got}/{n} nonce replies in {dt:.3f} s = {got / dt:,.0f} replies/s "
              f"(chunk {args.chunk} B)")


if __name__ == "__main__":
    main()
