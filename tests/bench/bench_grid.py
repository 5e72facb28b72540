"""Grid-link latency on loopback (a script, not a test).

Run: `.venv/bin/python tests/bench/bench_grid.py [--commands 1000] [--tick-s 0.1] [--no-wake]
[--pll-commands 200] [--only ack|pll]`.

A real Mosquitto, a device (GridLink + GridSession with a recording sink) served by a control
loop that sleeps one control tick unless the link wakes it (as agent.control.runtime does), and an
operator that publishes signed setpoints one after the other (Response Topic + Correlation Data)
and times publish -> ack received. Printed: p50, p90, p99 and max over N commands, and whether
p99 meets the 50 ms budget. `--no-wake` shows what the tick alone would cost.

Command publish -> first PLL0 write on the chain port (budget p99 <= 100 ms) runs the whole
agent (`python -m agent agent`, a subprocess) on an in-process emulated hash board whose chain
reports each PLL0 write (`AsicChain.on_write`); see `measure_pll_latency()`. A few minutes.
"""

from __future__ import annotations

import argparse
import math
import queue
import random
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import cbor2
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.grid import cose
from agent.grid.link import GridLink, LinkSettings
from agent.grid.session import GridPolicy, GridSession
from agent.site.client import BrokerOptions, Operator
from agent.site.signer import CommandSigner, kid_for
from firmware_bridge import asic
from hil.broker import Mosquitto
from hil.hashboard import HashBoardEmulator
from tests.support.agent_process import start_agent, stop_process
from tests.support.grid_fakes import RecordingSink


def control_loop(session: GridSession, link: GridLink, stop: threading.Event, tick_s: float,
                 wake: bool) -> None:
    woken = threading.Event()
    link.on_inbound = woken.set
    while not stop.is_set():
        due = session.service()
        if wake:
            woken.wait(min(due, tick_s))
            woken.clear()
        else:
            time.sleep(tick_s)


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100.0 * (len(ordered) - 1)))]


