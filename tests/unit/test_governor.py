"""Governor: closed-loop tracking, ramp and cap, thermal derate and trip, sensor faults, modes.

The plant here is deliberately simple and deliberately not the governor's own model: first-order
chain frequency (the driver's stepping), a power law with a V**3 leakage and a different gain,
one-sample measurement lag, a lumped thermal mass cooled by the fan, seeded sensor noise.
"""

from __future__ import annotations

import itertools
import logging
import math
import random
from dataclasses import dataclass, field, replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.chain.board import BoardSample as Sample
from agent.clock import FakeClock
from agent.config import config_from_mapping
from agent.control.envelope import Actuation
from agent.control.governor import Governor
from agent.control.runtime import VCORE_SETTLE_S

PERIOD_S = 0.1



@dataclass
class Plant:
    """A one-chip BM1370 board, simple physics (see module docstring)."""

    chips: int = 1
    gain: float = 1.08  # true power / nominal (the governor's model is off by this)
    offset_w: float = 0.6  # unmodelled board power
    ambient_c: float = 25.0
    r_full_k_w: float = 1.6
    r_still_k_w: float = 6.0
    heat_cap_j_k: float = 3.0  # small: fast thermal tests
    freq_slew_mhz_s: float = 1600.0  # reaches any commanded frequency within ~0.2 s
    noise_w: float = 0.03
    seed: int = 1
    freq_mhz: float = 100.0
    vcore_mv: float = 1000.0
    fan_pct: float = 100.0
    on: bool = False
    temp_c: float = 30.0
    power_w: float = 0.0
    t_s: float = 0.0
    lagged_power_w: float = 0.0
    rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        self.rng.seed(self.seed)

    def chip_w(self) -> float:
        if not self.on:
            return 0.0
        v = self.vcore_mv / 1000.0
        k = 16.07 * 0.9 / (525 * 1.15**2)
        static = 1.607 * (v / 1.15) ** 3 * math.exp((self.temp_c - 60.0) / 35.0)
        return self.gain * (k * self.freq_mhz * v * v + static)

    def apply(self, a: Actuation) -> None:
        self.target_freq = a.freq_mhz
        self.vcore_mv = a.vcore_mv if a.chain_power_on else 0.0
        self.fan_pct = a.fan_pct
        if not a.chain_power_on:
            self.freq_mhz = a.freq_mhz
        self.on = a.chain_power_on

    def step(self, dt: float) -> None:
        tf = getattr(self, "target_freq", self.freq_mhz)
        d = tf - self.freq_mhz
        self.freq_mhz += max(-self.freq_slew_mhz_s * dt, min(self.freq_slew_mhz_s * dt, d))
        self.lagged_power_w = self.power_w
        chip = self.chip_w() * self.chips
        self.power_w = chip / 0.92 + 1.5 + self.offset_w + 0.5 * (self.fan_pct / 100) ** 3
        r = self.r_still_k_w + (self.r_full_k_w - self.r_still_k_w) * self.fan_pct / 100.0
        self.temp_c += dt * (chip - (self.temp_c - self.ambient_c) / r) / self.heat_cap_j_k
        self.t_s += dt

    def sample(self) -> Sample:
        n = self.rng.gauss
        temps: list[float | None] = [round(self.temp_c + n(0, 0.1), 3)] if self.on else [None]
        return Sample(
            ts_s=round(self.t_s, 6), chip_temps_c=temps,
            board_temp_c=round((self.ambient_c + self.temp_c) / 2 + n(0, 0.1), 3),
            vr_temp_c=round(self.ambient_c + 10 + n(0, 0.1), 3), vin_v=5.0 + n(0, 0.01),
            iin_a=self.lagged_power_w / 5.0,
            power_w=max(0.0, self.lagged_power_w + n(0, self.noise_w)),
            fan_rpm=60 * self.fan_pct, fan_pct=self.fan_pct, vcore_mv=self.vcore_mv,
            chain_powered=self.on)


def make_config(**envelope: float):
    env = {"max_power_w": 20.0, "ramp_max_w_s": 40.0, "trip_hold_s": 5.0}
    env.update(envelope)
    return config_from_mapping({"chain": {"port": "x"}, "board": {"port": "y"}, "envelope": env})


