"""The home's MQTT connection: paho on its own network thread, reconnecting by itself, with a
retained Will `offline` on the availability topic; what arrives is queued for the control thread
(`drain`), bounded, and nothing here decides anything."""

from __future__ import annotations

import logging
import queue
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.errors import ConfigError, GridLinkError
from agent.grid.broker import no_delay, parse_broker_url, release_sockets

log = logging.getLogger("gridminer.home")

INBOUND_MAX = 256  # messages waiting for the control thread; more are dropped and counted
MAX_PAYLOAD_BYTES = 16384  # a meter or command message longer than this is dropped
ONLINE, OFFLINE = "online", "offline"


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes


class HomeLink:
    """One MQTT client of the home broker. `subscriptions` are (re)subscribed on every connect;
    `connects` counts the connections, so the session sees a new one and announces again."""

    def __init__(self, broker_url: str, client_id: str, availability_topic: str,
                 subscriptions: tuple[str, ...], username: str | None = None,
                 password_file: str | None = None, ca_file: str | None = None) -> None:
        try:
            self.address = parse_broker_url(broker_url)
        except GridLinkError as exc:
            raise ConfigError(f"home.broker_url: {exc}") from None
        if not self.address.tls and not self.address.loopback:
            log.warning("home broker %s without TLS: the home network is trusted (the owner's "
                        "choice, home.broker_url)", broker_url)
        self.availability_topic = availability_topic
        self.subscriptions = subscriptions
        self.connects = 0
        self.dropped = 0
        self._inbound: queue.Queue[Message] = queue.Queue(maxsize=INBOUND_MAX)
        self._started = False
        client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                             client_id=client_id, protocol=mqtt.MQTTv311)
        if self.address.tls:
            try:
                client.tls_set(ca_certs=ca_file, cert_reqs=ssl.CERT_REQUIRED,
                               tls_version=ssl.PROTOCOL_TLS_CLIENT)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"home.ca_file: TLS set-up failed: {exc}") from None
        elif ca_file is not None:
            raise ConfigError("home.ca_file: given, but home.broker_url is not mqtts://")
        if username is not None:
            client.username_pw_set(username, _password(password_file))
        client.will_set(availability_topic, OFFLINE, qos=1, retain=True)
        client.reconnect_delay_set(1, 30)
        client.on_connect = self._on_connect
        client.on_socket_open = no_delay
        client.on_message = self._on_message
        self._client = client

    @property
    def connected(self) -> bool:
        return bool(self._client.is_connected())

    def start(self) -> None:
        """Connect in the background and keep reconnecting."""
        if self._started:
            return
        self._started = True
        self._client.connect_async(self.address.host, self.address.port, keepalive=30)
        self._client.loop_start()

    def stop(self, timeout_s: float = 3.0) -> None:
        """Mark the device offline (a clean disconnect suppresses the Will) and disconnect."""
        if not self._started:
            return
        self._started = False
        if self.connected:
            info = self._client.publish(self.availability_topic, OFFLINE, qos=1, retain=True)
            try:
                info.wait_for_publish(timeout=timeout_s)
            except (RuntimeError, ValueError):
                pass
        self._client.disconnect()
        self._client.loop_stop()
        release_sockets(self._client)

    def publish(self, topic: str, payload: str | bytes, retain: bool = False) -> None:
        """Queue a QoS 1 message (paho keeps it while the broker is away)."""
        self._client.publish(topic, payload, qos=1, retain=retain)

    def drain(self) -> list[Message]:
        """What arrived since the last call, oldest first."""
        out = []
        while True:
            try:
                out.append(self._inbound.get_nowait())
            except queue.Empty:
                return out

    # ---- paho's network thread ------------------------------------------------------------
    def _on_connect(self, client: Any, _userdata: Any, _flags: Any, reason: Any,
                    _properties: Any = None) -> None:
        if getattr(reason, "is_failure", False):
            log.warning("home broker refused the connection: %s", reason)
            return
        self.connects += 1
        client.publish(self.availability_topic, ONLINE, qos=1, retain=True)
        if self.subscriptions:
            client.subscribe([(topic, 1) for topic in self.subscriptions])
        log.info("home broker %s:%d connected", self.address.host, self.address.port)

    def _on_message(self, _client: Any, _userdata: Any, msg: Any) -> None:
        if len(msg.payload) > MAX_PAYLOAD_BYTES:
            self.dropped += 1
            return
        try:
            self._inbound.put_nowait(Message(msg.topic, bytes(msg.payload)))
        except queue.Full:
            self.dropped += 1


def _password(path: str | None) -> str | None:
    if path is None:
        return None
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"home.password_file: {path}: {exc.strerror}") from None
