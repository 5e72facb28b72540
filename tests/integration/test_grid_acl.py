"""TLS, credentials and the ACL of spec 1 on a real Mosquitto: a device over TLS with a password
or a client certificate; one device's credentials stay off other devices' topics and off every
cmd topic; an operator's command reaches the device through the ACL."""

from __future__ import annotations

import threading
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.errors import GridLinkError
from agent.grid.broker import release_sockets
from agent.grid.link import GridLink, LinkSettings
from tests.integration.conftest import Observer, operator_for
from tests.support.polling import wait_until


def tls_settings(broker, tmp_path, device: str = "dev-1", **kw) -> LinkSettings:
    backoff = {"reconnect_min_s": 0.2, "reconnect_max_s": 1.0}
    return LinkSettings(broker.tls_url, "site-a", device, state_dir=str(tmp_path / device),
                        ca_file=broker.ca_file, **{**backoff, **kw})


def wait_online(dev, timeout_s: float = 5.0) -> None:
    wait_until(lambda: dev.link.connected, timeout_s,
               lambda: f"a connection (last error: {dev.link.last_error})", poll_s=0.01)


def test_device_over_tls_with_password_file(secure_mosquitto, tmp_path, device_factory) -> None:
    b = secure_mosquitto
    settings = tls_settings(b, tmp_path, username="dev-1",
                            password_file=b.password_file_for("dev-1"))
    dev = device_factory(settings, name="d1")
    wait_online(dev)
    with operator_for(b, tmp_path, url=b.tls_url, ca_file=b.ca_file, username="operator",
                      password=b.password("operator")).connect() as op:
        _, replies = op.send("site-a", "dev-1", "setpoint", power_w=1400, timeout_s=5)
    assert [r.ack["result"] for r in replies] == ["accepted"]
    assert dev.sink.calls[-1] == ("setpoint", 1400, None)


def test_device_over_mutual_tls_with_client_certificate(secure_mosquitto, tmp_path,
                                                        device_factory) -> None:
    b = secure_mosquitto
    cert = b.client_cert("dev-2")
    settings = LinkSettings(b.mtls_url, "site-a", "dev-2", state_dir=str(tmp_path / "d2"),
                            ca_file=b.ca_file, client_cert_file=cert.cert_file,
                            client_key_file=cert.key_file)
    dev = device_factory(settings, name="d2")
    wait_online(dev)
    obs = Observer(b, ["gridminer/site-a/dev-2/status"], username="operator",
                   password=b.password("operator"))
    try:
        obs.wait_for(lambda t, m, r: m.get("state") == "online")
    finally:
        obs.close()


def test_wrong_password_is_refused_and_the_link_retries_ever_more_seldom(secure_mosquitto,
                                                                         tmp_path) -> None:
    """Credentials the broker refuses are not fixed by asking again at once: the link keeps
    trying (the broker's password file may be fixed), backing off past its usual 0.1 s cap."""
    b = secure_mosquitto
    link = GridLink(tls_settings(b, tmp_path, username="dev-1", password="wrong",
                                 reconnect_min_s=0.05, reconnect_max_s=0.1,
                                 refused_retry_max_s=0.8))
    link.start()
    start_s = time.monotonic()
    try:
        wait_until(lambda: link.refusals >= 6, 30, "six refused connections")
        elapsed_s = time.monotonic() - start_s
        assert not link.connected and "refused" in link.last_error
        assert "check the credentials" in link.last_error
        # 0.05 + 0.1 + 0.2 + 0.4 + at least 0.4 s of waits: at the usual cap, under 0.6 s
        assert elapsed_s >= 0.9, elapsed_s
    finally:
        link.stop()


def test_client_key_readable_by_others_is_refused(secure_mosquitto, tmp_path) -> None:
    b = secure_mosquitto
    cert = b.client_cert("dev-1")
    import os

    os.chmod(cert.key_file, 0o644)
    with pytest.raises(GridLinkError, match="readable by group/others"):
        GridLink(LinkSettings(b.mtls_url, "site-a", "dev-1", state_dir=str(tmp_path),
                              ca_file=b.ca_file, client_cert_file=cert.cert_file,
                              client_key_file=cert.key_file))
    GridLink(LinkSettings(b.mtls_url, "site-a", "dev-1", state_dir=str(tmp_path),
                          ca_file=b.ca_file, client_cert_file=cert.cert_file,
                          client_key_file=cert.key_file, insecure_dev=True))


class RawClient:
    def __init__(self, broker, user: str) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"raw-{user}",
                                  protocol=mqtt.MQTTv5)
        self.client.username_pw_set(user, broker.password(user))
        self.got: list[str] = []
        self.client.on_message = lambda c, u, m: self.got.append(m.topic)
        self.suback: list = []
        done = threading.Event()

        def on_subscribe(c, u, mid, reasons, props) -> None:
            self.suback.extend(reasons)
            done.set()

        self._done = done
        self.client.on_subscribe = on_subscribe
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()

    def subscribe(self, topic: str) -> None:
        self._done.clear()
        self.client.subscribe(topic, qos=1)
        assert self._done.wait(5)

    def publish(self, topic: str) -> None:
        self.client.publish(topic, b"x", qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        time.sleep(0.05)
        self.client.loop_stop()
        release_sockets(self.client)


def test_acl_keeps_a_device_to_its_own_topics(secure_mosquitto) -> None:
    b = secure_mosquitto
    watcher = RawClient(b, "operator")
    watcher.subscribe("gridminer/#")
    dev1 = RawClient(b, "dev-1")
    try:
        forbidden = [
            "gridminer/site-a/dev-2/telemetry",
            "gridminer/site-a/dev-2/status",
            "gridminer/site-a/dev-2/ack",
            "gridminer/site-a/dev-1/cmd",
            "gridminer/site-a/dev-2/cmd",
            "gridminer/site-a/all/cmd",
            "gridminer/site-b/all/cmd",
        ]
        for topic in forbidden:
            dev1.publish(topic)
        allowed = ["gridminer/site-a/dev-1/telemetry", "gridminer/site-a/dev-1/ack/op-1"]
        for topic in allowed:
            dev1.publish(topic)
        dev1.subscribe("gridminer/site-a/dev-2/cmd")
        dev1.subscribe("gridminer/site-a/dev-1/cmd")
        op_pub = RawClient(b, "operator")
        op_pub.publish("gridminer/site-a/dev-2/cmd")
        op_pub.publish("gridminer/site-a/dev-1/cmd")
        op_pub.close()
        time.sleep(0.5)
        assert sorted(t for t in watcher.got if "cmd" not in t) == sorted(allowed)
        assert dev1.got == ["gridminer/site-a/dev-1/cmd"]  # its own cmd only
    finally:
        dev1.close()
        watcher.close()