@dataclass
class ChainState:
    """What the governor reads of agent.chain.stats.ChainStats."""

    state: str = "mining"
    chips_ok: int = 1
    hashrate_ghs: float = 1000.0


class Loop:
    """Governor + plant + fake clock, stepped at the control period."""

    def __init__(self, cfg=None, plant: Plant | None = None) -> None:
        self.cfg = cfg or make_config()
        self.clock = FakeClock(start_s=100.0)
        self.gov = Governor(self.cfg, self.clock)
        self.plant = plant or Plant()
        self.outs: list[tuple[float, Actuation, float, float]] = []  # t, out, true power, temp
        self.sample_hook = None
        self.chain: ChainState | None = None  # what the chain driver reports (None: nothing)

    def run(self, seconds: float) -> None:
        for _ in range(round(seconds / PERIOD_S)):
            s = self.plant.sample()
            if self.sample_hook is not None:
                s = self.sample_hook(s)
            now = self.clock.monotonic()
            out = self.gov.update(now, s, self.chain)
            self.plant.apply(out)
            self.plant.step(PERIOD_S)
            self.clock.advance(PERIOD_S)
            self.outs.append((now, out, self.plant.power_w, self.plant.temp_c))

    def settle(self) -> None:
        """From start to steady mining at the default target."""
        self.run(6.0)
        assert self.gov.mode == "mining"

    def true_power(self, t: float) -> float:
        return min(self.outs, key=lambda o: abs(o[0] - t))[2]


def test_starts_at_minimum_and_ramps_to_the_default_target():
    loop = Loop()
    loop.run(0.1)  # the first sample: chain still down, no chip temperature
    assert loop.gov.mode == "starting" and "chip temperature" in loop.gov.mode_reason
    first = loop.outs[0][1]
    assert first.chain_power_on and first.freq_mhz == 100.0 and first.fan_pct == 70
    loop.run(6.0)
    assert loop.gov.mode == "mining"
    assert abs(loop.plant.power_w - 20.0) < 0.4  # default target = max power


@pytest.mark.parametrize(
    "low_share, plant_gain, max_w",
    [(0.3, 1.08, 20.0), (0.5, 1.08, 20.0), (0.4, 0.85, 16.0), (0.4, 1.25, 20.0)],
)
def test_step_down_and_up_tracks_within_2pct_of_max_within_1s(low_share, plant_gain, max_w):
    cfg = make_config(ramp_max_w_s=5 * max_w, max_power_w=max_w)
    loop = Loop(cfg, Plant(gain=plant_gain))
    loop.settle()
    loop.run(6.0)  # a few seconds of steady mining: the model has been checked at full load
    for target in (low_share * max_w, max_w, low_share * max_w, max_w):
        d = loop.gov.set_target(target)
        assert d.applied_w == pytest.approx(target) and d.limited_by is None
        t0 = loop.clock.monotonic()
        loop.run(3.0)
        late = [p for t, _, p, _ in loop.outs if t >= t0 + 1.0]
        assert max(abs(p - target) for p in late) <= 0.02 * max_w, target
        assert max(p for _, _, p, _ in loop.outs) <= max_w * 1.02


def test_ramp_limit_is_never_exceeded_by_measured_power():
    loop = Loop(make_config(ramp_max_w_s=40.0))
    loop.settle()
    loop.gov.set_target(6.0, ramp_w_s=5.0)
    loop.run(4.0)
    loop.gov.set_target(20.0, ramp_w_s=8.0)
    loop.run(4.0)
    powers = [p for _, _, p, _ in loop.outs[60:]]
    worst = max(abs(b - a) / PERIOD_S for a, b in itertools.pairwise(powers))
    assert worst <= 8.0 * 1.15  # the ramp, plus the model error of one step


def test_a_command_to_a_held_load_ramps_from_when_it_came_not_from_the_tick_before():
    """A site commands its whole fleet at once: if each device ramped from its last tick, the
    site's first second would move up to a tick's ramp more than the site's ramp allows."""
    loop = Loop(make_config(ramp_max_w_s=10.0))
    loop.settle()
    loop.gov.set_target(12.0)
    loop.run(3.0)
    held_w = loop.outs[-1][1].target_w
    assert held_w == pytest.approx(12.0)  # holding; its last tick was 0.1 s ago
    loop.gov.set_target(6.0, ramp_w_s=10.0)
    loop.clock.advance(0.01)
    out = loop.gov.update(loop.clock.monotonic(), loop.plant.sample(), loop.chain)
    assert held_w - out.target_w == pytest.approx(10.0 * 0.95 * 0.01, abs=1e-6)
    loop.clock.advance(PERIOD_S)  # from then on, a tick's ramp a tick
    nxt = loop.gov.update(loop.clock.monotonic(), loop.plant.sample(), loop.chain)
    assert out.target_w - nxt.target_w == pytest.approx(10.0 * 0.95 * PERIOD_S, abs=1e-6)


