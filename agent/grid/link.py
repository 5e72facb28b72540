"""The agent's MQTT 5 link to the grid operator (paho-mqtt 2.x).

`GridLink` hands its paho client to one owner: paho's own network thread (`loop_start`), which
reads and writes the socket and reconnects; the control thread (`GridSession`) publishes and acks
through paho's locked queue, and inbound commands reach it through a bounded queue and the
`on_inbound` wake-up. Every decision is taken on the control thread.

Connection: client id = device id, clean start false with a session expiry, retained birth status
with the caps, Will = the same status with state "offline", subscriptions with Retain Handling 2,
redone on every connect, and a birth sequence `bd` persisted in the state folder. The CONNECT
asks the broker for a Maximum Packet Size a few KiB above the command limit and a Receive Maximum,
so an oversized publish never reaches the board's memory and unacknowledged commands are bounded.
Reconnects wait a jittered, exponentially growing delay with a low cap. A half-open connection is
noticed by the keepalive (at most two keepalive periods); telemetry handed to the client after the
last answered ping of such a connection is counted lost. When the broker says another client took
over this device id (or keeps closing fresh sessions at once), the link backs off, and stops for
good (`fatal`) when it goes on.

External loop (`external_loop=True`, for many links in one thread, e.g. the lab's fleet of
virtual devices): no paho thread. The owner of that thread watches `client.socket()` and calls
paho's `loop_read`/`loop_write`/`loop_misc` itself, and `connect_now()` once `reconnect_due_s`
(monotonic) has come; publishes from that thread are written at once, and what a paho callback
queued is pending while `client.want_write()`. Everything else (callbacks, backoff, birth and
Will) is the same.
"""

from __future__ import annotations

import logging
import os
import queue
import random
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from agent import __version__
from agent.clock import Clock, SystemClock
from agent.errors import GridLinkError
from agent.grid.broker import no_delay, parse_broker_url, release_sockets
from agent.grid.contract import CONTENT_TYPE_CBOR, MAX_PAYLOAD_BYTES, Topics
from agent.grid.replay import StateFile
from agent.grid.telemetry import encode, status_map
from agent.grid.trust import check_private_file

log = logging.getLogger(__name__)

#: the largest packet the broker may send us: a command at the limit plus topic and properties
MAX_INBOUND_PACKET_BYTES = MAX_PAYLOAD_BYTES + 4096
KEEPALIVE_TIMEOUT = 141  # MQTT 5 reason code: the keepalive saw nothing from the broker
SESSION_TAKEN_OVER = 142  # MQTT 5 reason code: another client connected with our client id
# CONNACK reason codes that refuse who we are: client id not valid, bad user name or password,
# not authorised, banned, bad authentication method (MQTT 5 §3.2.2.2)
REFUSED_IDENTITY = frozenset({0x85, 0x86, 0x87, 0x8A, 0x8C})



@dataclass(frozen=True)
class Inbound:
    """One message from the broker, as the network thread queued it."""

    topic: str
    payload: bytes
    response_topic: str | None = None
    correlation_data: bytes | None = None
    received_s: float = 0.0  # monotonic
    mid: int = 0
    qos: int = 0
    generation: int = 0  # connection it came on (PUBACK only on that one)


