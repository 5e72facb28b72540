"""The safety envelope on its own: sample checks, the trip latch, and what may leave `enforce`."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import config_from_mapping
from agent.control.envelope import SENSOR_TRIP_LIMIT, Actuation, Envelope
from agent.control.power_model import ModelParams, PowerModel, VfCurve

DT = 0.1


@dataclass(frozen=True)
class Sample:
    """Same fields as agent.chain.board.BoardSample."""

    ts_s: float
    chip_temps_c: list[float | None]
    board_temp_c: float | None = 35.0
    vr_temp_c: float | None = 45.0
    vin_v: float | None = 5.0
    iin_a: float | None = 3.0
    power_w: float | None = 15.0
    fan_rpm: float | None = 3000
    fan_pct: float | None = 50
    vcore_mv: float | None = 1150
    chain_powered: bool = True
    bridge_state: str = "running"
    trip_reason: str | None = None


def make(**env):
    base = {"max_power_w": 20.0, "ramp_max_w_s": 10.0, "trip_hold_s": 2.0, "sensor_stale_s": 0.5,
            "sensor_frozen_s": 1.0}
    base.update(env)
    cfg = config_from_mapping({"chain": {"port": "x"}, "board": {"port": "y"}, "envelope": base})
    e = cfg.envelope
    model = PowerModel(ModelParams.for_family("BM1370", 1))
    curve = VfCurve(cfg.governor.vf_points, e.min_vcore_mv, e.max_vcore_mv)
    return Envelope(e, model, curve, fan_min_pct=25, control_period_s=DT, freq_settle_s=0.3), cfg


def act(freq=100.0, vcore=1000, fan=50, on=True, target=5.0, mode="mining"):
    return Actuation(freq, vcore, fan, on, mode, target, "test")


class Ticker:
    """Feeds the envelope a sample and a proposal per tick; samples jitter so they never freeze."""

    def __init__(self, env: Envelope, t0: float = 10.0) -> None:
        self.env, self.now, self.n = env, t0, 0

    def tick(self, proposal: Actuation, sample: Sample | str | None = "ok", temp=50.0):
        self.n += 1
        if sample == "ok":
            sample = Sample(ts_s=self.now, chip_temps_c=[temp + 0.01 * (self.n % 7)])
        self.env.observe(self.now, sample)  # type: ignore[arg-type]
        out = self.env.enforce(self.now, proposal)
        self.now += DT
        return out


def test_bounds_are_enforced_whatever_is_proposed():
    env, cfg = make()
    t = Ticker(env)
    t.tick(act())
    for bad in (act(freq=5000), act(freq=float("nan")), act(freq=-3), act(fan=900),
                act(fan=-5), act(target=1e9), act(target=float("inf"))):
        for _ in range(30):
            out = t.tick(bad)
        e = cfg.envelope
        assert e.min_freq_mhz <= out.freq_mhz <= e.max_freq_mhz
        assert e.min_vcore_mv <= out.vcore_mv <= e.max_vcore_mv
        assert 25 <= out.fan_pct <= 100 and 0 <= out.target_w <= 20.0


def test_voltage_rises_before_frequency_and_falls_after_it():
    env, _ = make(ramp_max_w_s=1000.0)
    t = Ticker(env)
    first = t.tick(act())
    up1 = t.tick(act(freq=525.0))
    assert up1.vcore_mv == 1150 and up1.freq_mhz == first.freq_mhz and "vcore_first" in up1.limits
    up2 = t.tick(act(freq=525.0))
    assert up2.freq_mhz == 525.0
    down = [t.tick(act(freq=100.0)) for _ in range(5)]
    assert down[0].freq_mhz == 100.0 and down[0].vcore_mv == 1150  # frequency first
    assert down[2].vcore_mv == 1150  # held while the chain may still be stepping down
    assert down[-1].vcore_mv == 1000


def test_held_voltage_names_what_the_next_output_keeps_while_frequency_settles():
    env, _ = make(ramp_max_w_s=1000.0)
    t = Ticker(env)
    assert env.held_vcore_mv(t.now) is None  # nothing powered yet
    t.tick(act())
    t.tick(act(freq=525.0))
    t.tick(act(freq=525.0))
    t.tick(act(freq=100.0))
    held = env.held_vcore_mv(t.now)
    assert held == 1150  # 525 MHz was asked for a moment ago
    assert t.tick(act(freq=100.0, vcore=1000)).vcore_mv >= held
    for _ in range(4):
        t.tick(act(freq=100.0))
    assert env.held_vcore_mv(t.now) == 1000


def test_a_restarted_chain_powers_on_again_at_minimum_and_ramps_from_zero():
    env, _ = make(ramp_max_w_s=10.0)
    t = Ticker(env)
    t.tick(act())
    for _ in range(30):
        t.tick(act(freq=525.0, target=20.0))
    env.chain_restarted()  # the chips lost their state (re-initialisation, power cut)
    out = t.tick(act(freq=525.0, target=20.0))
    assert out.chain_power_on and out.freq_mhz == 100.0 and "power_on_at_min" in out.limits
    assert out.target_w <= 10.0 * DT + 1e-9


def test_modelled_power_moves_at_most_the_ramp_per_tick_both_ways():
    env, _ = make(ramp_max_w_s=10.0)
    t = Ticker(env)
    outs = [t.tick(act())]
    outs += [t.tick(act(freq=525.0)) for _ in range(30)]
    outs += [t.tick(act(freq=100.0)) for _ in range(30)]
    powers = [env.model.power_w(o.freq_mhz, o.vcore_mv, 50.0) for o in outs]
    steps = [b - a for a, b in itertools.pairwise(powers)]
    assert max(abs(s) for s in steps) <= 10.0 * DT + 1e-9
    assert max(powers) > 18.0 and powers[-1] < 6.0  # it got there, at the ramp


def test_a_stalled_control_loop_does_not_earn_a_bigger_step():
    env, _ = make(ramp_max_w_s=10.0)
    t = Ticker(env)
    a = t.tick(act())
    t.now += 5.0  # the control thread stalled for 5 s
    b = t.tick(act(freq=525.0, target=20.0))
    c = t.tick(act(freq=525.0, target=20.0))
    p = [env.model.power_w(o.freq_mhz, o.vcore_mv, 50.0) for o in (a, b, c)]
    assert p[2] - p[0] <= 2 * 10.0 * 2.5 * DT + 1e-9
    assert b.target_w - a.target_w <= 10.0 * 2.5 * DT + 1e-9


def test_chain_powers_on_only_at_minimum_frequency():
    env, _ = make()
    t = Ticker(env)
    t.tick(act(on=False))
    out = t.tick(act(freq=500.0, on=True))
    assert out.chain_power_on and out.freq_mhz == 100.0 and "power_on_at_min" in out.limits


def test_fan_full_at_soft_limit_and_never_below_minimum_while_hashing():
    env, _ = make()
    t = Ticker(env)
    assert t.tick(act(fan=0)).fan_pct == 25
    assert t.tick(act(fan=30), temp=66.0).fan_pct == 100
    assert t.tick(act(fan=0, on=False), temp=40.0).fan_pct == 0


def test_hard_limit_trips_idle_and_release_needs_clear_plus_hold():
    env, _ = make(trip_hold_s=2.0)
    t = Ticker(env)
    t.tick(act())
    out = t.tick(act(freq=500.0), temp=76.0)
    assert env.tripped and env.thermal_trip and "overtemp" in env.trip_reason
    assert (out.chain_power_on, out.fan_pct, out.mode, out.target_w) == (False, 100, "tripped", 0)
    for _ in range(15):
        assert t.tick(act(), temp=60.0).mode == "tripped"  # above trip_clear_temp_c (55)
    for _ in range(15):
        t.tick(act(), temp=50.0)  # clear for 1.5 s of the 2 s hold
    assert env.tripped and env.clear_remaining_s(t.now) == pytest.approx(0.5, abs=0.11)
    t.tick(act(), temp=60.0)  # not clear again: the hold starts over
    for _ in range(19):
        t.tick(act(), temp=50.0)
    assert env.tripped
    for _ in range(3):
        out = t.tick(act(freq=500.0), temp=50.0)
    assert not env.tripped
    assert out.chain_power_on and out.freq_mhz == 100.0  # back on at minimum, ramped from there
    assert out.target_w <= 3 * 10.0 * DT + 1e-9


@pytest.mark.parametrize(
    "change, reason",
    [
        (dict(power_w=float("nan")), "sensor_nan"),
        (dict(chip_temps_c=[float("inf")]), "sensor_nan"),
        (dict(board_temp_c=float("nan")), "sensor_nan"),
        (dict(power_w=-1.0), "sensor_range"),
        (dict(power_w=500.0), "sensor_range"),
        (dict(vin_v=99.0), "sensor_range"),
        (dict(chip_temps_c=[-100.0]), "sensor_range"),
        (dict(power_w=None), "sensor_missing"),
        (dict(vr_temp_c=110.0), "vr_overtemp"),
        (dict(trip_reason="watchdog"), "bridge_trip: watchdog"),
    ],
)
def test_bad_samples_trip_at_once(change, reason):
    env, _ = make()
    env.observe(10.0, Sample(ts_s=1.0, chip_temps_c=[50.0]))
    chk = env.observe(10.1, replace(Sample(ts_s=1.1, chip_temps_c=[50.0]), **change))
    assert chk.fault is not None and chk.fault.startswith(reason) and env.trip_reason == chk.fault
    assert env.enforce(10.1, act(freq=300.0)).mode == "tripped"


def test_stale_samples_trip_after_the_timeout():
    env, _ = make(sensor_stale_s=0.5)
    s = Sample(ts_s=1.0, chip_temps_c=[50.0])
    env.observe(10.0, s)
    env.observe(10.4, s)  # same ts_s: nothing new
    env.observe(10.45, None)
    assert not env.tripped
    env.observe(10.6, s)
    assert env.tripped and env.trip_reason.startswith("sensor_stale")


def test_frozen_readings_trip_only_while_the_chain_is_powered():
    env, _ = make(sensor_frozen_s=1.0)
    for i in range(30):  # chain down: identical readings are normal
        env.observe(10.0 + i * DT, Sample(ts_s=i, chip_temps_c=[None], chain_powered=False))
    assert not env.tripped
    for i in range(30, 45):
        env.observe(10.0 + i * DT, Sample(ts_s=i, chip_temps_c=[50.0]))
    assert env.tripped and env.trip_reason.startswith("sensor_frozen")


def _stuck_channel_run(env: Envelope, t0: float, n: int, chip0, power_w) -> float:
    """`n` samples 0.1 s apart: chip 1 live (it follows the power), chip 0 `chip0(i)`, board power
    `power_w(i)`. Returns the time after the last one."""
    for i in range(n):
        p = power_w(i)
        env.observe(t0 + i * DT, Sample(ts_s=t0 + i * DT, chip_temps_c=[chip0(i), 40.0 + p / 2],
                                        power_w=p))
    return t0 + n * DT


def test_one_stuck_chip_sensor_trips_when_the_power_swings_and_holds_until_it_reads_again():
    env, _ = make(max_power_w=20.0, sensor_frozen_s=1.0, trip_hold_s=0.5)
    # steady power: a chip reading that does not move is normal (quantised sensors do that)
    t = _stuck_channel_run(env, 10.0, 30, lambda i: 55.0, lambda i: 15.0 + 0.01 * (i % 3))
    assert not env.tripped
    # the power swings by 25 % of max while chip 0 keeps its reading: it is stuck
    t = _stuck_channel_run(env, t, 15, lambda i: 55.0, lambda i: 15.0 - 0.4 * i)
    assert env.tripped
    assert env.trip_reason.startswith("sensor_frozen: chip_temps_c[0] stuck at 55 C")
    # idle, powers steady: the channel is still suspect, so the trip holds past trip_hold_s
    t = _stuck_channel_run(env, t, 20, lambda i: 55.0, lambda i: 2.0 + 0.01 * (i % 3))
    assert env.tripped and env.clear_remaining_s(t) is None
    # unreadable for a while: still suspect
    t = _stuck_channel_run(env, t, 20, lambda i: None, lambda i: 2.0 + 0.01 * (i % 3))
    assert env.tripped and env.clear_remaining_s(t) is None
    # it reads again: clear, and released after the hold
    t = _stuck_channel_run(env, t, 10, lambda i: 50.0 - 0.1 * i, lambda i: 2.0)
    assert not env.tripped


def test_a_chip_sensor_that_follows_the_power_never_counts_as_stuck():
    env, _ = make(max_power_w=20.0, sensor_frozen_s=1.0)
    # power swings up and down for 6 s; chip 0 moves with it in coarse 1 C steps
    swing = [15.0 + 4.0 * math.sin(i / 5) for i in range(60)]
    _stuck_channel_run(env, 10.0, 60, lambda i: float(round(40 + swing[i])),
                       lambda i: swing[i])
    assert not env.tripped, env.trip_reason


def test_missing_chip_temperature_trips_after_the_grace():
    env, _ = make(sensor_stale_s=0.5, sensor_frozen_s=1.0)
    for i in range(8):  # chain just powered: no temperature yet, grace = sensor_frozen_s
        env.observe(10.0 + i * DT, Sample(ts_s=i, chip_temps_c=[None], power_w=5 + i * 0.01))
    assert not env.tripped
    env.observe(11.0, Sample(ts_s=10, chip_temps_c=[50.0]))
    for i in range(11, 18):  # seen once: losing it trips after sensor_stale_s
        env.observe(10.0 + i * DT, Sample(ts_s=i, chip_temps_c=[None], power_w=5 + i * 0.01))
    assert env.tripped and "no valid chip temperature" in env.trip_reason


def test_overpower_trips_only_when_it_lasts():
    env, _ = make(max_power_w=20.0, overpower_margin_pct=10.0, overpower_s=1.0)
    for i in range(8):
        env.observe(10 + i * DT, Sample(ts_s=i, chip_temps_c=[50 + i * 0.01], power_w=23.0))
    env.observe(10.8, Sample(ts_s=8, chip_temps_c=[50.0], power_w=21.0))
    assert not env.tripped
    for i in range(9, 21):
        env.observe(10 + i * DT, Sample(ts_s=i, chip_temps_c=[50 + i * 0.01], power_w=23.0))
    assert env.tripped and env.trip_reason.startswith("overpower")


finite = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e6, max_value=1e6)
anything = st.one_of(finite, st.just(float("nan")), st.just(float("inf")))


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(anything, st.integers(-50, 5000), anything, st.booleans(), anything,
                  st.one_of(st.none(), st.floats(-60, 260)), st.floats(0.0, 0.5)),
        min_size=2, max_size=60),
    st.floats(1.0, 200.0),
)
def test_no_proposal_and_no_sample_stream_gets_past_the_envelope(ticks, ramp):
    env, cfg = make(ramp_max_w_s=ramp)
    e = cfg.envelope
    now, prev = 10.0, None
    for i, (freq, vcore, fan, on, target, temp, gap) in enumerate(ticks):
        now += gap
        sample = Sample(ts_s=i, chip_temps_c=[temp]) if gap > 0.02 else None
        chk = env.observe(now, sample)
        out = env.enforce(now, Actuation(freq, vcore, fan, on, "mining", target, "p"))
        assert e.min_freq_mhz <= out.freq_mhz <= e.max_freq_mhz
        assert e.min_vcore_mv <= out.vcore_mv <= e.max_vcore_mv
        assert 0 <= out.fan_pct <= 100 and 0.0 <= out.target_w <= e.max_power_w
        if chk.hottest_c is not None and chk.hottest_c >= e.max_chip_temp_hard_c:
            assert out.mode == "tripped"
        if out.mode == "tripped":
            assert not out.chain_power_on and out.fan_pct == 100
        if out.chain_power_on:
            assert env.curve.supports(out.freq_mhz, out.vcore_mv)
            if prev is not None and prev.chain_power_on:
                assert env.curve.supports(out.freq_mhz, prev.vcore_mv)
                budget = ramp * min(gap, 2.5 * DT) + 1e-6
                t = chk.hottest_c
                step = env.model.power_w(out.freq_mhz, out.vcore_mv, t) - \
                    env.model.power_w(prev.freq_mhz, prev.vcore_mv, t)
                assert abs(step) <= budget
            elif prev is not None:
                assert out.freq_mhz == e.min_freq_mhz
        if prev is not None and out.mode != "tripped":
            assert abs(out.target_w - prev.target_w) <= ramp * min(gap, 2.5 * DT) + 1e-6
        assert math.isfinite(out.freq_mhz) and math.isfinite(out.target_w)
        prev = out


def test_chain_stays_down_until_the_first_sample_and_silence_before_it_is_no_trip():
    env, _ = make(sensor_stale_s=0.5)
    for i in range(20):
        env.observe(10.0 + i * DT, None)
        out = env.enforce(10.0 + i * DT, act())
        assert not out.chain_power_on and "no_sample_yet" in out.limits
    assert not env.tripped
    env.observe(12.0, Sample(ts_s=1.0, chip_temps_c=[None], chain_powered=False))
    assert env.enforce(12.0, act()).chain_power_on


def test_regulator_trip_clears_only_well_below_its_limit():
    env, _ = make(trip_hold_s=0.0, max_vr_temp_c=105.0)
    env.observe(10.0, Sample(ts_s=0, chip_temps_c=[50.0], vr_temp_c=106.0))
    assert env.tripped and env.trip_reason.startswith("vr_overtemp")
    env.observe(10.1, Sample(ts_s=1, chip_temps_c=[50.0], vr_temp_c=100.0))
    env.observe(10.2, Sample(ts_s=2, chip_temps_c=[50.1], vr_temp_c=99.0))
    assert env.tripped
    env.observe(10.3, Sample(ts_s=3, chip_temps_c=[50.0], vr_temp_c=94.0))
    assert not env.tripped


def test_outputs_follow_the_voltage_the_bridge_applied_not_the_one_asked():
    env, _ = make()
    t = Ticker(env)
    for _ in range(10):
        out = t.tick(act(freq=100.0))
    v0 = out.vcore_mv
    for _ in range(40):  # the voltage write never gets through: the bridge keeps v0
        out = t.tick(act(freq=400.0))
        env.applied(vcore_mv=v0)
        assert out.freq_mhz <= env.curve.max_freq_mhz(v0) + 1e-6
    assert env.last.vcore_mv == v0 and "vcore_first" in out.limits
    for _ in range(40):  # it gets through
        out = t.tick(act(freq=400.0))
    assert out.freq_mhz > env.curve.max_freq_mhz(v0)


def test_an_unconfirmed_fan_holds_the_frequency_and_a_failed_power_on_starts_over():
    env, _ = make()
    t = Ticker(env)
    for _ in range(10):
        out = t.tick(act(freq=100.0, fan=50))
    env.applied(fan_pct=30)  # the fan stayed lower than asked
    f0 = out.freq_mhz
    for _ in range(5):
        out = t.tick(act(freq=400.0, fan=50))
        env.applied(fan_pct=30)
        assert out.freq_mhz <= f0 + 1e-9 and "fan_unconfirmed" in out.limits
    env.applied(fan_pct=100)  # more air than asked is fine
    assert t.tick(act(freq=400.0, fan=50)).freq_mhz >= f0
    for _ in range(10):
        out = t.tick(act(freq=400.0))
    assert out.freq_mhz > 100.0
    env.applied(chain_power_on=False)  # the chain power write did not get through
    out = t.tick(act(freq=400.0))
    assert out.chain_power_on and out.freq_mhz == 100.0 and "power_on_at_min" in out.limits


def _powered_run(env: Envelope, t0: float, seconds: float, temps, power_w=15.0,
                 jitter_w=0.01) -> float:
    """Samples 0.1 s apart whose chain power follows the envelope's last output (the board
    powers the chain as told); `temps(i)` gives the chip readings. Returns the end time."""
    now = t0
    for i in range(round(seconds / DT)):
        last = env.last
        on = last is not None and last.chain_power_on
        jitter = jitter_w * (i % 5)
        env.observe(now, Sample(ts_s=now, chip_temps_c=temps(i),  # type: ignore[arg-type]
                                chain_powered=on, power_w=(power_w if on else 2.0) + jitter))
        env.enforce(now, act(freq=100.0))
        now += DT
    return now


def test_a_chip_channel_that_reads_nothing_while_powered_trips_after_sensor_frozen_s():
    env, _ = make(sensor_frozen_s=1.0, trip_hold_s=0.5)
    t = _powered_run(env, 10.0, 2.0, lambda i: [50.0 + 0.01 * (i % 3), 51.0 + 0.01 * (i % 4)])
    assert env.last.chain_power_on and not env.tripped
    t = _powered_run(env, t, 0.9, lambda i: [None, 51.0 + 0.01 * (i % 4)])
    assert not env.tripped  # a short gap is a missed read
    t = _powered_run(env, t, 0.3, lambda i: [None, 51.0 + 0.01 * (i % 4)])
    assert env.tripped and env.trip_reason.startswith("sensor_missing: chip_temps_c[0]")
    # it reads again (while the chain is down, or once it is back): clear, no second trip
    t = _powered_run(env, t, 10.0, lambda i: [50.0 + 0.01 * (i % 3), 51.0 + 0.01 * (i % 4)])
    assert not env.tripped and env.trips == 1 and env.last.chain_power_on


def test_a_channel_that_stays_dark_after_a_power_cycle_trips_again():
    env, _ = make(sensor_frozen_s=1.0, trip_hold_s=0.5)
    t = _powered_run(env, 10.0, 2.0, lambda i: [50.0 + 0.01 * (i % 3), 51.0 + 0.01 * (i % 4)])
    t = _powered_run(env, t, 1.5, lambda i: [None, 51.0 + 0.01 * (i % 4)])
    assert env.trips == 1
    # dark through the hold, the power-on and the grace after it: the channel is still
    # expected (it read before), so it trips again
    t = _powered_run(env, t, 3.0, lambda i: [None, 51.0 + 0.01 * (i % 4)])
    assert env.trips == 2


@pytest.mark.parametrize("temps, jitter_w", [
    pytest.param(lambda i: [None, 51.0 + 0.01 * (i % 4)], 0.01, id="one channel dark"),
    pytest.param(lambda i: [None, None], 0.01, id="every channel dark"),
    pytest.param(lambda i: [50.0, 51.0], 0.0, id="frozen readings"),
])
def test_a_sensor_fault_that_comes_back_after_every_power_on_stays_tripped_after_the_retries(
        temps, jitter_w):
    env, _ = make(sensor_frozen_s=1.0, trip_hold_s=0.5)
    t = _powered_run(env, 10.0, 2.0, lambda i: [50.0 + 0.01 * (i % 3), 51.0 + 0.01 * (i % 4)])
    t = _powered_run(env, t, 120.0, temps, jitter_w=jitter_w)
    trips = env.trips
    assert 1 <= trips <= SENSOR_TRIP_LIMIT
    assert env.tripped and env.clear_remaining_s(t) is None
    # frozen readings that stay put while the chain powers off are a stuck sensor: that trip
    # holds until the reading changes, it never gets as far as a retry
    assert trips == SENSOR_TRIP_LIMIT or env.trip_reason.startswith("sensor_frozen")
    if trips == SENSOR_TRIP_LIMIT:
        assert "stays tripped" in env.trip_reason and env.trip_final
    t = _powered_run(env, t, 600.0, temps, jitter_w=jitter_w)
    assert env.tripped and env.trips == trips