def test_a_late_tick_falls_behind_the_ramp_rather_than_jumping_to_catch_up():
    """A control thread stalled for half a second (a busy controller, a fleet of devices in one
    process): making up the stall in one step would move more in that second than the ramp."""
    loop = Loop(make_config(ramp_max_w_s=10.0))
    loop.settle()
    loop.gov.set_target(6.0, ramp_w_s=10.0)
    loop.run(0.5)
    before = loop.gov.update(loop.clock.monotonic(), loop.plant.sample(), loop.chain)
    loop.clock.advance(0.6)  # six periods without a tick
    late = loop.gov.update(loop.clock.monotonic(), loop.plant.sample(), loop.chain)
    step_w = before.target_w - late.target_w
    assert step_w == pytest.approx(10.0 * 0.95 * 1.5 * PERIOD_S, abs=1e-6)


@pytest.mark.parametrize("seed", range(5))
def test_ticks_that_come_unevenly_never_move_the_load_more_than_the_ramp_in_any_second(seed):
    """A busy controller ticks late, then on time again: each tick's step is within the ramp
    for its interval, but a second that holds one late tick and three on time must not add up
    to more than the ramp."""
    rng = random.Random(seed)
    loop = Loop(make_config(ramp_max_w_s=10.0))
    loop.settle()
    refs: list[tuple[float, float]] = []
    for target in (6.0, 20.0, 8.0):
        loop.gov.set_target(target, ramp_w_s=10.0)
        for _ in range(40):
            dt = rng.choice((0.07, 0.1, 0.13, 0.13, 0.3))
            loop.plant.step(dt)
            loop.clock.advance(dt)
            now = loop.clock.monotonic()
            out = loop.gov.update(now, loop.plant.sample(), loop.chain)
            loop.plant.apply(out)
            assert out.mode == "mining", out.mode_reason
            refs.append((now, out.target_w))
    # the reference holds from one tick to the next: a window (a, a + 1 s] that starts just
    # before tick k sees the reference of tick k - 1 at its start
    worst_w = max(abs(refs[m][1] - refs[k - 1][1]) for k in range(1, len(refs))
                  for m in range(k, len(refs)) if refs[m][0] - refs[k][0] < 1.0)
    assert worst_w <= 10.0 * 0.95 + 1e-6
    assert max(r for _, r in refs) > 19.0 and min(r for _, r in refs) < 6.5  # it did move


@pytest.mark.parametrize("late_s, stall_s", [(0.3, 0.6), (0.2, 2.5)])
def test_a_stall_between_the_voltage_and_the_frequency_step_keeps_the_load_within_the_ramp(
        late_s, stall_s):
    """Up a step the voltage goes first and the frequency follows a tick later (the runtime
    ticks again after VCORE_SETTLE_S). When that tick comes late (a stalled control thread, a
    fleet's busy loop) the load moves only then: the ticks after it must count the ramp from
    the load the chips had, not from the reference that waited for the voltage."""
    cfg = config_from_mapping({"chain": {"port": "x"}, "board": {"port": "y"},
                               "envelope": {"max_power_w": 20.0, "ramp_max_w_s": 40.0},
                               "governor": {"control_period_s": 0.25}})
    loop = Loop(cfg, Plant(freq_slew_mhz_s=1e9))  # the load follows the clock at once
    loop.settle()
    loop.gov.set_target(6.0, ramp_w_s=10.0)
    loop.run(4.0)
    loop.gov.set_target(20.0, ramp_w_s=10.0)
    loop.clock.advance(late_s)
    trace: list[tuple[float, float]] = []

    def tick() -> float:
        out = loop.gov.update(loop.clock.monotonic(), loop.plant.sample(), loop.chain)
        loop.plant.apply(out)
        return VCORE_SETTLE_S if "vcore_first" in out.limits else 0.25

    def advance(seconds: float) -> None:
        for _ in range(round(seconds / 0.01)):
            loop.plant.step(0.01)
            loop.clock.advance(0.01)
            trace.append((loop.clock.monotonic(), loop.plant.power_w))

    assert tick() == VCORE_SETTLE_S  # the voltage first ...
    advance(stall_s)  # ... and the frequency's tick stalled
    for _ in range(40):
        advance(tick())
    worst_w = max(pb - pa for i, (ta, pa) in enumerate(trace) for tb, pb in trace[i:]
                  if tb - ta <= 1.0)
    assert worst_w <= 10.0  # the command's ramp
    assert trace[-1][1] > 19.0  # it did climb


