"""The home side without a broker (agent/home): Home Assistant's discovery config checked
against HA's documented keys and device_class/unit/state_class table, the state message, the
meter readings of Shelly, Tasmota and HA, the surplus follower, the local target and its
arbitration with the grid, and the session's handling of what the home broker sends."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace
from typing import Any

import pytest

from agent.home import discovery
from agent.home.discovery import Topics
from agent.home.link import Message
from agent.home.meter import MeterError, MeterReader
from agent.home.session import HomeSession, HomeSettings
from agent.home.surplus import SurplusFollower, SurplusSettings
from agent.home.target import LocalTarget, grid_in_charge
from agent.surface.view import DeviceView, Identity
from tests.support.ha_rules import ha_problems

IDENTITY = Identity(family="BM1370", chips=4, small_cores=2040, version="gridminer-9",
                    hostname="shed", mac="AA:BB:CC:DD:EE:FF")
VIEW = DeviceView(identity=IDENTITY, uptime_s=10.0, mode="mining", board_ok=True,
                  target_w=60.0, min_w=19.0, max_w=70.0, power_w=59.4, chip_temp_c=61.2,
                  board_temp_c=40.0, hashrate_ghs=4123.0, energy_j_total=7.2e6,
                  shares_total={"accepted": 12, "rejected": 1})
TOPICS = Topics.for_device("homeassistant", "shed_miner", "gridminer/shed_miner")


def _config(**kw: Any) -> dict[str, Any]:
    return discovery.config(VIEW, "shed_miner", "Shed miner", TOPICS, **kw)


@pytest.mark.parametrize("local_control", [False, True])
@pytest.mark.parametrize("follows_surplus", [False, True])
def test_the_discovery_config_passes_home_assistants_rules(local_control: bool,
                                                          follows_surplus: bool) -> None:
    config = _config(follows_surplus=follows_surplus, local_control=local_control)
    assert ha_problems(TOPICS.discovery, config) == []
    cmps = config["components"]
    assert ("power_limit" in cmps) is local_control and ("mining" in cmps) is local_control
    assert ("surplus" in cmps) is follows_surplus
    assert cmps["energy"]["state_class"] == "total_increasing"
    assert cmps["energy"]["unit_of_measurement"] == "kWh"
    if local_control:
        assert (cmps["power_limit"]["min"], cmps["power_limit"]["max"]) == (19.0, 70.0)
    assert config["availability"] == [{"topic": "gridminer/shed_miner/availability"}]


def test_the_checker_catches_what_home_assistant_refuses() -> None:
    config = _config(follows_surplus=False, local_control=True)
    config["components"]["power"]["unit_of_measurement"] = "kWh"
    config["components"]["energy"]["state_class"] = "measurement"
    del config["components"]["mining"]["command_topic"]
    config["components"]["chip_temp"]["unique_id"] = config["components"]["power"]["unique_id"]
    del config["origin"]
    problems = " | ".join(ha_problems("homeassistant/device/shed miner/config", config))
    for expected in ("power: unit kWh", "energy: state_class measurement", "mining: missing",
                     "unique_id repeated", "origin", "topic"):
        assert expected in problems, problems


def test_the_state_message_carries_every_components_value() -> None:
    config = _config(follows_surplus=True, local_control=True)
    state = discovery.state(VIEW, control="surplus", surplus_w=55.0, power_limit_w=70.0,
                            mining=True)
    json.dumps(state)  # JSON as published
    for oid, c in config["components"].items():
        m = re.fullmatch(r"\{\{ value_json\.(\w+) \}\}", c["value_template"])
        assert m is not None, oid
        assert state.get(m.group(1)) is not None, (oid, m.group(1))
        if "options" in c:
            assert state[m.group(1)] in c["options"], oid
    assert state["energy_kwh"] == 2.0 and state["hashrate_ths"] == 4.123
    assert state["mining"] == "ON"
    unknown = discovery.state(DeviceView(identity=IDENTITY, uptime_s=0, mode="starting",
                                         board_ok=False), control="default", surplus_w=None,
                              power_limit_w=None, mining=True)
    assert unknown["power_w"] is None and unknown["chip_temp_c"] is None  # HA: unknown


# ---- the meter ------------------------------------------------------------------------------
@pytest.mark.parametrize(("reader", "payload", "export_w"), [
    (MeterReader(), b"-350.5", 350.5),  # HA statestream: grid power, import positive
    (MeterReader(), b" 120 ", -120.0),
    (MeterReader("ENERGY.Power"), b'{"Time":"x","ENERGY":{"Power":-42}}', 42.0),  # Tasmota
    (MeterReader("total_act_power"), b'{"id":0,"total_act_power":-812.3}', 812.3),  # Shelly
    (MeterReader("emeters.1.power"), b'{"emeters":[{"power":1},{"power":-5}]}', 5.0),
    (MeterReader(positive="export", scale=1000.0), b"0.4", 400.0),  # export in kW
])
def test_meter_readings_become_export_watts(reader: MeterReader, payload: bytes,
                                            export_w: float) -> None:
    assert reader.export_w(payload) == pytest.approx(export_w)


@pytest.mark.parametrize(("reader", "payload", "why"), [
    (MeterReader(), b"unavailable", "not a number"),
    (MeterReader(), b"nan", "not a finite"),
    (MeterReader(), b"\xff\xfe", "UTF-8"),
    (MeterReader("ENERGY.Power"), b"12", "missing at 'ENERGY'"),
    (MeterReader("ENERGY.Power"), b"{not json", "not JSON"),
    (MeterReader("a.3"), b'{"a":[1]}', "missing at '3'"),
    (MeterReader("a"), b'{"a":true}', "not a number"),
    (MeterReader("a"), b'{"a":null}', "not a number"),
])
def test_a_meter_message_without_a_reading_is_refused_with_the_reason(
        reader: MeterReader, payload: bytes, why: str) -> None:
    with pytest.raises(MeterError, match=re.escape(why)):
        reader.export_w(payload)


# ---- the surplus follower --------------------------------------------------------------------
def _follower(**kw: Any) -> SurplusFollower:
    settings = SurplusSettings(**{"margin_w": 5.0, "rise_tau_s": 20.0, "fall_tau_s": 1.0,
                                  "stale_s": 10.0, "dwell_s": 30.0, **kw})
    return SurplusFollower(settings, min_w=19.0, max_w=70.0)


def test_the_follower_holds_export_plus_own_load_minus_the_margin() -> None:
    f = _follower()
    assert f.want_w(0.0) is None  # nothing heard yet: no load
    f.observe(0.0, export_w=50.0, load_w=0.0)
    assert f.want_w(0.0) == pytest.approx(45.0)
    f.observe(1.0, export_w=5.0, load_w=45.0)  # the miner took it: the same surplus
    assert f.want_w(1.0) == pytest.approx(45.0)
    f.observe(2.0, export_w=200.0, load_w=45.0)
    rising = f.want_w(2.0)  # one second of a 20 s rise towards 245 W
    assert rising is not None and 45.0 < rising < 60.0


def test_a_cloud_brings_the_load_down_fast_and_the_sun_back_slowly() -> None:
    f = _follower()
    f.observe(0.0, 65.0, 0.0)
    f.observe(1.0, -30.0, 60.0)  # a cloud: importing 30 W
    down = f.want_w(1.0)
    assert down is not None and down < 40.0  # most of the drop within a second (tau 1 s)
    load = down
    for t in range(2, 6):  # the sun is back: 65 W to share again
        f.observe(float(t), 65.0 - load, load)
        load = f.want_w(float(t)) or 0.0
    assert down < load < 45.0  # four seconds of a 20 s rise: on the way, not there yet


def test_too_little_surplus_means_standby_with_a_least_time_on_and_off() -> None:
    f = _follower(fall_tau_s=0.0, rise_tau_s=0.0)
    f.observe(0.0, 40.0, 0.0)
    assert f.want_w(0.0) == pytest.approx(35.0)
    f.observe(5.0, -20.0, 35.0)  # 15 W left: below min_w, but on for only 5 s
    assert f.want_w(5.0) == 19.0
    f.observe(31.0, -20.0, 35.0)
    assert f.want_w(31.0) is None  # off after the dwell
    f.observe(40.0, 26.0, 0.0)  # 26 W: above min_w, below min_w + margin
    assert f.want_w(40.0) is None
    f.observe(45.0, 40.0, 0.0)
    assert f.want_w(45.0) is None  # off for only 14 s
    f.observe(62.0, 40.0, 0.0)
    assert f.want_w(62.0) == pytest.approx(35.0)


def test_a_silent_meter_means_no_load_at_once() -> None:
    f = _follower()
    f.observe(0.0, 60.0, 0.0)
    assert f.want_w(9.0) is not None
    assert f.want_w(10.5) is None  # stale: no dwell for a fail-safe
    f.observe(11.0, 60.0, 0.0)
    assert f.want_w(11.0) is None  # back, but off for less than the dwell
    f.observe(40.6, 60.0, 0.0)
    assert f.want_w(40.6) is not None


# ---- the local target -------------------------------------------------------------------------
class FakeGovernor:
    ramp_max_w_s = 21.0

    def __init__(self) -> None:
        self.calls: list[tuple[str, float | None]] = []

    def caps(self) -> dict[str, Any]:
        return {"min_w": 19, "max_w": 70}

    def set_target(self, power_w: float, ramp_w_s: float | None = None) -> None:
        self.calls.append(("setpoint", power_w))

    def standby(self, ramp_w_s: float | None = None) -> None:
        self.calls.append(("standby", None))

    def curtail(self, ramp_w_s: float | None = None) -> None:
        self.calls.append(("curtail", None))


def test_the_owner_sets_a_limit_within_the_envelope_and_switches_mining() -> None:
    gov = FakeGovernor()
    t = LocalTarget(gov, 70.0, None, lambda now: False)
    t.service(0.0)
    assert gov.calls == [("setpoint", 70.0)] and t.controller == "default"
    assert t.set_limit(500.0) == 70.0 and t.set_limit(3.0) == 19.0
    t.set_limit(40.0)
    t.service(0.1)
    assert gov.calls[-1] == ("setpoint", 40.0) and t.controller == "local"
    t.service(0.2)
    assert len(gov.calls) == 2  # unchanged: not written again
    t.mining = False
    t.service(0.3)  # down to the floor at the ramp first: 21 W at 21 W/s, then held 2 s
    assert gov.calls[-1] == ("curtail", None)
    t.service(3.2)
    assert gov.calls[-1] == ("curtail", None)
    t.service(3.3)
    assert gov.calls[-1] == ("standby", None)
    t.mining = True
    t.service(3.4)
    assert gov.calls[-1] == ("setpoint", 40.0)


def test_a_signed_grid_command_always_wins_and_control_comes_back_after_it() -> None:
    gov = FakeGovernor()
    runtime = SimpleNamespace(grid=SimpleNamespace(active=None, hold_until_s=5.0))
    t = LocalTarget(gov, 70.0, None, grid_in_charge(runtime))
    t.set_limit(30.0)
    t.service(0.0)
    assert gov.calls == [] and t.controller == "grid"  # the restart hold
    runtime.grid.hold_until_s = None
    t.service(1.0)
    assert gov.calls == [("setpoint", 30.0)]
    runtime.grid.active = object()  # a signed command took over (the session applied it)
    t.set_limit(25.0)
    t.mining = False
    t.service(2.0)
    assert gov.calls == [("setpoint", 30.0)] and t.controller == "grid"
    runtime.grid.active = None  # it lapsed; the session applied the default
    t.service(3.0)  # the load comes down to the floor before the chain is powered off
    assert gov.calls[-1] == ("curtail", None) and t.controller == "local"
    assert not grid_in_charge(SimpleNamespace(grid=None))(0.0)


def test_the_follower_is_capped_by_the_owners_limit_and_moves_past_a_dead_band() -> None:
    gov = FakeGovernor()
    f = _follower(rise_tau_s=0.0)
    t = LocalTarget(gov, 70.0, f, lambda now: False)
    t.service(0.0)
    assert gov.calls == [("standby", None)] and t.controller == "surplus"
    f.observe(1.0, 50.0, 0.0)
    t.service(1.0)
    assert gov.calls[-1] == ("setpoint", pytest.approx(45.0))
    f.observe(2.0, 5.3, 45.0)  # 0.3 W more surplus: inside the dead band (0.7 W)
    t.service(2.0)
    assert len(gov.calls) == 2
    t.set_limit(30.0)
    t.service(3.0)
    assert gov.calls[-1] == ("setpoint", 30.0) and t.controller == "local"


# ---- the session ------------------------------------------------------------------------------
class FakeLink:
    def __init__(self) -> None:
        self.connects = 1
        self.connected = True
        self.inbox: list[Message] = []
        self.sent: list[tuple[str, Any, bool]] = []

    def drain(self) -> list[Message]:
        out, self.inbox = self.inbox, []
        return out

    def publish(self, topic: str, payload: Any, retain: bool = False) -> None:
        self.sent.append((topic, payload, retain))


def _session(local_control: bool = True, discovery_on: bool = True,
             follower: SurplusFollower | None = None) -> tuple[HomeSession, FakeLink,
                                                                 FakeGovernor]:
    link, gov = FakeLink(), FakeGovernor()
    settings = HomeSettings(device_id="shed_miner", name="Shed miner", topics=TOPICS,
                            discovery=discovery_on, local_control=local_control,
                            meter_topic="home/meter", state_period_s=5.0)
    clock = SimpleNamespace(monotonic=lambda: 0.0)
    target = LocalTarget(gov, 70.0, follower, lambda now: False)
    return HomeSession(link, settings, lambda: VIEW, target, clock), link, gov


def _sent(link: FakeLink, topic: str) -> list[Any]:
    return [payload for t, payload, _ in link.sent if t == topic]


def test_the_device_is_announced_on_connect_and_again_on_home_assistants_birth() -> None:
    session, link, _gov = _session()
    session.service(0.0)
    configs = _sent(link, TOPICS.discovery)
    assert len(configs) == 1 and json.loads(configs[0])["components"]
    assert all(r for t, _, r in link.sent if t == TOPICS.discovery)  # retained
    assert len(_sent(link, TOPICS.state)) == 1
    link.inbox.append(Message(TOPICS.birth, b"offline"))
    session.service(1.0)
    link.inbox.append(Message(TOPICS.birth, b"online"))
    session.service(2.0)
    session.service(4.1)  # within the announce spread
    assert len(_sent(link, TOPICS.discovery)) == 2
    link.connects += 1  # a reconnect
    session.service(4.2)
    assert len(_sent(link, TOPICS.discovery)) == 3


def test_discovery_off_removes_the_device() -> None:
    session, link, _gov = _session(discovery_on=False)
    session.service(0.0)
    assert link.sent[0] == (TOPICS.discovery, b"", True)


def test_local_commands_act_only_when_enabled_and_bad_ones_are_refused() -> None:
    session, link, gov = _session()
    session.service(0.0)
    for payload in (b"lots", b"nan", b"inf"):
        link.inbox.append(Message(TOPICS.set_power, payload))
    link.inbox.append(Message(TOPICS.set_mining, b"maybe"))
    session.service(0.1)
    assert session.counters["command_refused"] == 4 and gov.calls == [("setpoint", 70.0)]
    link.inbox.append(Message(TOPICS.set_power, b"33.5"))
    session.service(0.2)
    assert gov.calls[-1] == ("setpoint", 33.5)
    state = json.loads(_sent(link, TOPICS.state)[-1])
    assert state["power_limit_w"] == 33.5 and state["control"] == "local"
    link.inbox.append(Message(TOPICS.set_mining, b"OFF"))
    session.service(0.3)
    assert gov.calls[-1] == ("curtail", None)  # then standby, once at the floor
    assert json.loads(_sent(link, TOPICS.state)[-1])["mining"] == "OFF"
    closed, link2, gov2 = _session(local_control=False)
    link2.inbox.append(Message(TOPICS.set_power, b"20"))
    closed.service(0.0)
    assert gov2.calls == [("setpoint", 70.0)] and closed.counters["ignored"] == 1


def test_meter_readings_feed_the_follower_and_bad_ones_are_counted() -> None:
    follower = _follower(rise_tau_s=0.0)
    session, link, gov = _session(follower=follower)
    link.inbox += [Message("home/meter", b"-40"), Message("home/meter", b"garbage")]
    session.service(0.0)
    assert session.counters["meter"] == 1 and session.counters["meter_refused"] == 1
    # VIEW's power (59.4 W) counts as the miner's share of the surplus
    assert follower.surplus_w == pytest.approx(99.4)
    assert gov.calls[-1] == ("setpoint", 70.0)
