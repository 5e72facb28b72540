"""The whole agent (runtime, governor, board link, chain driver) on the hash-board emulator's
two ptys: target steps, a heatwave, and faults while it runs."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from agent.app import build_grid, open_serial, wind_down_for
from agent.chain.board import BoardClient
from agent.chain.driver import ChainDriver
from agent.chain.settings import ChainSettings
from agent.chain.work import LocalWorkSource
from agent.clock import SystemClock
from agent.config import config_from_mapping
from agent.control.governor import Governor
from agent.control.runtime import Runtime
from hil.hashboard import HashBoardEmulator
from hil.report import largest_change_w
from tests.support.polling import poll_until, wait_emulated

EMU_DIFFICULTY = 2.0**-19  # agent.config accepts nonce_difficulty >= 1e-6


class AgentRig:
    def __init__(self, speed: float = 1.0, raw: dict[str, Any] | None = None,
                 **driver_settings: Any) -> None:
        self.emu = HashBoardEmulator(family="BM1370", chips=4, seed=5,
                                     difficulty=EMU_DIFFICULTY, speed=speed)
        self.emu.start()
        cfg: dict[str, Any] = {
            "chain": {"port": self.emu.chain_path, "chips": 4, "ticket_difficulty": 64,
                      "nonce_difficulty": EMU_DIFFICULTY},
            "board": {"port": self.emu.board_path},
            "log": {"status_period_s": 1.0},
        }
        for section, values in (raw or {}).items():
            cfg.setdefault(section, {}).update(values)
        self.config = config_from_mapping(cfg)
        self.clock = SystemClock()
        wake = threading.Event()
        self.board_port = open_serial(self.emu.board_path, "board", 115200, 0.02)
        self.board = BoardClient(self.board_port, psu_efficiency=self.config.board.psu_efficiency)
        self.driver = ChainDriver(open_serial(self.emu.chain_path, "chain", 115200, 0.05),
                                  ChainSettings.from_config(self.config.chain,
                                                            self.config.envelope,
                                                            **driver_settings),
                                  self.clock, LocalWorkSource(self.clock), board=self.board,
                                  wake=wake)
        self.governor = Governor(self.config, self.clock)
        self.driver.wind_down = wind_down_for(self.governor)
        self.lines: list[str] = []
        self.runtime = Runtime(self.clock, self.driver, self.board, self.governor, period_s=0.1,
                               status_period_s=1.0, wake=wake, status_out=self.lines.append,
                               on_stop=[self.board_port.close])
        if self.config.grid.broker_url:
            session, link = build_grid(self.config, self.runtime, self.clock)
            self.runtime.grid = session
            self.runtime.on_stop.insert(0, link.stop)
            self.link = link
            link.start()
        self.trace: list[tuple[float, float | None, float]] = []  # (t, measured W, hottest C)
        # the emulator's true state: (emulated s, board input W, core mV)
        self.truth: list[tuple[float, float, float]] = []
        self.code: int | None = None
        self._done = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True),
                         threading.Thread(target=self._sample, daemon=True)]
        for t in self._threads:
            t.start()

    def _run(self) -> None:
        self.code = self.runtime.run()

    def _sample(self) -> None:
        while not self._done.is_set():
            state = self.emu.state()
            self.trace.append((time.monotonic(), getattr(self.runtime.sample, "power_w", None),
                               float(state["max_chip_temp_c"])))
            self.truth.append((float(state["time_s"]), float(state["board_power_w"]),
                               float(state["vcore_mv"])))
            time.sleep(0.02)

    def emulated_s(self) -> float:
        return float(self.emu.state()["time_s"])

    def sleep_emulated(self, seconds: float) -> None:
        wait_emulated(self.emulated_s, seconds)

    @property
    def mode(self) -> str | None:
        return getattr(self.runtime.actuation, "mode", None)

    def stop(self) -> None:
        self.runtime.request_stop()
        self._threads[0].join(timeout=15)
        self._done.set()
        self._threads[1].join(timeout=2)
        self.emu.stop()


@pytest.fixture
def rig_factory() -> Iterator[Callable[..., AgentRig]]:
    rigs: list[AgentRig] = []

    def make(**kw: Any) -> AgentRig:
        rig = AgentRig(**kw)
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        rig.stop()


def _outside_band(rig: AgentRig, t_step: float, target_w: float) -> list[float]:
    """Emulated seconds after `t_step` at which the true board power was outside +-2 % of max
    power of the target."""
    band = 0.02 * rig.governor.max_power_w
    after = [(t - t_step, w) for t, w, _ in rig.truth if t >= t_step]
    assert len(after) > 20
    return [dt for dt, w in after if abs(w - target_w) > band]


def _largest_change_w(truth: list[tuple[float, float, float]], t0: float, t1: float) -> float:
    """Largest change of the true power between two moments at most 1 s apart."""
    return largest_change_w([(t, w) for t, w, _ in truth], t0, t1, 1.0)


def _one_s_average_peak_w(truth: list[tuple[float, float, float]], t0: float) -> float:
    pts = [(t, w) for t, w, _ in truth if t >= t0]
    peaks = [sum(ws) / len(ws) for ws in ([wk for tk, wk in pts[i:] if tk <= t + 1.0]
                                          for i, (t, _) in enumerate(pts)) if ws]
    return max(peaks)


def test_target_steps_100_30_100_settle_within_1s_and_stay_under_the_cap(rig_factory):
    rig = rig_factory()
    max_w = rig.governor.max_power_w
    assert rig.governor.caps()["max_w"] == math.floor(max_w)
    assert poll_until(lambda: rig.mode == "mining" and rig.driver.state == "mining", 30)
    t_on = rig.truth[0][0]
    # at 100 % (the default target is the rated power) for a few seconds: the model's error
    # has been measured at a steady load
    rig.sleep_emulated(6.0)
    for share in (0.3, 1.0):
        t_step = rig.emulated_s()
        rig.governor.set_target(share * max_w)  # the default ramp allows the step in < 0.4 s
        rig.sleep_emulated(2.5)
        outside = _outside_band(rig, t_step, share * max_w)
        assert not outside or max(outside) <= 1.0, (share, outside[-5:])
        if share == 0.3:  # the core voltage follows the frequency down
            assert rig.truth[-1][2] < 1100.0
    # 100 % of the rated power is reached on this board, and never exceeded (1 s average,
    # as a meter reads; single 20 ms samples within 1 %)
    peak_avg = _one_s_average_peak_w(rig.truth, t_on)
    assert peak_avg <= max_w, peak_avg
    assert max(w for _, w, _ in rig.truth) <= 1.01 * max_w
    assert rig.driver.stats(rig.clock.monotonic()).valid > 10
    assert any("mode=mining" in line for line in rig.lines)


def test_ramp_limit_holds_from_power_on_and_after_the_chain_restarts(rig_factory):
    ramp = 30.0
    rig = rig_factory(raw={"envelope": {"ramp_max_w_s": ramp}})
    max_w = rig.governor.max_power_w
    limit_w = ramp * 1.0 + 0.01 * max_w  # over any 1 s, plus 1 % of rated for sensor noise
    assert poll_until(lambda: rig.mode == "mining" and rig.driver.state == "mining", 30)
    t_on = rig.truth[0][0]
    assert poll_until(lambda: (rig.runtime.sample.power_w or 0) > 0.95 * max_w, 10)
    rig.sleep_emulated(0.5)
    t_hang = rig.emulated_s()
    assert _largest_change_w(rig.truth, t_on, t_hang) <= limit_w
    rig.emu.inject_fault("chain_hang")  # the driver resets and re-initialises the chain
    assert poll_until(lambda: rig.driver.recoveries >= 1, 10)
    assert poll_until(lambda: (rig.runtime.sample.power_w or 0) > 0.95 * max_w, 10)
    after = [(w, t) for t, w, _ in rig.truth if t >= t_hang]
    t_low = min(after)[1]  # the hang's own drop is the fault; the way back is the agent's
    assert min(after)[0] < 0.5 * max_w
    assert _largest_change_w(rig.truth, t_low, rig.emulated_s()) <= limit_w
    assert max(w for _, w, _ in rig.truth) <= 1.01 * max_w


def test_heatwave_derates_and_chips_stay_below_the_hard_limit(rig_factory):
    rig = rig_factory(speed=6.0)
    assert poll_until(lambda: rig.mode == "mining", 30)
    hard = rig.config.envelope.max_chip_temp_hard_c
    for ambient in range(25, 66, 5):  # 38 emulated seconds to 65 C, then hold
        rig.emu.set_ambient_c(float(ambient))
        rig.sleep_emulated(4.2)  # the emulator's seconds: a lagging one gets no faster heatwave
    assert poll_until(lambda: rig.governor.limited_by == "thermal", 20)
    rig.sleep_emulated(18.0)
    assert max(h for _, _, h in rig.trace) < hard
    assert rig.runtime.sample.power_w < 0.5 * rig.governor.max_power_w  # derated
    assert rig.code is None  # still running


def test_a_dead_chip_is_reset_after_the_governor_brought_the_load_down_at_the_ramp(rig_factory):
    ramp = 30.0
    rig = rig_factory(raw={"envelope": {"ramp_max_w_s": ramp}}, dead_min_s=2.0)
    max_w = rig.governor.max_power_w
    limit_w = ramp * 1.0 + 0.01 * max_w
    assert poll_until(lambda: rig.mode == "mining" and rig.driver.state == "mining", 30)
    assert poll_until(lambda: (rig.runtime.sample.power_w or 0) > 0.9 * max_w, 20)
    t_death = rig.emulated_s()
    rig.emu.inject_fault("chip_silent", chip=2)
    assert poll_until(lambda: rig.driver.reset_pending is not None, 20)
    assert "chip 2 (address 128) is dead" in rig.driver.reset_pending
    states: list[str] = []  # the driver's state at each control tick from here on
    tick = rig.runtime.tick

    def tick_noting_the_chain(now: float) -> Any:
        states.append(rig.driver.state)
        return tick(now)

    rig.runtime.tick = tick_noting_the_chain  # type: ignore[method-assign]
    t_pending = time.monotonic()
    assert poll_until(lambda: "chain reset" in rig.governor.mode_reason, 2)
    assert poll_until(lambda: rig.driver.recoveries >= 1, 15)
    waited_s = time.monotonic() - t_pending
    assert poll_until(lambda: "starting" in states, 15)
    # the reset came once the chips ran at the governor's lowest frequency, and then only after
    # the wind-down to the reset clock, through which the control loop ticked on (the steps
    # come one control period or more apart); the load went down at the ramp
    assert waited_s > 0.5 * (0.9 * max_w - rig.governor.min_w) / ramp
    winding = states[states.index("winding"):states.index("starting")]
    assert len(winding) >= 3 and set(winding) == {"winding"}
    assert poll_until(lambda: (rig.runtime.sample.power_w or 0) > 0.6 * max_w, 20)
    t_back = rig.emulated_s()
    assert _largest_change_w(rig.truth, t_death + 0.5, t_back) <= limit_w
    assert rig.code is None and rig.driver.addresses == [0, 64, 128, 192]


def test_with_the_psu_efficiency_set_the_agent_holds_the_wall_power(rig_factory):
    """The emulator's PSU is 92 % efficient; told so, the agent counts and holds wall watts."""
    rig = rig_factory(raw={"board": {"psu_efficiency": 0.92}})
    max_w = rig.governor.max_power_w
    assert poll_until(lambda: rig.mode == "mining" and rig.driver.state == "mining", 30)
    target = 0.6 * max_w
    rig.governor.set_target(target)
    rig.sleep_emulated(8.0)
    walls, boards = [], []
    for _ in range(20):
        st = rig.emu.state()
        walls.append(float(st["wall_power_w"]))
        boards.append(float(st["board_power_w"]))
        time.sleep(0.05)
    wall, board = sum(walls) / len(walls), sum(boards) / len(boards)
    assert abs(wall - target) <= 0.02 * max_w
    assert board == pytest.approx(0.92 * wall, rel=0.01)  # the board itself draws 8 % less
    assert rig.runtime.sample.power_w == pytest.approx(wall, abs=0.03 * max_w)


