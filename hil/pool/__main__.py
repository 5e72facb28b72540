"""`python -m hil.pool`: the lab pool on its own, printing its counts as it goes."""

from __future__ import annotations

import argparse
import json
import logging
import time

from hil.pool.server import LabPool


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hil.pool",
                                     description="a Stratum V1 pool for the lab")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3333)
    parser.add_argument("--difficulty", type=float, default=1.0)
    parser.add_argument("--refuse-version-rolling", action="store_true")
    parser.add_argument("--block-interval-s", type=float, default=600.0)
    parser.add_argument("--job-interval-s", type=float, default=30.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    pool = LabPool(args.difficulty, configure="refuse" if args.refuse_version_rolling else "grant",
                   host=args.host, port=args.port).start()
    print(json.dumps({"url": pool.url}), flush=True)
    next_block = time.monotonic() + args.block_interval_s
    try:
        while True:
            time.sleep(args.job_interval_s)
            if time.monotonic() >= next_block:
                next_block += args.block_interval_s
                pool.new_block()
            else:
                pool.new_job()
            print(json.dumps(dict(pool.counts)), flush=True)
    except KeyboardInterrupt:
        return 0
    finally:
        pool.stop()


if __name__ == "__main__":
    raise SystemExit(main())
