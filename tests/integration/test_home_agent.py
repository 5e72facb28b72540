"""`gridminer agent` with a [home] broker, as Home Assistant sees it on a real Mosquitto: the
device discovery config (checked against HA's documented rules), availability, a state message
with every component's value, re-announcement on HA's birth; the owner's local control moves the
measured power inside the envelope, and a signed grid command wins over it until it lapses."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives import serialization
from paho.mqtt.enums import CallbackAPIVersion

from hil.broker import Mosquitto
from tests.integration.conftest import KID, OPERATOR_KEY, operator_for
from tests.support.agent_process import ROOT, stop_process
from tests.support.ha_rules import ha_problems
from tests.support.polling import poll_until

DISCOVERY = "homeassistant/device/shed/config"
BASE = "gridminer/shed"


@dataclass
class Recorder:
    """A plain MQTT client, as Home Assistant is one: every message with its retain flag."""

    broker: Mosquitto
    seen: list[tuple[str, bytes, bool]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="home-assistant")
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", self.broker.port)
        self.client.loop_start()
        done = self.client.subscribe([("homeassistant/#", 1), (f"{BASE}/#", 1)])
        assert done[0] == mqtt.MQTT_ERR_SUCCESS

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        with self._lock:
            self.seen.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

    def on(self, topic: str) -> list[bytes]:
        with self._lock:
            return [p for t, p, _ in self.seen if t == topic]

    def states(self) -> list[dict[str, Any]]:
        return [json.loads(p) for p in self.on(f"{BASE}/state")]

    def publish(self, topic: str, payload: str) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@dataclass
class Home:
    broker: Mosquitto
    ha: Recorder
    agent: subprocess.Popen[bytes]
    tmp: Path


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Home]:
    tmp = tmp_path_factory.mktemp("home")
    pem = tmp / "operator.pub.pem"
    pem.write_bytes(OPERATOR_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    emu = subprocess.Popen([sys.executable, "-m", "agent", "emulate", "--chips", "4"],
                           cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    with Mosquitto() as broker, open(tmp / "agent.err", "w") as err:
        ha = Recorder(broker)
        agent = None
        try:
            assert emu.stdout is not None
            info = json.loads(emu.stdout.readline())
            config = tmp / "agent.toml"
            config.write_text(
                "[grid]\nrestart_spread_s = 0.0\ntelemetry_period_s = 0.5\n"
                f'[home]\nbroker_url = "{broker.url}"\ndevice_id = "shed"\n'
                'name = "Shed miner"\nstate_period_s = 0.5\nlocal_control = true\n')
            agent = subprocess.Popen(
                [sys.executable, "-m", "agent", "agent", "--config", str(config),
                 "--chain", info["chain"], "--board", info["board"],
                 "--nonce-difficulty", repr(info["difficulty"]), "--broker", broker.url,
                 "--site", "s1", "--device", "d1", "--operator-key", str(pem), "--kid", KID,
                 "--state-dir", str(tmp / "state")],
                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
            yield Home(broker, ha, agent, tmp)
        finally:
            if agent is not None:
                stop_process(agent, 20)
            ha.close()
            stop_process(emu, 10)


def _power_near(home: Home, power_w: float, tol_w: float = 2.5) -> bool:
    states = home.ha.states()[-4:]
    return len(states) == 4 and all(
        s["power_w"] is not None and abs(s["power_w"] - power_w) <= tol_w for s in states)


def test_home_assistant_discovers_the_device_and_reads_every_value(home: Home) -> None:
    configs = poll_until(lambda: home.ha.on(DISCOVERY), 30)
    assert configs, (home.tmp / "agent.err").read_text()[-2000:]
    config = json.loads(configs[0])
    assert ha_problems(DISCOVERY, config) == []
    cmps = config["components"]
    assert {"power", "energy", "chip_temp", "board_temp", "hashrate", "mode", "setpoint",
            "shares_accepted", "power_limit", "mining"} <= set(cmps)
    assert cmps["power_limit"]["min"] < cmps["power_limit"]["max"]
    assert poll_until(lambda: b"online" in home.ha.on(f"{BASE}/availability"), 10)
    # once mining, one state message carries every component's value
    keys = {c["value_template"].removeprefix("{{ value_json.").removesuffix(" }}")
            for c in cmps.values()}
    full = poll_until(lambda: next((s for s in reversed(home.ha.states()) if s["mode"] == "mining"
                                    and all(s.get(k) is not None for k in keys)), None), 60)
    assert full, home.ha.states()[-1:]
    assert full["hashrate_ths"] > 0 and full["energy_kwh"] > 0 and full["mining"] == "ON"
    # Home Assistant restarted: its birth message brings the config again
    before = len(home.ha.on(DISCOVERY))
    home.ha.publish("homeassistant/status", "online")
    assert poll_until(lambda: len(home.ha.on(DISCOVERY)) > before, 5)


def test_local_control_moves_the_load_and_a_signed_grid_command_wins(home: Home) -> None:
    assert poll_until(lambda: any(s["mode"] == "mining" for s in home.ha.states()), 60)
    limit = json.loads(home.ha.on(DISCOVERY)[-1])["components"]["power_limit"]
    low, high = limit["min"], limit["max"]
    home.ha.publish(f"{BASE}/set/power_w", str(high + 500))  # clamped to the envelope
    assert poll_until(lambda: home.ha.states()[-1]["power_limit_w"] == high, 5)
    local_w = round(low + 0.3 * (high - low))
    home.ha.publish(f"{BASE}/set/power_w", str(local_w))
    assert poll_until(lambda: home.ha.states()[-1]["control"] == "local", 5)
    assert poll_until(lambda: _power_near(home, local_w), 20), home.ha.states()[-3:]
    grid_w = round(low + 0.7 * (high - low))
    op = operator_for(home.broker, home.tmp).connect()
    try:
        _signed, replies = op.send("s1", "d1", "setpoint", power_w=grid_w, validity_s=12.0,
                                   timeout_s=5.0)
        assert replies and replies[0].ok, replies
    finally:
        op.close()
    lapse_s = time.monotonic() + 12.0
    assert poll_until(lambda: home.ha.states()[-1]["control"] == "grid", 5)
    home.ha.publish(f"{BASE}/set/power_w", str(low))  # the owner asks for less: the grid wins
    home.ha.publish(f"{BASE}/set/mining", "OFF")
    assert poll_until(lambda: _power_near(home, grid_w), 10), home.ha.states()[-3:]
    while time.monotonic() < lapse_s - 1.0:
        assert home.ha.states()[-1]["control"] == "grid"
        assert home.ha.states()[-1]["mode"] == "mining"
        time.sleep(0.2)
    # the command lapsed: the owner's last word (mining off) takes over
    assert poll_until(lambda: home.ha.states()[-1]["control"] == "local", 5)
    assert poll_until(lambda: home.ha.states()[-1]["mode"] == "standby", 20), home.ha.states()[-3:]
    home.ha.publish(f"{BASE}/set/mining", "ON")
    assert poll_until(lambda: _power_near(home, low, 3.0), 30), home.ha.states()[-3:]


def test_stopping_the_agent_marks_the_device_offline(home: Home) -> None:
    stop_process(home.agent, 20)
    assert home.agent.returncode == 0
    assert poll_until(lambda: home.ha.on(f"{BASE}/availability")[-1:] == [b"offline"], 5)


def test_discovery_off_removes_the_device_from_home_assistant(mosquitto: Mosquitto) -> None:
    """A device announced once (retained) is gone for every later subscriber once the owner
    turns discovery off: the home link publishes the empty retained config on connect."""
    from types import SimpleNamespace

    from agent.home.discovery import Topics
    from agent.home.link import HomeLink
    from agent.home.session import HomeSession, HomeSettings
    from agent.home.target import LocalTarget
    from agent.surface.view import DeviceView, Identity

    topics = Topics.for_device("homeassistant", "shed", BASE)
    clock = SimpleNamespace(monotonic=time.monotonic)
    view = DeviceView(identity=Identity(family="BM1370", chips=4, small_cores=2040,
                                        version="gridminer-9", hostname="shed",
                                        mac="AA:BB:CC:DD:EE:FF"),
                      uptime_s=1.0, mode="standby", board_ok=True, min_w=19.0, max_w=70.0)
    governor = SimpleNamespace(caps=lambda: {"min_w": 19, "max_w": 70},
                               set_target=lambda *a: None, standby=lambda *a: None,
                               curtail=lambda *a: None)

    def run_once(discovery_on: bool) -> None:
        link = HomeLink(mosquitto.url, "gridminer-shed", topics.availability, (topics.birth,))
        session = HomeSession(link, HomeSettings(device_id="shed", name="Shed", topics=topics,
                                                 discovery=discovery_on),
                              lambda: view, LocalTarget(governor, 70.0, None,
                                                        lambda now: False), clock)
        link.start()
        try:
            assert poll_until(lambda: link.connected and link.connects >= 1, 5)
            session.service(time.monotonic())  # announces (or removes) on the new connection
        finally:
            link.stop()

    run_once(True)
    announced = Recorder(mosquitto)
    try:
        assert poll_until(lambda: any(p for p in announced.on(DISCOVERY)), 5)  # retained
    finally:
        announced.close()
    run_once(False)
    later = Recorder(mosquitto)
    try:
        assert poll_until(lambda: b"offline" in later.on(f"{BASE}/availability"), 5)
        assert later.on(DISCOVERY) == []  # no retained config left
    finally:
        later.close()