def test_faults_while_running_are_counted_and_survived(rig_factory):
    rig = rig_factory(raw={"chain": {"ticket_difficulty": 16}})
    assert poll_until(lambda: rig.driver.state == "mining", 30)
    rig.emu.inject_fault("serial_garbage", bytes=200)
    rig.emu.inject_fault("reply_corrupt", duration_s=1.0, probability=0.3)
    # ~20 invalid nonces (Poisson); at 5/s for 1 s a run with none that got through the
    # corruption (e**-5 and more) happened once in CI
    rig.emu.inject_fault("chip_hw_errors", chip=3, rate_hz=20.0, duration_s=1.0)
    assert poll_until(lambda: rig.driver.stats(rig.clock.monotonic()).crc_errors > 0, 5)
    assert poll_until(lambda: rig.driver.stats(rig.clock.monotonic()).chips[3].hw_errors > 0, 5)
    rig.emu.inject_fault("chain_hang")
    assert poll_until(lambda: rig.driver.recoveries >= 1, 10)
    # after the re-initialisation the load climbs back at the ramp and the governor reports
    # `starting` until it tracks the target again (the driver may be at its frequency of the
    # moment, `mining`, before that): a user sees `mode=mining` again in the status line
    assert poll_until(lambda: rig.mode == "mining" and rig.driver.state == "mining", 15), \
        (rig.mode, rig.driver.state, rig.driver.error)
    assert rig.code is None
    assert poll_until(lambda: "mode=mining" in rig.lines[-1], 3)