@dataclass
class LinkSettings:
    """How to reach the broker; built from the [grid] config or by tests."""

    broker_url: str
    site: str
    device: str
    prefix: str = "gridminer"
    client_id: str | None = None  # None: the device id (contract §1)
    state_dir: str = "state"
    ca_file: str | None = None
    client_cert_file: str | None = None
    client_key_file: str | None = None
    username: str | None = None
    password: str | None = None
    password_file: str | None = None
    insecure_no_tls: bool = False  # plain MQTT to a non-loopback broker (lab only)
    insecure_dev: bool = False  # accept secrets readable by others (lab only)
    keepalive_s: int = 15
    session_expiry_s: int = 3600
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 5.0  # a grid resource is back within seconds of its broker
    refused_retry_max_s: float = 60.0  # credentials the broker refuses: asked again this seldom
    connect_timeout_s: float = 5.0
    max_queued_messages: int = 1000
    max_packet_bytes: int = MAX_INBOUND_PACKET_BYTES
    receive_maximum: int = 16  # unacknowledged QoS 1 commands the broker may send at once
    inbound_max: int = 64  # queued inbound messages; more are dropped and counted
    takeover_backoff_s: float = 30.0  # after a takeover, wait this (+50 % jitter) ...
    takeover_limit: int = 3  # ... and give up at this many in a row
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_config(cls, grid: Any, **overrides: Any) -> LinkSettings:
        """From agent.config.GridConfig (attributes looked up by name)."""
        names = (
            "broker_url", "site", "device", "prefix", "client_id", "state_dir", "ca_file",
            "client_cert_file",
            "client_key_file", "username", "password_file", "insecure_no_tls", "insecure_dev",
        )
        values = {n: getattr(grid, n) for n in names if getattr(grid, n, None) is not None}
        values.update(overrides)
        return cls(**values)

    @property
    def topics(self) -> Topics:
        return Topics(self.site, self.device, self.prefix)


class Backoff:
    """Exponential backoff with jitter: each delay is uniform in [b/2, b], b doubling to a cap."""

    def __init__(self, min_s: float, max_s: float, rng: random.Random | None = None) -> None:
        self.min_s = min_s
        self.max_s = max(min_s, max_s)
        self.rng = rng or random.Random()
        self.attempt = 0

    def next_delay(self, max_s: float | None = None) -> float:
        """The next wait; `max_s` raises the cap for this one."""
        base = min(max(self.max_s, max_s or 0.0), self.min_s * (2 ** min(self.attempt, 30)))
        self.attempt += 1
        return self.rng.uniform(base / 2, base)

    def reset(self) -> None:
        self.attempt = 0


