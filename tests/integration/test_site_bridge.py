"""Two real Mosquittos on loopback: a site broker bridged (agent.site.bridge) to a central one.
A signed command published on the central broker reaches the site's `site/cmd` with its MQTT 5
properties, the site controller's ack, retained status and telemetry reach the central broker,
and device topics stay on the site broker in both directions."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

import cbor2
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.grid import cose
from agent.grid.broker import release_sockets
from agent.site.bridge import bridge_config
from hil.broker import Mosquitto
from tests.integration.conftest import OPERATOR_KEY, Observer, operator_for

SITE = "plant-7"
TREE = f"gridminer/{SITE}"
LINK_STATE = f"$SYS/broker/connection/gridminer-bridge-{SITE}/state"


class BridgedMosquitto(Mosquitto):
    """A site broker whose config ends with a bridge section."""

    def __init__(self, bridge: str, **kw: Any) -> None:
        self.bridge = bridge
        super().__init__(**kw)

    def _write_config(self) -> None:
        super()._write_config()
        conf = self.folder / "mosquitto.conf"
        conf.write_text(conf.read_text() + "\n" + self.bridge)


class Client:
    """A plain MQTT 5 client that queues (topic, payload, properties, retain)."""

    def __init__(self, broker: Mosquitto, client_id: str, topics: list[str],
                 **auth: Any) -> None:
        self.messages: queue.Queue[tuple[str, bytes, Any, bool]] = queue.Queue()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=mqtt.MQTTv5)
        if auth:
            self.client.username_pw_set(auth["username"], auth["password"])
        subscribed = threading.Event()
        self.client.on_message = lambda c, u, m: self.messages.put(
            (m.topic, bytes(m.payload), m.properties, bool(m.retain)))
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        if topics:
            self.client.subscribe([(t, 1) for t in topics])
            assert subscribed.wait(5), "subscription"
        self.seen: list[tuple[str, bytes, Any, bool]] = []

    def publish(self, topic: str, data: Any, *, retain: bool = False, qos: int = 1,
                props: Properties | None = None) -> None:
        payload = data if isinstance(data, bytes) else cbor2.dumps(data)
        self.client.publish(topic, payload, qos=qos, retain=retain,
                            properties=props).wait_for_publish(5)

    def wait_for(self, topic: str, timeout_s: float = 10.0) -> tuple[str, bytes, Any, bool]:
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                item = self.messages.get(timeout=left)
            except queue.Empty:
                break
            self.seen.append(item)
            if item[0] == topic:
                return item
        raise AssertionError(f"nothing on {topic} in {timeout_s} s; saw "
                             f"{[s[0] for s in self.seen[-8:]]}")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        release_sockets(self.client)


def status(state: str = "online") -> dict[str, Any]:
    return {"v": 1, "state": state, "bd": 1, "fw": "t", "mode": "mining", "ts": 1,
            "caps": {"min_w": 1000, "max_w": 1_500_000, "ramp_max_w_s": 100_000, "chips": 9,
                     "chip_model": "site", "hashrate_max_ghs": 1.0e6}}


@pytest.fixture
def central() -> Iterator[Mosquitto]:
    with Mosquitto() as broker:
        yield broker


def wait_link_up(watcher: Client) -> None:
    deadline = time.monotonic() + 15.0
    while True:
        _, payload, _, _ = watcher.wait_for(LINK_STATE, deadline - time.monotonic())
        if payload == b"1":
            return


def test_site_controller_topics_cross_the_bridge_device_topics_do_not(central, tmp_path):
    watcher = Client(central, "watcher", [LINK_STATE, f"{TREE}/#"])
    with BridgedMosquitto(bridge_config(SITE, central.url)) as site_broker:
        controller = Client(site_broker, "site-controller", [f"{TREE}/+/cmd"])
        op = operator_for(central, tmp_path).connect()
        try:
            wait_link_up(watcher)
            # the site controller's retained status goes up, a device's stays local
            controller.publish(f"{TREE}/dev-1/status", status(), retain=True)
            controller.publish(f"{TREE}/site/status", status(), retain=True)
            assert cbor2.loads(watcher.wait_for(f"{TREE}/site/status")[1])["state"] == "online"

            # a signed command from the central broker lands on site/cmd, properties intact
            reply = op.response_topic(SITE, "site")
            op.subscribe([reply])
            signed = op.signer.build(SITE, "site", "setpoint", seq=op.seq.next(op.signer.kid),
                                     power_w=1_200_000, validity_s=900)
            op.publish_command(signed, reply, b"corr-1")
            topic, payload, props, _ = controller.wait_for(f"{TREE}/site/cmd")
            assert payload == signed.payload
            sign1 = cose.decode(payload)
            cose.verify(sign1, {b"op-test": OPERATOR_KEY.public_key()}, topic.encode())
            cmd = cbor2.loads(sign1.payload)
            assert cmd["power_w"] == 1_200_000 and cmd["dev"] == "site"
            assert props.ResponseTopic == reply and props.CorrelationData == b"corr-1"
            assert 0 < props.MessageExpiryInterval <= 900

            # the ack on the operator's Response Topic goes back up with its correlation
            ack_props = Properties(PacketTypes.PUBLISH)
            ack_props.CorrelationData = props.CorrelationData
            controller.publish(props.ResponseTopic, {"v": 1, "id": cmd["id"], "seq": cmd["seq"],
                                                     "result": "accepted"}, props=ack_props)
            replies = op.collect(signed, {"site"}, b"corr-1", timeout_s=10.0)
            assert [r.ack["result"] for r in replies] == ["accepted"]

            # device telemetry first, then the site's: only the site's crosses
            controller.publish(f"{TREE}/dev-1/telemetry", {"v": 1, "power_w": 1150}, qos=0)
            controller.publish(f"{TREE}/site/telemetry", {"v": 1, "power_w": 1_190_000}, qos=0)
            watcher.wait_for(f"{TREE}/site/telemetry")
            assert not [s for s in watcher.seen if "/dev-1/" in s[0]]

            # commands for a device or the whole site from the central broker stay there
            for target in ("dev-1", "all"):
                op.publish_raw(f"{TREE}/{target}/cmd", b"\x00", expiry_s=60)
            op.publish_command(op.signer.build(SITE, "site", "ping",
                                               seq=op.seq.next(op.signer.kid)))
            controller.wait_for(f"{TREE}/site/cmd")
            assert [s[0] for s in controller.seen].count(f"{TREE}/site/cmd") == 2
            assert not [s for s in controller.seen if s[0] != f"{TREE}/site/cmd"]

            # a late subscriber on the central broker gets the site's status as retained
            late = Observer(central, [f"{TREE}/+/status"])
            try:
                topic, data, retained = late.wait_for(lambda t, d, r: t.endswith("/status"))
                assert (topic, retained, data["caps"]["chip_model"]) == (
                    f"{TREE}/site/status", True, "site")
            finally:
                late.close()
        finally:
            op.close()
            controller.close()
    watcher.wait_for(LINK_STATE)  # the site broker gone: its bridge's Will says 0
    assert watcher.seen[-1][1] == b"0"
    watcher.close()


def test_bridge_over_tls_with_a_per_site_account(tmp_path):
    """The central broker requires TLS and a password, and its ACL lets the bridge's account
    (device `site` of the site, spec §1) write only the site's own topics and read its cmd."""
    with Mosquitto(tls=True, devices={"site": SITE}) as central:
        text = bridge_config(SITE, central.tls_url, ca_file=central.ca_file, username="site",
                             password=central.password("site"))
        with BridgedMosquitto(text) as site_broker:
            controller = Client(site_broker, "site-controller", [f"{TREE}/site/cmd"])
            op = operator_for(central, tmp_path, username="operator",
                              password=central.password("operator")).connect()
            try:
                op.subscribe([f"{TREE}/site/status"])
                controller.publish(f"{TREE}/site/status", status(), retain=True)
                deadline = time.monotonic() + 15.0
                topic = payload = None
                while topic != f"{TREE}/site/status":  # it crosses once the bridge is up
                    assert time.monotonic() < deadline, "the status never crossed the bridge"
                    try:
                        topic, payload, _, _ = op.messages.get(timeout=0.1)
                    except queue.Empty:
                        continue
                assert cbor2.loads(payload)["caps"]["chip_model"] == "site"
                signed = op.signer.build(SITE, "site", "curtail", seq=op.seq.next(op.signer.kid))
                op.publish_command(signed)
                assert controller.wait_for(f"{TREE}/site/cmd")[1] == signed.payload
            finally:
                op.close()
                controller.close()