def test_command_ramp_is_capped_by_envelope_and_reported():
    loop = Loop(make_config(ramp_max_w_s=10.0))
    loop.settle()
    d = loop.gov.set_target(8.0, ramp_w_s=500.0)
    assert d.limited_by == "ramp" and d.ramp_w_s == 10.0
    assert d.eta_s == pytest.approx(1.2 + 0.3, abs=0.2)


def test_power_cap_clamps_and_is_reported():
    loop = Loop(make_config(max_power_w=15.0))
    loop.settle()
    d = loop.gov.set_target(40.0)
    assert d.applied_w == 15.0 and d.limited_by == "power_cap"
    loop.run(3.0)
    assert max(p for _, _, p, _ in loop.outs) <= 15.0 * 1.02


def test_decisions_are_logged_without_empty_fields(caplog):
    """The log says what was asked and what limited it, and leaves out what did not happen (no
    `requested - W`, no `limited by None`)."""
    caplog.set_level(logging.INFO, logger="gridminer.governor")
    loop = Loop(make_config(max_power_w=15.0))
    loop.settle()
    loop.gov.set_target(40.0)
    loop.gov.set_target(10.0)
    loop.gov.curtail()
    msgs = [r.getMessage() for r in caplog.records if r.getMessage().startswith("governor ")]
    assert msgs[-3].startswith("governor setpoint: 40.0 W requested, applying 15.0 W "
                               "(limited by power_cap), eta ")
    assert msgs[-2].startswith("governor setpoint: 10.0 W requested, applying 10.0 W, eta ")
    assert msgs[-1].startswith("governor curtail: applying ")
    assert not any("None" in m or " - W" in m for m in msgs), msgs


def test_setpoint_below_minimum_is_raised_to_min_w():
    loop = Loop()
    loop.settle()
    d = loop.gov.set_target(1.0)
    assert d.limited_by == "caps" and d.applied_w == pytest.approx(loop.gov.min_w)
    d = loop.gov.set_target(float("nan"))
    assert d.limited_by == "caps" and d.applied_w == pytest.approx(loop.gov.min_w)


def test_caps_declares_the_model_minimum_and_the_envelope():
    gov = Loop().gov
    caps = gov.caps()
    assert caps == {"min_w": math.ceil(gov.min_w), "max_w": 20, "ramp_max_w_s": 40, "chips": 1,
                    "chip_model": "BM1370", "hashrate_max_ghs": 1275.0}  # 625 MHz
    assert 5.0 < gov.min_w < 9.0


@pytest.mark.parametrize("plant_gain", [0.85, 1.15])
def test_declared_range_is_reachable_on_a_board_15pct_off_the_model(plant_gain):
    """Default caps (no max_power_w configured): a board drawing 15 % less than the model still
    reaches max_w, one drawing 15 % more still comes down to min_w."""
    cfg = config_from_mapping({"chain": {"port": "x"}, "board": {"port": "y"},
                               "envelope": {"trip_hold_s": 5.0}})
    loop = Loop(cfg, Plant(gain=plant_gain, offset_w=0.0, heat_cap_j_k=10.0))
    caps = loop.gov.caps()
    for target in (caps["max_w"], caps["min_w"], caps["max_w"]):
        d = loop.gov.set_target(target)
        loop.run(8.0)
        assert d.limited_by is None, (target, d)
        assert abs(loop.plant.power_w - target) < 0.02 * caps["max_w"], target


