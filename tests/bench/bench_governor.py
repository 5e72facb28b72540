"""Closed-loop figures of the governor (a script, not a test).

Run: `.venv/bin/python tests/bench/bench_governor.py [--seed N]`.

Two plants: a simple first-order one of this file, and the emulator's physics (`hil.plant`) when
it imports, both behind a chain that steps its frequency (6.25 MHz every 4 ms) and a board link
that reports power one sample late. Printed: step response (100 % -> 30 % -> 100 % of max
power: time to stay within +-2 % of max, overshoot), measured ramp rate against the limit,
heatwave (peak chip temperature against the hard limit, final derated power), trip and return.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import itertools

from agent.chain.board import BoardSample as Sample
from agent.clock import FakeClock
from agent.config import config_from_mapping
from agent.control.envelope import Actuation
from agent.control.governor import Governor

PERIOD_S = 0.1
SUBSTEP_S = 0.004  # the chain driver's frequency step interval



class SimplePlant:
    """Lumped one-chip BM1370 board: f V^2 power with V^3 leakage, one thermal mass."""

    max_power_w = 20.0

    def __init__(self, seed: int = 1, gain: float = 1.08, heat_cap_j_k: float = 25.0) -> None:
        self.rng = random.Random(seed)
        self.gain, self.heat_cap = gain, heat_cap_j_k
        self.ambient_c, self.temp_c = 25.0, 25.0
        self.freq, self.vcore, self.fan, self.on = 0.0, 0.0, 100.0, False
        self.power_w = 0.0

    def step(self, dt: float) -> None:
        chip = 0.0
        if self.on:
            v = self.vcore / 1000.0
            k = 16.07 * 0.9 / (525 * 1.15**2)
            leak = 1.607 * (v / 1.15) ** 3 * math.exp((self.temp_c - 60) / 35)
            chip = self.gain * (k * self.freq * v * v + leak)
        self.power_w = chip / 0.9 + 1.3 + 1.0 * (self.fan / 100) ** 3
        r = 8.0 + (1.4 - 8.0) * self.fan / 100.0
        self.temp_c += dt * (chip - (self.temp_c - self.ambient_c) / r) / self.heat_cap

    def read(self, t: float) -> Sample:
        n = self.rng.gauss
        return Sample(t, [self.temp_c + n(0, 0.15)] if self.on else [None],
                      (self.ambient_c + self.temp_c) / 2 + n(0, 0.1), self.ambient_c + 15,
                      5.0, self.power_w / 5.0, self.power_w * (1 + n(0, 0.003)), 60 * self.fan,
                      self.fan, self.vcore, self.on)


class HilPlant:
    """`hil.plant.Plant` (the emulator's physics) behind the same small interface."""

    max_power_w = 19.0  # what one BM1370 reaches at 525 MHz / 1150 mV in this physics

    def __init__(self, seed: int = 1) -> None:
        from hil.plant import BoardParams, ChipPhysics, Plant

        self.p = Plant(ChipPhysics.for_family("BM1370"), BoardParams.for_chips(1),
                       random.Random(seed))
        self.freq, self.vcore, self.fan, self.on = 0.0, 0.0, 100.0, False

    @property
    def ambient_c(self) -> float:
        return self.p.ambient_c

    @ambient_c.setter
    def ambient_c(self, value: float) -> None:
        self.p.ambient_c = value

    @property
    def temp_c(self) -> float:
        return max(self.p.chip_temp_c)

    @property
    def power_w(self) -> float:
        return self.p.board_power_w

    def step(self, dt: float) -> None:
        self.p.chain_powered, self.p.vcore_set_mv, self.p.fan_pct = self.on, self.vcore, self.fan
        self.p.step(dt, [self.freq], [True])

    def read(self, t: float) -> Sample:
        s = self.p.sensors
        temps: list[float | None] = [c / 10.0 for c in s.chip_temps_dc] if self.on else [None]
        return Sample(t, temps, s.board_temp_dc / 10, s.vr_temp_dc / 10, s.vin_mv / 1000,
                      s.iin_ma / 1000, s.power_mw / 1000, s.fan_rpm, self.fan, s.vcore_mv,
                      self.on)


class Rig:
    """Governor + chain stepping + one-sample-late board link + a plant."""

    def __init__(self, plant, **envelope: float) -> None:
        env = {"max_power_w": plant.max_power_w, "ramp_max_w_s": 100.0, "trip_hold_s": 10.0}
        env.update(envelope)
        self.cfg = config_from_mapping({"chain": {"port": "x"}, "board": {"port": "y"},
                                        "envelope": env})
        self.clock = FakeClock(0.0)
        self.gov = Governor(self.cfg, self.clock)
        self.plant = plant
        self.cmd_freq = 0.0
        self.pending: Sample | None = None
        self.log: list[tuple[float, float, float, Actuation]] = []  # t, true W, chip C, out

    def run(self, seconds: float, on_tick=None) -> None:
        for _ in range(round(seconds / PERIOD_S)):
            now = self.clock.monotonic()
            sample, self.pending = self.pending, self.plant.read(now)
            if on_tick is not None:
                sample = on_tick(sample)
            out = self.gov.update(now, sample)
            p = self.plant
            if out.chain_power_on and not p.on:
                p.freq = out.freq_mhz
            p.on, p.fan = out.chain_power_on, out.fan_pct
            p.vcore = out.vcore_mv if out.chain_power_on else 0.0
            self.cmd_freq = out.freq_mhz
            for _ in range(round(PERIOD_S / SUBSTEP_S)):
                d = self.cmd_freq - p.freq
                p.freq += max(-6.25, min(6.25, d))
                p.step(SUBSTEP_S)
            self.clock.advance(PERIOD_S)
            self.log.append((now, p.power_w, p.temp_c, out))


def settle_time(log, t0: float, target: float, band: float) -> float:
    """Seconds after t0 from which the true power stays within target +- band."""
    last_out = t0
    for t, w, _, _ in log:
        if t >= t0 and abs(w - target) > band:
            last_out = t + PERIOD_S
    return last_out - t0


def bench_steps(name: str, make_plant) -> None:
    rig = Rig(make_plant())
    rig.run(40.0)  # warm up at the default target (max power)
    max_w = rig.gov.max_power_w
    for share in (0.3, 1.0, 0.3, 1.0):
        target = share * max_w
        t0 = rig.clock.monotonic()
        before = rig.log[-1][1]
        rig.gov.set_target(target)
        rig.run(5.0)
        seg = [w for t, w, _, _ in rig.log if t >= t0]
        over = max(seg) - target if target > before else target - min(seg)
        ts = settle_time(rig.log, t0, target, 0.02 * max_w)
        print(f"  {name:6s} step {before:5.1f} -> {target:5.1f} W: within +-2% of max after "
              f"{ts:4.2f} s, overshoot {max(0.0, over):4.2f} W, final {seg[-1]:5.2f} W, "
              f"gain {rig.gov.model.gain:5.3f} offset {rig.gov.offset_w:+5.2f} W")


def bench_ramp(name: str, make_plant, ramp: float) -> None:
    rig = Rig(make_plant(), ramp_max_w_s=40.0)
    rig.run(40.0)
    n0 = len(rig.log)
    rig.gov.set_target(6.0, ramp_w_s=ramp)
    rig.run(5.0)
    rig.gov.set_target(rig.gov.max_power_w, ramp_w_s=ramp)
    rig.run(5.0)
    w = [x[1] for x in rig.log[n0:]]
    per_tick = max(abs(b - a) / PERIOD_S for a, b in itertools.pairwise(w))
    per_s = max(abs(w[i + 10] - w[i]) for i in range(len(w) - 10))
    print(f"  {name:6s} ramp limit {ramp:4.1f} W/s: fastest true change {per_tick:5.2f} W/s "
          f"over 0.1 s, {per_s:5.2f} W/s over 1 s")


def bench_heatwave(name: str, make_plant) -> None:
    rig = Rig(make_plant())
    rig.run(60.0)
    hard = rig.cfg.envelope.max_chip_temp_hard_c
    soft = rig.cfg.envelope.max_chip_temp_soft_c
    peak, trips = 0.0, 0
    for minute in range(20):  # ambient 25 -> 65 degC over 20 minutes
        rig.plant.ambient_c = 25.0 + 2.0 * minute
        rig.run(60.0)
        peak = max(peak, max(x[2] for x in rig.log[-600:]))
        trips += sum(1 for x in rig.log[-600:] if x[3].mode == "tripped")
    gov = rig.gov
    print(f"  {name:6s} heatwave 25 -> 63 C ambient: peak chip {peak:5.1f} C (soft {soft:g}, "
          f"hard {hard:g}), tripped ticks {trips}, end: {gov.mode} at {rig.log[-1][1]:5.2f} W "
          f"(cap {gov.thermal_cap_w or float('nan'):5.2f} W), fan {rig.log[-1][3].fan_pct} %")


def bench_trip(name: str, make_plant) -> None:
    rig = Rig(make_plant(), trip_hold_s=10.0)
    rig.run(40.0)
    t0 = rig.clock.monotonic()
    state = {"hot_until": t0 + 3.0}

    def hot(s):
        if s is not None and rig.clock.monotonic() < state["hot_until"] and s.chain_powered:
            s.chip_temps_c = [80.0]
        return s

    rig.run(15.0, hot)
    cap = rig.gov.thermal_cap_w
    rig.run(25.0, hot)
    tripped = [t for t, _, _, o in rig.log if t >= t0 and o.mode == "tripped"]
    back = next((t for t, _, _, o in rig.log if t > tripped[-1] and o.chain_power_on), None)
    mining = next((t for t, _, _, o in rig.log if t > tripped[-1] and o.mode == "mining"), None)
    print(f"  {name:6s} trip {tripped[0] - t0:3.1f} s after the hot reading, released at "
          f"{tripped[-1] - t0:4.1f} s (chip unreadable while down: hold 10 s), chain back at "
          f"{back and back - t0:4.1f} s, mining at {mining and mining - t0:4.1f} s, cap after the "
          f"return {cap or 0:4.1f} W, power 40 s later {rig.log[-1][1]:5.2f} W")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    plants = [("simple", lambda: SimplePlant(args.seed))]
    try:
        import hil.plant  # noqa: F401

        plants.append(("hil", lambda: HilPlant(args.seed)))
    except ImportError as exc:
        print(f"(hil.plant not available: {exc})")
    t = time.perf_counter()
    print("step response (ramp limit 100 W/s; max power 20 W simple, 19 W hil):")
    for name, mk in plants:
        bench_steps(name, mk)
    print("ramp limit:")
    for name, mk in plants:
        for ramp in (2.0, 8.0):
            bench_ramp(name, mk, ramp)
    print("heatwave:")
    for name, mk in plants:
        bench_heatwave(name, mk)
    print("thermal trip and return:")
    for name, mk in plants:
        bench_trip(name, mk)
    print(f"({time.perf_counter() - t:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