def measure_ack_latency(broker: Mosquitto, folder: Path, n: int, tick_s: float,
                        wake: bool) -> list[float]:
    key = Ed25519PrivateKey.generate()
    link = GridLink(LinkSettings(broker.url, "site-a", "dev-1", state_dir=str(folder / "dev")))
    session = GridSession(link, RecordingSink(eta_s=None), {b"bench": key.public_key()},
                          folder / "dev", lambda: {},
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
    signer = CommandSigner(key, "bench")
    op = Operator(BrokerOptions(broker.url), signer).connect()
    reply = "gridminer/site-a/dev-1/ack/bench"
    op.subscribe([reply])
    latencies: list[float] = []
    try:
        for i in range(n + 20):  # the first 20 warm up
            signed = signer.build("site-a", "dev-1", "setpoint", seq=i + 1,
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
        loop.join(5)
        link.stop()
    return latencies


class PllWrites:
    """time.monotonic() and clock (MHz) of every PLL0 write the emulated chips act on (the
    chain's `on_write` hook, called from the emulation thread as the bytes are taken from the
    chain pty)."""

    def __init__(self, family: str) -> None:
        self.family = family
        self.times: list[float] = []
        self.freqs_mhz: list[float] = []
        self.cond = threading.Condition()

    def __call__(self, reg: int, value: int, chip: int | None, now_s: float) -> None:
        if reg == asic.REG_PLL0:
            with self.cond:
                self.times.append(time.monotonic())
                self.freqs_mhz.append(asic.pll_freq_mhz(self.family, value))
                self.cond.notify_all()

    def first_after(self, t0: float, f0_mhz: float, up: bool,
                    timeout_s: float) -> tuple[float | None, int]:
        """The first write after `t0` that moves the clock from `f0_mhz` the commanded way, and
        how many writes came after `t0` before it (moves the command did not ask for)."""
        deadline = time.monotonic() + timeout_s
        with self.cond:
            while True:
                after = [(t, f) for t, f in zip(self.times[-64:], self.freqs_mhz[-64:], strict=True)
                         if t >= t0]
                for k, (t, f) in enumerate(after):
                    if (f > f0_mhz) if up else (f < f0_mhz):
                        return t, k
                left = deadline - time.monotonic()
                if left <= 0:
                    return None, len(after)
                self.cond.wait(left)

    def wait_quiet(self, quiet_s: float, timeout_s: float) -> bool:
        """Until no PLL0 write for `quiet_s` (the previous ramp is over)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.cond:
                last = self.times[-1] if self.times else 0.0
            idle = time.monotonic() - last
            if idle >= quiet_s:
                return True
            time.sleep(quiet_s - idle)
        return False


def _next_message(op: Operator, want: Any, timeout_s: float) -> tuple[str, Any, Any, float]:
    deadline = time.monotonic() + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        try:
            topic, payload, props, t_rx = op.messages.get(timeout=left)
        except queue.Empty:
            break
        try:
            msg = cbor2.loads(payload)
        except (ValueError, cbor2.CBORDecodeError):
            continue
        if want(topic, msg):
            return topic, msg, props, t_rx
    raise SystemExit(f"timed out after {timeout_s:.0f} s waiting for the agent")


def measure_pll_latency(broker: Mosquitto, folder: Path, n: int, quiet_s: float = 0.25,
                        period_s: float = 0.1, levels: tuple[float, float] = (0.4, 0.6),
                        ) -> tuple[list[float], dict]:
    """Command publish -> first PLL0 write (register 0x08) the emulated chips receive.

    The agent runs as a subprocess exactly as a user starts it (`python -m agent agent ...`) on
    an in-process HashBoardEmulator (4 x BM1370) whose chain reports each PLL0 write; once it
    mines, N signed setpoints alternate between two levels (fractions of min_w..max_w) so each
    moves the chain frequency. Before each publish the chain has had no PLL write for `quiet_s`
    (the previous ramp is over), then a random part of the agent's control period `period_s`
    passes; the command's write is the first after the publish that moves
    the clock its way (the governor's trims the other way are counted and skipped).
    CLOCK_MONOTONIC is system-wide, so publish and write times compare across processes."""
    key = Ed25519PrivateKey.generate()
    kid = kid_for(key.public_key())
    pub = folder / "op.pub.pem"
    pub.write_bytes(cose.public_pem(key.public_key()))
    writes = PllWrites("BM1370")
    emu = HashBoardEmulator(family="BM1370", chips=4, seed=1)
    emu.chain.on_write = writes
    agent_log = folder / "agent.err"
    with emu, open(agent_log, "w") as err:
        agent = start_agent(folder, emu.chain_path, emu.board_path, broker.url, pub, kid, err,
                            "--nonce-difficulty", "2**-24")
        try:
            return _drive_setpoints(emu, writes, broker, key, kid, n, quiet_s, period_s, levels)
        finally:
            stop_process(agent, 20)
            if agent.returncode not in (0, -signal.SIGTERM):
                print(agent_log.read_text()[-2000:], file=sys.stderr)


def _drive_setpoints(emu: HashBoardEmulator, writes: PllWrites, broker: Mosquitto,
                     key: Ed25519PrivateKey, kid: str, n: int, quiet_s: float, period_s: float,
                     levels: tuple[float, float]) -> tuple[list[float], dict]:
    signer = CommandSigner(key, kid)
    op = Operator(BrokerOptions(broker.url), signer).connect()
    reply = "gridminer/s1/d1/ack/bench"
    latencies: list[float] = []
    rng = random.Random(7)
    info: dict[str, Any] = {"freqs_mhz": ([], []), "ack_ms": [], "ack_to_pll_ms": [],
                            "write_times": [], "other_writes": 0, "up_ms": [], "down_ms": []}
    try:
        op.subscribe(["gridminer/s1/d1/status", "gridminer/s1/d1/telemetry", reply])
        _, status, _, _ = _next_message(op, lambda t, m: t.endswith("/status")
                                     and m.get("state") == "online", 30)
        caps = status["caps"]
        _next_message(op, lambda t, m: t.endswith("/telemetry") and m.get("mode") == "mining",
                      60)
        span = caps["max_w"] - caps["min_w"]
        watts = [int(caps["min_w"] + f * span) for f in levels]
        info["levels_w"] = watts
        warmup = 4
        for i in range(n + warmup):
            if not writes.wait_quiet(quiet_s, 20):
                raise SystemExit("the chain frequency never settled (PLL writes keep coming)")
            # an operator publishes at any moment of the agent's control period; right after the
            # quiet time would always be the same moment (the last write came at a tick)
            time.sleep(rng.uniform(0.0, period_s))
            f0 = emu.chain.freqs_mhz()[0]
            if i >= warmup:
                info["freqs_mhz"][1 - i % 2].append(f0)  # settled at the other level
            signed = signer.build("s1", "d1", "setpoint", seq=i + 1, power_w=watts[i % 2],
                                  validity_s=300)
            t0 = time.monotonic()
            op.publish_command(signed, reply, i.to_bytes(4, "big"))
            t1, others = writes.first_after(t0, f0, i % 2 == 1, 5)
            info["other_writes"] += others
            if t1 is None:
                raise SystemExit(f"setpoint {i} ({watts[i % 2]} W) wrote no PLL within 5 s")
            _, ack, _, t_ack = _next_message(op, lambda t, m: t == reply, 5)
            if ack.get("result") != "accepted":
                raise SystemExit(f"setpoint {i} not accepted: {ack}")
            if i >= warmup:
                latencies.append((t1 - t0) * 1000)
                info["up_ms" if i % 2 else "down_ms"].append((t1 - t0) * 1000)
                info["ack_ms"].append((t_ack - t0) * 1000)
                info["ack_to_pll_ms"].append((t1 - t_ack) * 1000)
                info["write_times"].append(t1)
    finally:
        op.close()
    return latencies, info


def phase_spread_ms(times: list[float], period_s: float) -> float:
    """Circular standard deviation of `times` modulo `period_s` (ms); a fixed-period loop's
    actions share one phase, events at random times spread over the whole period."""
    angles = [2 * math.pi * (t % period_s) / period_s for t in times]
    r = math.hypot(statistics.fmean(map(math.cos, angles)), statistics.fmean(map(math.sin, angles)))
    return math.sqrt(-2 * math.log(max(r, 1e-12))) * period_s / (2 * math.pi) * 1000


def report(name: str, lat: list[float], budget_ms: float) -> None:
    p50, p90, p99 = (percentile(lat, p) for p in (50, 90, 99))
    print(f"  p50 {p50:.2f} ms  p90 {p90:.2f} ms  p99 {p99:.2f} ms  max {max(lat):.2f} ms  "
          f"mean {statistics.fmean(lat):.2f} ms  count {len(lat)}")
    print(f"  {name} p99 <= {budget_ms:.0f} ms: {'yes' if p99 <= budget_ms else 'NO'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commands", type=int, default=1000, help="setpoints for the ack figure")
    parser.add_argument("--tick-s", type=float, default=0.1, help="control tick of the loop")
    parser.add_argument("--no-wake", action="store_true", help="serve commands on ticks only")
    parser.add_argument("--pll-commands", type=int, default=200,
                        help="setpoints for the PLL figure (whole agent + emulator)")
    parser.add_argument("--only", choices=("ack", "pll"), help="measure one figure")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, Mosquitto() as broker:
        if args.only != "pll":
            lat = measure_ack_latency(broker, Path(tmp), args.commands, args.tick_s,
                                      not args.no_wake)
            print(f"command publish -> ack ({len(lat)} setpoints, loopback Mosquitto, control "
                  f"tick {args.tick_s * 1000:.0f} ms, wake {'off' if args.no_wake else 'on'}):")
            report("ack", lat, 50)
        if args.only != "ack":
            lat, info = measure_pll_latency(broker, Path(tmp), args.pll_commands)
            fmin = [min(f) for f in info["freqs_mhz"]]
            fmax = [max(f) for f in info["freqs_mhz"]]
            print(f"command publish -> first PLL0 write on the chain port ({len(lat)} setpoints "
                  f"alternating {info['levels_w'][0]} / {info['levels_w'][1]} W, `python -m "
                  f"agent agent` on 4 x BM1370 emulated; clocks settled at "
                  f"{fmin[0]:.0f}-{fmax[0]:.0f} / {fmin[1]:.0f}-{fmax[1]:.0f} MHz):")
            report("PLL", lat, 100)
            print("  where it goes: publish -> ack (same runs) "
                  f"p50 {percentile(info['ack_ms'], 50):.2f} / p99 "
                  f"{percentile(info['ack_ms'], 99):.2f} ms; ack -> PLL0 write p50 "
                  f"{percentile(info['ack_to_pll_ms'], 50):.2f} / p99 "
                  f"{percentile(info['ack_to_pll_ms'], 99):.2f} ms")
            print(f"  by direction: up p50 {percentile(info['up_ms'], 50):.2f} / p99 "
                  f"{percentile(info['up_ms'], 99):.2f} ms, down p50 "
                  f"{percentile(info['down_ms'], 50):.2f} / p99 "
                  f"{percentile(info['down_ms'], 99):.2f} ms")
            print(f"  writes after a publish that moved the clock the other way (skipped): "
                  f"{info['other_writes']}")
            print(f"  PLL0 writes vs a {args.tick_s * 1000:.0f} ms grid: phase spread "
                  f"{phase_spread_ms(info['write_times'], args.tick_s):.1f} ms (a few ms: the "
                  "writes follow the agent's control tick; tens of ms: they do not)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