def test_heatwave_derates_and_never_reaches_the_hard_limit():
    loop = Loop(plant=Plant(heat_cap_j_k=2.0))
    loop.settle()
    hard = loop.cfg.envelope.max_chip_temp_hard_c
    for amb in range(25, 56, 3):
        loop.plant.ambient_c = amb
        loop.run(4.0)
    assert max(t for _, _, _, t in loop.outs) < hard
    assert loop.gov.limited_by == "thermal"
    assert loop.gov.mode == "mining" and "derated" in loop.gov.mode_reason
    d = loop.gov.set_target(20.0)
    assert d.limited_by == "thermal" and d.applied_w < 15.0


def test_hard_limit_trips_to_idle_with_fan_full_and_recovers_after_clear_hold_ramp(caplog):
    caplog.set_level(logging.INFO, logger="gridminer.governor")
    loop = Loop()
    loop.settle()
    hot = {"on": True}

    def hook(s):
        if hot["on"] and s.chain_powered:
            return replace(s, chip_temps_c=[80.0])
        return s

    loop.sample_hook = hook
    loop.run(0.2)
    out = loop.outs[-1][1]
    assert loop.gov.mode == "tripped" and "overtemp" in loop.gov.mode_reason
    assert not out.chain_power_on and out.fan_pct == 100
    hot["on"] = False
    loop.plant.temp_c = 40.0
    loop.run(4.0)  # cleared, but the hold (5 s) is not over
    assert loop.gov.mode == "tripped"
    loop.run(1.5)
    assert loop.gov.mode in ("starting", "mining")
    n = len(loop.outs)
    loop.run(6.0)
    assert loop.gov.mode == "mining"
    powers = [p for _, _, p, _ in loop.outs[n:]]
    rises = [(b - a) / PERIOD_S for a, b in itertools.pairwise(powers)]
    # back on at minimum (one step of min_w), then ramped
    assert sorted(rises)[-2] <= 40.0 * 1.15
    # after a thermal trip the return is capped below the power at trip
    assert loop.gov.limited_by == "thermal"
    msgs = [r.getMessage() for r in caplog.records]
    assert any("mining -> tripped: overtemp" in m for m in msgs)
    assert any("tripped -> starting" in m for m in msgs)


@pytest.mark.parametrize(
    "fault, why",
    [
        (lambda s, n: replace(s, power_w=float("nan")), "sensor_nan"),
        (lambda s, n: replace(s, chip_temps_c=[float("nan")]), "sensor_nan"),
        (lambda s, n: replace(s, power_w=-3.0), "sensor_range"),
        (lambda s, n: replace(s, chip_temps_c=[400.0]), "sensor_range"),
        (lambda s, n: None, "sensor_stale"),
        (lambda s, n: replace(s, ts_s=1.0), "sensor_stale"),
    ],
)
def test_sensor_faults_go_to_safe_idle(fault, why):
    loop = Loop()
    loop.settle()
    loop.sample_hook = lambda s: fault(s, 0)
    loop.run(1.5)
    out = loop.outs[-1][1]
    assert loop.gov.mode == "tripped" and why in loop.gov.mode_reason
    assert not out.chain_power_on and out.fan_pct == 100


def test_frozen_readings_trip():
    loop = Loop(make_config(sensor_frozen_s=2.0))
    loop.settle()
    frozen = loop.plant.sample()
    loop.sample_hook = lambda s: replace(frozen, ts_s=s.ts_s)
    loop.run(1.5)
    assert loop.gov.mode == "mining"
    loop.run(1.0)
    assert loop.gov.mode == "tripped" and "sensor_frozen" in loop.gov.mode_reason


def test_curtail_standby_resume_modes_with_reasons(caplog):
    caplog.set_level(logging.INFO, logger="gridminer.governor")
    loop = Loop()
    loop.settle()
    loop.gov.curtail()
    loop.run(2.0)
    assert loop.gov.mode == "curtailed"
    assert loop.outs[-1][1].freq_mhz == 100.0 and loop.outs[-1][1].chain_power_on
    assert abs(loop.plant.power_w - loop.gov.min_w) < 1.5
    loop.gov.standby()
    loop.run(1.0)
    assert loop.gov.mode == "standby" and loop.gov.mode_reason == "chain powered down"
    assert not loop.outs[-1][1].chain_power_on
    d = loop.gov.resume()
    assert d.applied_w == 20.0
    loop.run(8.0)
    assert loop.gov.mode == "mining" and abs(loop.plant.power_w - 20.0) < 0.5
    msgs = [r.getMessage() for r in caplog.records]
    for m in ("mining -> curtailed", "curtailed -> standby", "standby -> starting",
              "starting -> mining"):
        assert any(m in x for x in msgs), m