class GridLink:
    """paho-mqtt 2.x MQTT 5 client of one device; see the module docstring."""

    def __init__(
        self,
        settings: LinkSettings,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        external_loop: bool = False,
    ) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.external_loop = external_loop
        self.reconnect_due_s: float | None = None  # external loop: when to call connect_now()
        self.topics = settings.topics
        try:
            self.topics.validate()
        except ValueError as exc:
            raise GridLinkError(str(exc)) from exc
        self.address = parse_broker_url(settings.broker_url)
        self._check_security()
        self.inbound: queue.Queue[Inbound] = queue.Queue(maxsize=settings.inbound_max)
        self.on_inbound: Callable[[], None] | None = None
        self.on_fatal: Callable[[str], None] | None = None
        self.connects = 0
        self.dropped_retained = 0
        self.dropped_inbound = 0  # inbound queue full
        self.takeovers = 0
        self.refusals = 0  # connections the broker refused for who we are (credentials, ACL)
        self._refused = False  # the last CONNACK refused us; its close is not a new outage
        self.last_error = ""
        self.fatal: str | None = None  # set when the link gave up for good (device id taken)
        self.state = "down"  # down, connecting, up, taken over
        self._rng = rng or random.Random()
        self._backoff = Backoff(settings.reconnect_min_s, settings.reconnect_max_s, self._rng)
        self._state = StateFile(Path(settings.state_dir) / "link.json")
        self.bd = self._load_bd()
        self._lock = threading.Lock()
        self._caps: Any = {}
        self._mode: str | None = None
        self._connected = threading.Event()
        self._started = False
        self._up_since_s = 0.0
        self._connect_failed = False  # since the last successful connect
        self._generation = 0
        self._bd_pending = self.bd + 1
        self._ping_sent_s = 0.0  # monotonic time of the last PINGREQ
        self._confirmed_s = 0.0  # everything handed to the client before this reached the broker
        self._unconfirmed: deque[float] = deque(maxlen=4096)  # hand-over times of QoS 0 messages
        self._lost_unconfirmed = 0
        self._plain_properties = self._cbor_properties()
        self._client = self._make_client()

    # ---- set-up -------------------------------------------------------------------------------
    def _check_security(self) -> None:
        s = self.settings
        if not self.address.tls and not self.address.loopback:
            if not s.insecure_no_tls:
                raise GridLinkError(
                    f"broker {s.broker_url}: plain MQTT to a non-loopback host; use mqtts:// "
                    "(or --insecure-no-tls in a lab)"
                )
            log.warning("INSECURE: MQTT without TLS to %s", s.broker_url)
        for path, what in ((s.ca_file, "CA file"), (s.client_cert_file, "client certificate")):
            if path is not None and not os.path.isfile(path):
                raise GridLinkError(f"{what} {path}: not found")
        if (s.client_cert_file is None) != (s.client_key_file is None):
            raise GridLinkError("client certificate and client key go together")
        if s.client_key_file is not None:
            check_private_file(s.client_key_file, "client TLS key", s.insecure_dev)
        if s.password_file is not None:
            check_private_file(s.password_file, "password file", s.insecure_dev)
        if (s.client_cert_file or s.ca_file) and not self.address.tls:
            raise GridLinkError(f"broker {s.broker_url}: TLS files given but the URL is not mqtts://")

    def _password(self) -> str | None:
        s = self.settings
        if s.password_file is not None:
            try:
                return Path(s.password_file).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise GridLinkError(f"password file {s.password_file}: {exc.strerror}") from exc
        return s.password

    def _load_bd(self) -> int:
        try:
            data = self._state.load() or {}
            return int(data.get("bd", 0))
        except (ValueError, TypeError):
            log.error("link state %s unreadable; birth sequence restarts above it",
                      self._state.path)
            self._state.quarantine()
            return int(time.time())  # stays above any earlier count

    def _make_client(self) -> mqtt.Client:
        s = self.settings
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=s.client_id or s.device,
            protocol=mqtt.MQTTv5,
            transport="websockets" if self.address.websockets else "tcp",
            manual_ack=True,
        )
        client.max_queued_messages_set(s.max_queued_messages)
        if self.address.tls:
            try:
                client.tls_set(
                    ca_certs=s.ca_file,
                    certfile=s.client_cert_file,
                    keyfile=s.client_key_file,
                    cert_reqs=ssl.CERT_REQUIRED,
                    tls_version=ssl.PROTOCOL_TLS_CLIENT,
                )
            except (OSError, ssl.SSLError) as exc:
                raise GridLinkError(f"TLS set-up failed: {exc}") from exc
        if s.username is not None:
            client.username_pw_set(s.username, self._password())
        client.connect_timeout = s.connect_timeout_s
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_socket_open = no_delay
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_log = self._on_log
        return client

    # ---- control-thread API -------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def client(self) -> mqtt.Client:
        """The paho client (an external loop drives its socket)."""
        return self._client

    def start(self) -> None:
        """Connect in the background (paho's network thread) and keep reconnecting."""
        if self._started:
            return
        self._started = True
        s = self.settings
        self._set_will()
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = s.session_expiry_s
        props.MaximumPacketSize = s.max_packet_bytes
        props.ReceiveMaximum = s.receive_maximum
        self.state = "connecting"
        self._client.connect_async(self.address.host, self.address.port,
                                   keepalive=s.keepalive_s, clean_start=False, properties=props)
        if self.external_loop:
            self.reconnect_due_s = time.monotonic()
        else:
            self._client.loop_start()

    def connect_now(self) -> bool:
        """External loop: one connection attempt (a blocking TCP connect, then CONNECT queued);
        False when it failed at once (the next attempt is then scheduled)."""
        self.reconnect_due_s = None
        if not self._started:
            return False
        try:
            self._client.reconnect()
        except (OSError, ValueError):
            self._on_connect_fail(self._client, None)
            return False
        return True

    def abort(self) -> None:
        """Drop the connection without a DISCONNECT, as a power cut or a dead network would (the
        broker then publishes the Will), and stop: no reconnect, nothing more sent."""
        self._started = False
        self.reconnect_due_s = None
        release_sockets(self._client)
        if not self.external_loop:
            self._client.loop_stop()
        self._connected.clear()
        self.state = "down"

    def stop(self, timeout_s: float = 3.0) -> None:
        """Publish the offline status (a clean disconnect suppresses the Will) and disconnect."""
        if not self._started:
            return
        if self.connected:
            info = self._client.publish(
                self.topics.status, self._status_payload("offline", self.bd), qos=1, retain=True,
                properties=self._cbor_properties(),
            )
            try:
                if not self.external_loop:  # else written at once, and no one reads the PUBACK
                    info.wait_for_publish(timeout=timeout_s)
            except (RuntimeError, ValueError):
                pass
        self._started = False
        self.reconnect_due_s = None
        self._client.disconnect()
        if not self.external_loop:
            self._client.loop_stop()
        release_sockets(self._client)
        self._connected.clear()
        self.state = "down" if self.fatal is None else self.state

    def set_status(self, caps: Any, mode: str | None) -> None:
        """Caps and mode for the birth/Will; republishes the retained status if they changed."""
        with self._lock:
            changed = (caps, mode) != (self._caps, self._mode)
            self._caps, self._mode = caps, mode
        if changed and self.connected:
            self._client.publish(
                self.topics.status, self._status_payload("online", self.bd), qos=1, retain=True,
                properties=self._cbor_properties(),
            )

    def drain(self) -> list[Inbound]:
        """Every queued inbound message, oldest first (never blocks)."""
        items: list[Inbound] = []
        while True:
            try:
                items.append(self.inbound.get_nowait())
            except queue.Empty:
                return items

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 0,
        retain: bool = False,
        correlation_data: bytes | None = None,
        user_properties: tuple[tuple[str, str], ...] = (),
    ) -> bool:
        """Publish from any thread; False if a QoS 0 message could not be sent now (QoS 1
        messages are queued by paho and sent after a reconnect). ValueError for a topic or
        payload MQTT cannot carry."""
        if correlation_data is None and not user_properties:
            props = self._plain_properties  # telemetry: one object, never changed
        else:
            props = self._cbor_properties()
        if correlation_data is not None:
            props.CorrelationData = correlation_data
        for key, value in user_properties:
            props.UserProperty = (key, value)
        if qos == 0 and not self.connected:
            return False
        info = self._client.publish(topic, payload, qos=qos, retain=retain, properties=props)
        if qos == 0:
            sent = info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS
            if sent:
                with self._lock:
                    self._unconfirmed.append(time.monotonic())
            return sent
        return info.rc in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN)

    def ack(self, msg: Inbound) -> None:
        """PUBACK a QoS 1 command once it was handled (only on the connection it came on; after
        a reconnect the broker redelivers it and it is answered as a duplicate)."""
        if msg.qos > 0 and msg.generation == self._generation and self.connected:
            self._client.ack(msg.mid, msg.qos)

    def take_lost(self) -> int:
        """QoS 0 messages counted lost since the last call: handed to a connection that turned
        out half-open after the broker last confirmed what it had received."""
        with self._lock:
            lost, self._lost_unconfirmed = self._lost_unconfirmed, 0
        return lost

    # ---- network thread (paho's callbacks) ----------------------------------------------------
    def _cbor_properties(self) -> Properties:
        props = Properties(PacketTypes.PUBLISH)
        props.ContentType = CONTENT_TYPE_CBOR
        return props

    def _status_payload(self, state: str, bd: int) -> bytes:
        with self._lock:
            caps, mode = self._caps, self._mode
        return encode(status_map(state, bd, __version__, caps, mode, int(self.clock.time() * 1000)))

    def _set_will(self) -> None:
        """The Will of the next connection: offline status with that connection's bd."""
        self._bd_pending = self.bd + 1
        will_props = Properties(PacketTypes.WILLMESSAGE)
        will_props.ContentType = CONTENT_TYPE_CBOR
        self._client.will_set(
            self.topics.status, self._status_payload("offline", self._bd_pending), qos=1,
            retain=True, properties=will_props,
        )

    def _wake(self) -> None:
        callback = self.on_inbound
        if callback is not None:
            try:
                callback()
            except Exception:
                log.exception("on_inbound callback failed")

    def _note_error(self, text: str) -> None:
        if text != self.last_error:
            log.warning("grid link: %s", text)
        self.last_error = text

    def _retry_in(self, delay_s: float) -> None:
        """The wait before paho's next connection attempt (paho counts whole delays)."""
        if self.external_loop:
            self.reconnect_due_s = time.monotonic() + delay_s if self._started else None
            return
        self._client.reconnect_delay_set(delay_s, delay_s)  # type: ignore[arg-type]

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if reason.is_failure:
            self._refused = True
            self._set_will()
            if getattr(reason, "value", None) in REFUSED_IDENTITY:
                # only a change on the broker or in our config helps: do not hammer it meanwhile
                self.refusals += 1
                self._note_error(f"broker refused the connection: {reason} (check the "
                                 "credentials and the broker's ACL; retrying at most every "
                                 f"{self.settings.refused_retry_max_s:g} s)")
                self._retry_in(self._backoff.next_delay(self.settings.refused_retry_max_s))
                return
            self._note_error(f"broker refused the connection: {reason}")
            self._retry_in(self._backoff.next_delay())
            return
        self._refused = False
        self._generation += 1
        self.bd = self._bd_pending
        try:
            self._state.save({"bd": self.bd})
        except OSError as exc:
            log.error("cannot persist birth sequence: %s", exc)
        options = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND)
        client.subscribe([(self.topics.cmd, options), (self.topics.site_cmd, options)])
        client.publish(
            self.topics.status, self._status_payload("online", self.bd), qos=1, retain=True,
            properties=self._cbor_properties(),
        )
        self.connects += 1
        self.last_error = ""
        self._backoff.reset()
        with self._lock:
            self._confirmed_s = time.monotonic()
            self._unconfirmed.clear()
        self._up_since_s = time.monotonic()
        self._connect_failed = False
        self.state = "up"
        self._connected.set()
        log.info("grid link up: %s as %s (bd %d)", self.settings.broker_url, self.topics.device,
                 self.bd)
        self._wake()

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        self._connect_failed = True
        self.takeovers = 0
        self._note_error(f"cannot reach {self.settings.broker_url}")
        self._retry_in(self._backoff.next_delay())

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        was_up = self._connected.is_set()
        self._connected.clear()
        if self._started and not was_up and self._refused:
            self._refused = False
            return  # the close after a refused CONNACK: _on_connect has set the retry
        self.reconnect_due_s = None  # set again by _retry_in, unless the link gives up
        if not self._started:
            return  # our own stop()
        code = getattr(reason, "value", None)
        if code == KEEPALIVE_TIMEOUT:
            self._count_unconfirmed()
        if was_up and self._taken_over(code):
            return
        self.state = "down"
        if was_up:
            log.warning("grid link down: %s", reason)
            self._wake()
        self._set_will()
        self._retry_in(self._backoff.next_delay())

    def _count_unconfirmed(self) -> None:
        with self._lock:
            lost = sum(1 for t in self._unconfirmed if t >= self._confirmed_s)
            self._unconfirmed.clear()
            self._lost_unconfirmed += lost
        if lost:
            log.warning("grid link: keepalive timeout; %d telemetry message(s) never confirmed",
                        lost)

    def _taken_over(self, code: int | None) -> bool:
        """Whether another client holds this device id, and if so back off or give up.

        The sign is the broker's MQTT 5 reason "session taken over", or (from brokers that just
        close the old connection) sessions the broker keeps closing within half the back-off of
        accepting them, each after a connect that went through at once: the first such close
        reconnects as usual, the next ones back off. A session that lasted longer, or a connect
        that failed (a broker restarting), clears the count: the client that keeps its session
        wins, and the one kicked within seconds each time gives up."""
        s = self.settings
        session_s = time.monotonic() - self._up_since_s
        explicit = code == SESSION_TAKEN_OVER
        clean = code != KEEPALIVE_TIMEOUT and not self._connect_failed
        if not explicit and not (clean and session_s < s.takeover_backoff_s / 2):
            self.takeovers = 0
            return False
        self.takeovers += 1
        if not explicit and self.takeovers < 2:
            return False  # one short session is no sign yet: a broker restart looks the same
        why = ("MQTT 5 'Session taken over'" if explicit else
               f"the broker closed {self.takeovers} session(s) in a row within seconds")
        who = (f"client id {s.client_id!r}" if s.client_id else
               f"device id {self.topics.device!r}") + f" on {s.broker_url}"
        self.state = "taken over"
        self._wake()
        if self.takeovers >= s.takeover_limit:
            self.fatal = f"another client holds {who} ({why}); not reconnecting"
            log.error("grid link: %s", self.fatal)
            self._client.disconnect()  # no more reconnects: paho's loop ends
            self._client.loop_stop()
            if self.on_fatal is not None:
                self.on_fatal(self.fatal)
            return True
        delay = s.takeover_backoff_s * self._rng.uniform(1.0, 1.5)
        log.error("grid link: another client may hold %s (%s); backing off %.1f s", who, why,
                  delay)
        self._set_will()
        self._retry_in(delay)
        return True

    def _on_log(self, client: mqtt.Client, userdata: Any, level: int, text: str) -> None:
        """Ping bookkeeping: a PINGRESP proves the broker got what was sent before the PINGREQ."""
        if text.startswith("Sending PINGREQ"):
            self._ping_sent_s = time.monotonic()
        elif text.startswith("Received PINGRESP"):
            with self._lock:
                self._confirmed_s = self._ping_sent_s
                while self._unconfirmed and self._unconfirmed[0] < self._confirmed_s:
                    self._unconfirmed.popleft()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if message.retain:
            # Retain Handling 2 keeps retained commands away; one that slips through never acts.
            self.dropped_retained += 1
            if message.qos > 0:
                client.ack(message.mid, message.qos)
            return
        props = getattr(message, "properties", None)
        response_topic = getattr(props, "ResponseTopic", None) if props is not None else None
        correlation = getattr(props, "CorrelationData", None) if props is not None else None
        try:
            self.inbound.put_nowait(
                Inbound(
                    topic=message.topic,
                    payload=bytes(message.payload),
                    response_topic=response_topic or None,
                    correlation_data=bytes(correlation) if correlation is not None else None,
                    received_s=self.clock.monotonic(),
                    mid=message.mid,
                    qos=message.qos,
                    generation=self._generation,
                )
            )
        except queue.Full:
            self.dropped_inbound += 1
            self._note_error(f"inbound queue full ({self.settings.inbound_max}); message dropped")
            if message.qos > 0:
                client.ack(message.mid, message.qos)  # else it would hold a Receive Maximum slot
            return
        self._wake()


def describe(settings: LinkSettings) -> Mapping[str, Any]:
    """A log-friendly summary (no secrets)."""
    return {
        "broker": settings.broker_url,
        "site": settings.site,
        "device": settings.device,
        "tls": parse_broker_url(settings.broker_url).tls,
        "auth": "certificate" if settings.client_cert_file else (
            "password" if settings.username else "none"),
    }
