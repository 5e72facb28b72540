"""The site controller at the seeds' scale, in process (a script, not a test).

Run: `.venv/bin/python tests/bench/bench_site.py [--devices 1300] [--site-w 1500000]`.

The real SiteController (GridSession, roster, trim, allocator, order book, Ed25519 signing) on a
FakeClock, with its two MQTT sides faked (tests/support/site_sim.py): N simulated devices of
mixed ratings (min 30 % of max, ramp 2 x max per second as the agent's default, 17..34 J/TH)
summing to the site rating, each
publishing CBOR telemetry once a second, spread over the second. The site settles at 20 % of its
rating, then the operator steps it to 80 %. Printed: the controller's CPU per control tick
(mean, p99; `step()` alone: telemetry decoding, dispatch, signing) and per device, the time to
90 % of the step (true fleet power and the site's measured power), the largest site power
change in a tick against the ramp limit, and commands per second during the step and in steady
state. Broker and network are not in these figures.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.support.site_sim import TICK_S, FakeFleet, SimDevice, SiteSim


def make_fleet(n: int, site_w: float, ramp_frac: float,
               rng: random.Random) -> dict[str, SimDevice]:
    ratings = [rng.uniform(900, 1400) for _ in range(n)]
    scale = site_w / sum(ratings)
    devices = {}
    for i, rating in enumerate(ratings):
        max_w = round(rating * scale)
        devices[f"m{i:04d}"] = SimDevice(round(0.3 * max_w), max_w, round(ramp_frac * max_w),
                                         rng.uniform(17, 34), max_w, max_w)
    return devices


class Timed:
    """`controller.step` with its CPU time recorded (the simulated fleet's work left out)."""

    def __init__(self, sim: SiteSim) -> None:
        self.step = sim.controller.step
        self.cpu: list[float] = []
        sim.controller.step = self  # type: ignore[method-assign]

    def __call__(self, now_s: float | None = None) -> float:
        start = time.process_time()
        try:
            return self.step(now_s)
        finally:
            self.cpu.append(time.process_time() - start)


def run_timed(sim: SiteSim, seconds: float, sent: list[int]) -> None:
    for _ in range(round(seconds / TICK_S)):
        before = sim.fleet.published
        sim.run(TICK_S)
        sent.append(sim.fleet.published - before)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1300)
    parser.add_argument("--site-w", type=float, default=1_500_000)
    parser.add_argument("--device-ramp", type=float, default=2.0, metavar="FRAC",
                        help="each device's ramp limit per second, as a fraction of its max_w")
    args = parser.parse_args()
    rng = random.Random(1)
    with tempfile.TemporaryDirectory() as tmp:
        fleet = FakeFleet(make_fleet(args.devices, args.site_w, args.device_ramp, rng))
        sim = SiteSim(Path(tmp), fleet=fleet, ramp_w_s=None)
        timed = Timed(sim)
        sim.online()
        ramp = sim.controller.target.current_caps.ramp_max_w_s
        low, high = 0.2 * args.site_w, 0.8 * args.site_w
        sim.send(power_w=int(low))
        sim.run(30.0)
        timed.cpu.clear()
        sent: list[int] = []
        run_timed(sim, 120.0, sent)  # steady at 20 %: two rounds of refreshes
        steady_sent = sum(sent) / 120.0
        sim.powers.clear()
        sent.clear()
        sim.send(power_w=int(high))
        mark = low + 0.9 * (high - low)
        true_s = measured_s = None
        ticks = 0
        while ticks * TICK_S < 30.0:
            run_timed(sim, TICK_S, sent)
            ticks += 1
            if true_s is None and fleet.power_w >= mark:
                true_s = ticks * TICK_S
            measured = sim.controller.measured_w
            if measured_s is None and measured is not None and measured >= mark:
                measured_s = ticks * TICK_S
        step_sent = sum(sent[: round(5 / TICK_S)]) / 5.0
        steps = [abs(b - a) for a, b in zip(sim.powers, sim.powers[1:], strict=False)]
        error = abs(fleet.power_w - high) / args.site_w * 100
        all_cpu = timed.cpu
        p99 = sorted(all_cpu)[int(0.99 * (len(all_cpu) - 1))]
        print(f"site controller, {args.devices} devices, {args.site_w / 1e6:.2f} MW, "
              f"ramp limit {ramp / 1000:.0f} kW/s (the devices' together), tick {TICK_S} s")
        print(f"  CPU per tick: mean {statistics.mean(all_cpu) * 1000:.1f} ms, p99 "
              f"{p99 * 1000:.1f} ms ({statistics.mean(all_cpu) / TICK_S * 100:.1f} % of one "
              f"core; {statistics.mean(all_cpu) / TICK_S / args.devices * 1e6:.1f} us/s per "
              "device)")
        print(f"  step 20 % -> 80 %: 90 % reached in {true_s} s (fleet power), "
              f"{measured_s} s (site telemetry sum); error after 30 s {error:.3f} % of rating")
        print(f"  largest change in a tick {max(steps) / 1000:.1f} kW, ramp limit x tick "
              f"{ramp * TICK_S / 1000:.1f} kW")
        print(f"  commands/s: steady {steady_sent:.1f}, first 5 s of the step {step_sent:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