def test_fan_is_70pct_before_any_temperature_and_follows_temperature_after():
    loop = Loop()
    loop.run(0.1)
    assert loop.outs[0][1].fan_pct == 70
    loop.settle()
    assert loop.outs[-1][1].fan_pct < 100


def test_voltage_moves_before_frequency_up_and_after_it_down():
    loop = Loop(make_config(ramp_max_w_s=100.0))
    loop.settle()
    loop.gov.set_target(6.0)
    loop.run(2.0)
    loop.gov.set_target(20.0)
    loop.run(2.0)
    curve = loop.gov.curve
    outs = [o for _, o, _, _ in loop.outs]
    for a, b in itertools.pairwise(outs):
        if b.chain_power_on:
            assert curve.supports(b.freq_mhz, b.vcore_mv)
            if a.chain_power_on:
                assert curve.supports(b.freq_mhz, a.vcore_mv)  # the voltage already in force


# ---- property tests: the envelope holds on every output, whatever the targets and plant ----

@st.composite
def scenarios(draw):
    steps = draw(st.lists(
        st.tuples(
            st.sampled_from(["set", "set", "set", "curtail", "standby", "resume", "fault"]),
            st.floats(-5.0, 60.0, allow_nan=False),
            st.one_of(st.none(), st.floats(0.5, 500.0)),
            st.integers(1, 25),  # ticks until the next command
        ),
        min_size=1, max_size=8))
    plant = dict(
        gain=draw(st.floats(0.8, 1.25)),
        offset_w=draw(st.floats(-1.0, 2.0)),
        ambient_c=draw(st.floats(0.0, 45.0)),
        heat_cap_j_k=draw(st.floats(1.0, 8.0)),
        r_full_k_w=draw(st.floats(1.0, 2.5)),
        seed=draw(st.integers(0, 1000)),
    )
    env = dict(
        max_power_w=draw(st.floats(8.0, 25.0)),
        ramp_max_w_s=draw(st.floats(2.0, 100.0)),
        trip_hold_s=draw(st.floats(0.0, 3.0)),
    )
    heat = draw(st.floats(0.0, 3.0))  # degC/s of ambient rise during the run (up to 60 degC)
    return steps, plant, env, heat


FAULTS = {
    0: lambda s: replace(s, power_w=float("nan")),
    1: lambda s: None,
    2: lambda s: replace(s, chip_temps_c=[90.0]) if s.chain_powered else s,
    3: lambda s: replace(s, vin_v=-1.0),
    4: lambda s: replace(s, chip_temps_c=[None]),
    5: lambda s: replace(s, chip_temps_c=[71.0]) if s.chain_powered else s,
}


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_envelope_invariants_hold_on_every_output(scenario):
    steps, plant_kw, env_kw, heat = scenario
    cfg = make_config(**env_kw)
    loop = Loop(cfg, Plant(**plant_kw))
    gov, env = loop.gov, cfg.envelope
    model, curve = gov.model, gov.curve
    prev: Actuation | None = None
    r = env.ramp_max_w_s
    for op, watts, ramp, ticks in steps:
        if op == "set":
            gov.set_target(watts, ramp)
        elif op == "curtail":
            gov.curtail()
        elif op == "standby":
            gov.standby()
        elif op == "resume":
            gov.resume(ramp)
        loop.sample_hook = FAULTS[int(abs(watts)) % len(FAULTS)] if op == "fault" else None
        for _ in range(ticks):
            loop.plant.ambient_c = min(60.0, loop.plant.ambient_c + heat * PERIOD_S)
            loop.run(PERIOD_S)
            _, out, _, _ = loop.outs[-1]
            hottest = gov.envelope.check.hottest_c
            assert env.min_freq_mhz <= out.freq_mhz <= env.max_freq_mhz
            assert env.min_vcore_mv <= out.vcore_mv <= env.max_vcore_mv
            assert 0 <= out.fan_pct <= 100
            assert 0.0 <= out.target_w <= env.max_power_w
            if hottest is not None and hottest >= env.max_chip_temp_hard_c:
                assert out.mode == "tripped"
            if out.mode == "tripped":
                assert not out.chain_power_on and out.fan_pct == 100
            if hottest is not None and hottest >= env.max_chip_temp_soft_c:
                assert out.fan_pct == 100
            if out.chain_power_on:
                assert curve.supports(out.freq_mhz, out.vcore_mv)
                if prev is None or not prev.chain_power_on:
                    assert out.freq_mhz == env.min_freq_mhz
                else:
                    assert curve.supports(out.freq_mhz, prev.vcore_mv)
                    t = hottest
                    step = abs(model.power_w(out.freq_mhz, out.vcore_mv, t)
                               - model.power_w(prev.freq_mhz, prev.vcore_mv, t))
                    assert step <= r * PERIOD_S + 1e-6
            if prev is not None and out.mode != "tripped":
                assert abs(out.target_w - prev.target_w) <= r * PERIOD_S + 1e-6
            prev = out
    assert max(t for _, _, _, t in loop.outs) < env.max_chip_temp_hard_c + 3.0