def test_stuck_sensors_idle_the_chain_safely(rig_factory):
    rig = rig_factory(raw={"envelope": {"sensor_frozen_s": 3.0}})
    assert poll_until(lambda: rig.driver.state == "mining", 30)
    for sensor in ("chip_temp", "board_temp", "vr_temp", "vin", "iin", "power"):
        rig.emu.inject_fault("sensor_stuck", sensor=sensor)
    assert poll_until(lambda: rig.mode == "tripped", 10)
    assert poll_until(lambda: not rig.emu.state()["chain_powered"], 5)
    assert rig.code is None  # the agent runs on, waiting for the sensors to come back


def test_a_signed_setpoint_over_mqtt_moves_the_measured_power(rig_factory, mosquitto, tmp_path):
    from cryptography.hazmat.primitives import serialization

    from tests.integration.conftest import KID, OPERATOR_KEY, operator_for

    pem = tmp_path / "operator.pub.pem"
    pem.write_bytes(OPERATOR_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    rig = rig_factory(raw={"grid": {
        "broker_url": mosquitto.url, "site": "site-a", "device": "dev-1",
        "operator_keys": [{"kid": KID, "path": str(pem)}], "state_dir": str(tmp_path / "state"),
        "restart_spread_s": 0.0, "telemetry_period_s": 0.5}})
    assert poll_until(lambda: rig.link.connected and rig.driver.state == "mining", 30)
    op = operator_for(mosquitto, tmp_path).connect()
    try:
        op.subscribe(["gridminer/site-a/dev-1/telemetry"])
        target = round(0.4 * rig.governor.max_power_w)
        _signed, replies = op.send("site-a", "dev-1", "setpoint", power_w=target, timeout_s=5.0)
        assert replies and replies[0].ok, replies
        assert replies[0].ack["applied_w"] == pytest.approx(target)
        assert poll_until(lambda: abs((rig.runtime.sample.power_w or 0) - target) < 2.0, 10)
        import cbor2

        deadline = time.monotonic() + 5
        telemetry: dict = {}
        while time.monotonic() < deadline and not telemetry.get("hashrate_ghs"):
            topic, payload, _props, _retain = op.messages.get(timeout=5)
            if topic.endswith("/telemetry"):
                telemetry = cbor2.loads(payload)
        assert telemetry["mode"] == "mining" and telemetry["chips_ok"] == 4
        assert telemetry["hashrate_ghs"] > 0 and telemetry["freq_mhz"] > 0
    finally:
        op.close()
