"""The site controller's fleet client on a real Mosquitto: a burst of retained statuses beyond
the broker's queue for one client is dropped, and asking for a device's status again brings it."""

from __future__ import annotations

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.site.client import BrokerOptions
from agent.site.fleet_client import FleetClient
from hil.broker import Mosquitto
from tests.support.polling import poll_until, wait_until

DEVICES = 1500  # more retained statuses than Mosquitto queues for one client (1,000 + 20)


def test_statuses_lost_in_the_burst_after_a_connect_come_when_asked_again(
        mosquitto: Mosquitto) -> None:
    publisher = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    publisher.connect("127.0.0.1", mosquitto.port)
    publisher.loop_start()
    try:
        sent = [publisher.publish(f"gridminer/s/d{i}/status", b"x" * 200, qos=1, retain=True)
                for i in range(DEVICES)]
        wait_until(lambda: all(m.is_published() for m in sent), 20.0, "the retained statuses")
    finally:
        publisher.loop_stop()
        publisher.disconnect()

    fleet = FleetClient(BrokerOptions(mosquitto.url), ["gridminer/s/+/status"]).start()
    try:
        heard: set[str] = set()

        def heard_all() -> bool:
            heard.update(topic.split("/")[2] for topic, _, _ in fleet.drain())
            return len(heard) == DEVICES

        poll_until(heard_all, 3.0)  # the burst: what the broker's queue let through
        missing = sorted({f"d{i}" for i in range(DEVICES)} - heard)
        assert missing, "the broker queued every status: raise DEVICES"
        for device in missing:
            fleet.ask_status(f"gridminer/s/{device}/status")
        wait_until(heard_all, 10.0, lambda: f"{DEVICES - len(heard)} statuses still missing")
    finally:
        fleet.close()