def test_silent_board_link_at_start_keeps_the_chain_down_without_tripping():
    loop = Loop()
    loop.sample_hook = lambda s: None
    loop.run(3.0)
    assert loop.gov.mode == "starting" and "first board sample" in loop.gov.mode_reason
    assert not any(o.chain_power_on for _, o, _, _ in loop.outs)
    loop.sample_hook = None
    loop.run(6.0)
    assert loop.gov.mode == "mining"


# ---- the power model and the V/f curve the governor steers with ----

@pytest.mark.parametrize(
    "family, j_per_th",
    [("BM1370", 15.0), ("BM1368", 17.5), ("BM1366", 21.0), ("BM1397", 30.0)],
)
def test_model_matches_the_vendor_efficiency_at_the_family_defaults(family, j_per_th):
    from agent.control.power_model import ModelParams, PowerModel
    from firmware_bridge.chips import profile

    prof = profile(family)
    model = PowerModel(ModelParams.for_family(family, 1))
    chip_w = model.chip_power_w(prof.default_freq_mhz, prof.default_vcore_mv, 60.0)
    ths = model.hashrate_ghs(prof.default_freq_mhz) / 1000.0
    assert chip_w / ths == pytest.approx(j_per_th, rel=1e-6)


def test_bm1370_board_at_defaults_is_about_19_w_at_the_wall():
    from agent.control.power_model import ModelParams, PowerModel

    model = PowerModel(ModelParams.for_family("BM1370", 1))
    assert 15.0 <= model.chip_power_w(525, 1150, 60.0) <= 19.0
    assert model.power_w(525, 1150, 60.0) == pytest.approx(19.0, abs=0.3)
    assert model.hashrate_ghs(525) == pytest.approx(1071.0)
    # hotter chips leak more; lower voltage saves more than frequency alone
    assert model.power_w(525, 1150, 75.0) > model.power_w(525, 1150, 60.0)
    assert model.power_w(300, 1050, 60.0) < model.power_w(300, 1150, 60.0)


def test_model_inverses_round_trip():
    from agent.control.power_model import ModelParams, PowerModel, VfCurve

    model = PowerModel(ModelParams.for_family("BM1366", 6))
    curve = VfCurve([(100, 1100), (485, 1200)], 1100, 1200)
    for f in (120.0, 250.0, 400.0, 485.0):
        p = model.curve_power_w(f, curve, 55.0)
        assert model.freq_for_power(p, curve, 100, 485, 55.0) == pytest.approx(f, rel=1e-6)
        v = curve.vcore_mv(f)
        assert model.freq_for_power_at_vcore(p, v, 55.0) == pytest.approx(f, rel=1e-9)
        assert model.vcore_for_power_at_freq(p, f, 55.0) == pytest.approx(v, rel=1e-9)
    assert model.freq_for_power(1.0, curve, 100, 485) == 100
    assert model.freq_for_power(1e4, curve, 100, 485) == 485


def test_vf_curve_is_linear_clamped_and_inverts():
    from agent.control.power_model import VfCurve

    curve = VfCurve([(100, 1000), (525, 1150)], 1000, 1150)
    assert curve.vcore_mv(100) == 1000 and curve.vcore_mv(525) == 1150
    assert curve.vcore_mv(312.5) == pytest.approx(1075)
    assert curve.vcore_mv(50) == 1000 and curve.vcore_mv(700) == 1150
    assert curve.max_freq_mhz(1075) == pytest.approx(312.5, abs=1e-6)
    assert curve.supports(312.5, 1075) and not curve.supports(320, 1075)
    with pytest.raises(ValueError):
        VfCurve([(500, 1100), (200, 1150)], 1000, 1200)


