"""Grid-link latency on loopback (a script, not a test).

Run: `.venv/bin/python tests/bench/bench_grid.py [--commands 1000] [--tick-s 0.1] [--no-wake]`.

A real Mosquitto, a device (GridLink + GridSession with a recording sink) served by a control
loop that sleeps one control tick unless the link wakes it (as agent.runtime does), and an
operator that publishes signed setpoints one after the other (Response Topic + Correlation Data)
and times publish -> ack received. Printed: p50, p90, p99 and max over N commands, and whether
p99 meets the 50 ms budget. `--no-wake` shows what the tick alone would cost.

Command publish -> first PLL write on the chain port needs the whole agent (runtime + emulator):
`measure_pll_latency()` is the hook; it prints "not measured" until that rig is wired here.
"""

from __future__ import annotations

import argparse
import queue
import random
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import cbor2
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.grid import GridPolicy, GridSession
from agent.gridlink import GridLink, LinkSettings
from agent.operator import BrokerOptions, CommandSigner, Operator
from hil.broker import Mosquitto

CAPS = {"min_w": 100, "max_w": 3000, "ramp_max_w_s": 500, "chips": 4, "chip_model": "BM1370",
        "hashrate_max_ghs": 5000.0}


@dataclass
class Decision:
    applied_w: float
    limited_by: str | None = None
    eta_s: float | None = None


class Sink:
    def apply(self, op: str, power_w: Any, ramp_w_s: Any) -> Decision:
        return Decision(float(power_w or 0.0))

    def caps(self) -> dict:
        return CAPS


def control_loop(session: GridSession, link: GridLink, stop: threading.Event, tick_s: float,
                 wake: bool) -> None:
    while not stop.is_set():
        due = session.service()
        if wake:
            link.wakeup.wait(min(due, tick_s))
            link.wakeup.clear()
        else:
            time.sleep(tick_s)


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100.0 * (len(ordered) - 1)))]


def measure_ack_latency(broker: Mosquitto, folder: Path, n: int, tick_s: float,
                        wake: bool) -> list[float]:
    key = Ed25519PrivateKey.generate()
    link = GridLink(LinkSettings(broker.url, "site-a", "dev-1", state_dir=str(folder / "dev")))
    session = GridSession(link, Sink(), {b"bench": key.public_key()}, folder / "dev", lambda: {},
                          GridPolicy(restart_spread_s=0.0, telemetry_period_s=1.0),
                          rng=random.Random(1))
    stop = threading.Event()
    link.start()
    loop = threading.Thread(target=control_loop, args=(session, link, stop, tick_s, wake),
                            daemon=True)
    loop.start()
    deadline = time.monotonic() + 5
    while not link.connected and time.monotonic() < deadline:
        time.sleep(0.01)
    op = Operator(BrokerOptions(broker.url), CommandSigner(key, "bench")).connect()
    reply = "gridminer/site-a/dev-1/ack/bench"
    op.subscribe([reply])
    latencies: list[float] = []
    try:
        for i in range(n + 20):  # the first 20 warm up
            signed = op.signer.build("site-a", "dev-1", "setpoint", seq=i + 1,
                                     power_w=1000 + (i % 2) * 500, validity_s=60)
            corr = i.to_bytes(4, "big")
            t0 = time.perf_counter()
            op.publish_command(signed, reply, corr)
            while True:
                try:
                    _, payload, props, _ = op.messages.get(timeout=5)
                except queue.Empty:
                    raise SystemExit(f"no ack for command {i}") from None
                if getattr(props, "CorrelationData", None) == corr:
                    break
            dt_ms = (time.perf_counter() - t0) * 1000
            ack = cbor2.loads(payload)
            if ack.get("result") != "accepted":
                raise SystemExit(f"command {i} not accepted: {ack}")
            if i >= 20:
                latencies.append(dt_ms)
    finally:
        op.close()
        stop.set()
        link.wakeup.set()
        loop.join(5)
        link.stop()
    return latencies


def measure_pll_latency() -> str:
    """Command publish -> first PLL register write on the chain port (needs agent.runtime with
    the emulator's chain port; to be wired when `gridminer agent` runs in the rig)."""
    return "not measured (needs the agent runtime on the emulator's chain port)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commands", type=int, default=1000)
    parser.add_argument("--tick-s", type=float, default=0.1, help="control tick of the loop")
    parser.add_argument("--no-wake", action="store_true", help="serve commands on ticks only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, Mosquitto() as broker:
        lat = measure_ack_latency(broker, Path(tmp), args.commands, args.tick_s,
                                  not args.no_wake)
    p50, p90, p99 = (percentile(lat, p) for p in (50, 90, 99))
    print(f"command publish -> ack ({len(lat)} setpoints, loopback Mosquitto, control tick "
          f"{args.tick_s * 1000:.0f} ms, wake {'off' if args.no_wake else 'on'}):")
    print(f"  p50 {p50:.2f} ms  p90 {p90:.2f} ms  p99 {p99:.2f} ms  max {max(lat):.2f} ms  "
          f"mean {statistics.fmean(lat):.2f} ms")
    print(f"  p99 <= 50 ms: {'yes' if p99 <= 50 else 'NO'}")
    print(f"command publish -> first PLL write: {measure_pll_latency()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
