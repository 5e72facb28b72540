"""The operator's MQTT 5 client: publishes signed commands with Response Topic, Correlation Data
and Message Expiry Interval, and collects the devices' acks (spec sections 2 and 4)."""

from __future__ import annotations

import queue
import secrets
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from agent.errors import GridLinkError
from agent.grid.broker import no_delay, parse_broker_url, release_sockets
from agent.grid.contract import CONTENT_TYPE_COSE, OK_RESULTS, PREFIX
from agent.grid.telemetry import decode_map, jsonable
from agent.site.signer import CommandSigner, SeqCounter, SignedCommand


@dataclass
class Reply:
    """One ack as the operator received it."""

    device: str
    ack: dict[str, Any]
    topic: str
    received_s: float

    @property
    def ok(self) -> bool:
        return self.ack.get("result") in OK_RESULTS

    def to_json(self) -> dict[str, Any]:
        return {"device": self.device, **jsonable(self.ack)}


@dataclass
class BrokerOptions:
    url: str
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    username: str | None = None
    password: str | None = None
    client_id: str = field(default_factory=lambda: "operator-" + secrets.token_hex(4))


class Operator:
    """An MQTT 5 operator client: publishes signed commands and collects their acks."""

    def __init__(self, options: BrokerOptions, signer: CommandSigner | None = None,
                 seq: SeqCounter | None = None) -> None:
        self.options = options
        self.signer = signer
        self.seq = seq
        self.address = parse_broker_url(options.url)
        self._client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=options.client_id,
            protocol=mqtt.MQTTv5,
            transport="websockets" if self.address.websockets else "tcp",
        )
        if self.address.tls:
            self._client.tls_set(ca_certs=options.ca_file, certfile=options.cert_file,
                                 keyfile=options.key_file, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        if options.username is not None:
            self._client.username_pw_set(options.username, options.password)
        self._client.on_message = self._on_message
        self._client.on_connect = self._on_connect
        self._client.on_socket_open = no_delay
        self._connected = threading.Event()
        self._connect_reason = ""
        self._subscribed: dict[int, threading.Event] = {}
        self.messages: queue.Queue[tuple[str, bytes, Any, float]] = queue.Queue()
        self.last_wanted: set[str] = set()
        self._client.on_subscribe = self._on_subscribe

    # ---- connection ---------------------------------------------------------------------------
    def connect(self, timeout_s: float = 5.0) -> Operator:
        try:
            self._client.connect(self.address.host, self.address.port, keepalive=30,
                                 clean_start=True)
        except (OSError, ValueError) as exc:
            raise GridLinkError(f"cannot reach broker {self.options.url}: {exc}") from exc
        self._client.loop_start()
        if not self._connected.wait(timeout_s):
            self.close()
            raise GridLinkError(
                f"broker {self.options.url} did not accept the connection "
                f"{self._connect_reason or '(timeout)'}"
            )
        return self

    def close(self) -> None:
        try:
            self._client.disconnect()
            deadline = time.monotonic() + 1.0
            while self._client.socket() is not None and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            self._client.loop_stop()
            release_sockets(self._client)

    def __enter__(self) -> Operator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            self._connect_reason = str(reason)
            return
        self._connected.set()

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        self._subscribed.setdefault(mid, threading.Event()).set()

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        self.messages.put((message.topic, bytes(message.payload), message.properties,
                           time.monotonic()))

    def subscribe(self, topics: list[str], timeout_s: float = 5.0) -> None:
        """Subscribe (QoS 1) and wait for the SUBACK, so nothing published after is missed."""
        rc, mid = self._client.subscribe([(t, SubscribeOptions(qos=1)) for t in topics])
        if rc != mqtt.MQTT_ERR_SUCCESS or mid is None:
            raise GridLinkError(f"subscription to {topics} failed")
        event = self._subscribed.setdefault(mid, threading.Event())
        if not event.wait(timeout_s):
            raise GridLinkError(f"subscription to {topics} failed")

    # ---- commands -----------------------------------------------------------------------------
    def publish_command(self, signed: SignedCommand, response_topic: str | None = None,
                        correlation_data: bytes | None = None) -> None:
        """QoS 1, Message Expiry Interval within the command's remaining validity."""
        remaining_s = (signed.exp_ms - time.time() * 1000) / 1000.0
        self.publish_raw(signed.topic, signed.payload, response_topic,
                         correlation_data or signed.id, max(1, int(remaining_s)))

    def publish_raw(self, topic: str, payload: bytes, response_topic: str | None = None,
                    correlation_data: bytes | None = None, expiry_s: int | None = None) -> None:
        """Publish any bytes as a command (tests and fuzzers craft bad ones)."""
        props = Properties(PacketTypes.PUBLISH)
        if expiry_s is not None:
            props.MessageExpiryInterval = expiry_s
        props.ContentType = CONTENT_TYPE_COSE
        if response_topic is not None:
            props.ResponseTopic = response_topic
            if correlation_data is not None:
                props.CorrelationData = correlation_data
        info = self._client.publish(topic, payload, qos=1, properties=props)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise GridLinkError(f"publish failed ({mqtt.error_string(info.rc)})")

    def response_topic(self, site: str, dev: str) -> str:
        """Inside the device's own tree, where the ACL of spec 1 lets the device write."""
        prefix = self.signer.prefix if self.signer else PREFIX
        return f"{prefix}/{site}/{dev}/ack/{self.options.client_id}"

    def online_devices(self, site: str, settle_s: float = 0.3) -> list[str]:
        """Devices whose retained status says online (read once, then unsubscribed)."""
        prefix = self.signer.prefix if self.signer else PREFIX
        topic = f"{prefix}/{site}/+/status"
        self.subscribe([topic])
        seen: dict[str, str] = {}
        deadline = time.monotonic() + settle_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                t, payload, _, _ = self.messages.get(timeout=left)
            except queue.Empty:
                break
            if t.endswith("/status"):
                status = decode_map(payload)
                seen[t.split("/")[-2]] = str(status.get("state", "")) if status else ""
        self._client.unsubscribe(topic)
        return sorted(d for d, s in seen.items() if s == "online")

    def send(
        self,
        site: str,
        dev: str | None,
        op: str,
        *,
        timeout_s: float = 5.0,
        expect: list[str] | None = None,
        **build: Any,
    ) -> tuple[SignedCommand, list[Reply]]:
        """Sign, publish and wait for acks: one from `dev`, or (site-wide, `dev` None) one from
        every device in `expect` (default: the devices whose status is online)."""
        if self.signer is None or self.seq is None:
            raise GridLinkError("an operator key is needed to send commands")
        prefix = self.signer.prefix
        if dev is None:
            wanted = set(expect if expect is not None else self.online_devices(site))
            self.subscribe([f"{prefix}/{site}/+/ack"])
            response = None
        else:
            wanted = {dev}
            response = self.response_topic(site, dev)
            self.subscribe([response])
        seq = build.pop("seq", None)
        signed = self.signer.build(site, dev, op,
                                   seq=seq if seq is not None else self.seq.next(self.signer.kid),
                                   **build)
        correlation = secrets.token_bytes(8)
        self.publish_command(signed, response, correlation if response else None)
        self.last_wanted = wanted
        return signed, self.collect(signed, wanted, correlation if response else None, timeout_s)

    def collect(self, signed: SignedCommand, wanted: set[str], correlation: bytes | None,
                timeout_s: float) -> list[Reply]:
        replies: dict[str, Reply] = {}
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            if wanted and wanted <= set(replies):
                break
            try:
                topic, payload, props, received = self.messages.get(timeout=left)
            except queue.Empty:
                break
            if "/ack" not in topic:
                continue
            if correlation is not None and getattr(props, "CorrelationData", None) != correlation:
                continue
            ack = decode_map(payload)
            if ack is None or (ack.get("id") not in (None, signed.id)):
                continue
            if ack.get("id") is None and correlation is None:
                continue  # undecodable-command acks can only be matched by correlation data
            device = _user_property(props, "dev") or topic.split("/")[2]
            replies[device] = Reply(device, ack, topic, received)
        return list(replies.values())


def _user_property(props: Any, name: str) -> str | None:
    for key, value in getattr(props, "UserProperty", None) or []:
        if key == name:
            return str(value)
    return None