def test_target_below_what_the_board_can_reach_is_reported_caps():
    loop = Loop(plant=Plant(gain=1.4))  # this board draws 40 % more than the model says
    loop.settle()
    loop.gov.set_target(8.0)
    loop.run(4.0)
    d = loop.gov.set_target(6.0)  # the declared min_w, below this board's minimum (6.5 W)
    assert loop.gov.caps()["min_w"] == 6
    assert d.limited_by == "caps" and d.applied_w > 6.0
    loop.run(3.0)
    assert loop.outs[-1][1].freq_mhz < 105.0  # at the bottom of the range
    assert abs(loop.plant.power_w - d.applied_w) < 0.4


def _largest_1s_change_w(outs, t0: float) -> float:
    pts = [(t, p) for t, _, p, _ in outs if t >= t0]
    return max(abs(pk - p) for i, (t, p) in enumerate(pts) for tk, pk in pts[i + 1:]
               if tk - t <= 1.0 + 1e-9)


def test_no_ramp_up_until_the_chain_hashes():
    loop = Loop()
    loop.chain = ChainState(state="starting")  # the driver is still bringing the chain up
    loop.run(2.0)
    assert loop.gov.mode == "starting" and "hash" in loop.gov.mode_reason
    assert all(o.freq_mhz == 100.0 for _, o, _, _ in loop.outs)
    loop.chain.state = "ramping"
    loop.run(6.0)
    assert loop.gov.mode == "mining" and abs(loop.plant.power_w - 20.0) < 0.4


def test_chain_reinitialisation_ramps_back_from_the_minimum_within_the_ramp(caplog):
    ramp = 5.0
    loop = Loop(make_config(ramp_max_w_s=ramp))
    loop.chain = ChainState()
    loop.run(10.0)
    assert abs(loop.plant.power_w - 20.0) < 0.4
    # a hang: the driver resets the chain, whose chips come back at their reset clock
    loop.chain.state = "starting"
    loop.plant.freq_mhz = loop.plant.target_freq = 50.0
    with caplog.at_level(logging.WARNING, logger="gridminer.governor"):
        loop.run(0.5)
    assert "ramping up again from the minimum" in caplog.text
    assert loop.outs[-1][1].freq_mhz == 100.0 and loop.gov.mode == "starting"
    t_back = loop.clock.monotonic()
    loop.chain.state = "ramping"
    loop.run(6.0)
    assert _largest_1s_change_w(loop.outs, t_back) <= ramp * 1.0 + 0.01 * 20.0 + 0.3
    assert abs(loop.plant.power_w - 20.0) < 0.4


def test_curtail_goes_to_the_minimum_frequency_and_reports_that_power():
    loop = Loop(plant=Plant(gain=1.0, offset_w=0.0))
    loop.settle()
    d = loop.gov.curtail()
    assert d.applied_w < loop.gov.caps()["min_w"]  # deeper than the promised minimum
    loop.run(3.0)
    assert loop.outs[-1][1].freq_mhz == 100.0
    assert abs(loop.plant.power_w - d.applied_w) < 0.05 * 20.0


def test_the_model_is_not_learnt_while_the_driver_winds_the_chips_down():
    """While the driver takes the clock down to a reset, the chips do not run at what the
    governor commands: the falling power must not teach the model that the chips draw less (it
    would then climb too fast after the reset)."""
    loop = Loop()
    loop.settle()
    loop.run(4.0)
    gain, offset = loop.gov.model.gain, loop.gov.correction.offset_w
    loop.chain = ChainState(state="winding")

    def winding_down(s: Sample) -> Sample:  # the measured power falls as the clock comes down
        return replace(s, power_w=s.power_w * 0.4)

    loop.sample_hook = winding_down
    loop.run(3.0)
    assert loop.gov.model.gain == gain and loop.gov.correction.offset_w == offset
    loop.chain = ChainState(state="mining")  # the same readings while mining are learnt from
    loop.run(1.0)
    assert loop.gov.model.gain < gain or loop.gov.correction.offset_w < offset
