"""The grid operator's side: sign commands, publish them, wait for acks, watch a site.

`gridminer operator keygen|setpoint|curtail|resume|standby|ping|watch`. `CommandSigner` builds and
signs commands (COSE_Sign1, Ed25519, topic as AAD); `SeqCounter` keeps the issuer's `seq`
strictly increasing per kid across processes; `Operator` is the MQTT 5 client that publishes with
Response Topic, Correlation Data and Message Expiry Interval and collects the acks. The grid
simulator (hil) uses the same classes.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import queue
import re
import secrets
import ssl
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import cbor2
import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from agent.errors import GridLinkError
from agent.grid import cose
from agent.grid.contract import ALL, ANY_DEVICE, CONTENT_TYPE_COSE, OK_RESULTS, VERSION
from agent.grid.link import check_private_file, no_delay, parse_broker_url, release_sockets
from agent.grid.replay import StateFile

EXIT_OK, EXIT_REJECTED, EXIT_TIMEOUT, EXIT_ERROR = 0, 1, 2, 3


def kid_for(public_key: Any) -> str:
    """The default key id of a public key: 16 hex digits of the SHA-256 of its raw bytes."""
    return hashlib.sha256(cose.raw_public(public_key)).hexdigest()[:16]


def parse_duration(text: str) -> float:
    """'900', '90s', '15m', '2h', '1d' -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not m:
        raise ValueError(f"duration {text!r}: use e.g. 90s, 15m, 2h")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


@dataclass(frozen=True)
class SignedCommand:
    """One signed command ready to publish."""

    topic: str
    payload: bytes  # the COSE_Sign1
    command: dict[str, Any]  # the command map that was signed

    @property
    def id(self) -> bytes:
        return bytes(self.command["id"])

    @property
    def seq(self) -> int:
        return int(self.command["seq"])

    @property
    def exp_ms(self) -> int:
        return int(self.command["exp"])


class CommandSigner:
    """Builds and signs command maps for one operator key (spec section 3)."""

    def __init__(self, key: Ed25519PrivateKey, kid: str | bytes, prefix: str = "gridminer") -> None:
        self.key = key
        self.kid = kid.encode("utf-8") if isinstance(kid, str) else bytes(kid)
        self.prefix = prefix

    @classmethod
    def from_file(cls, path: str | Path, kid: str | None = None, prefix: str = "gridminer",
                  insecure_dev: bool = False) -> CommandSigner:
        check_private_file(path, "operator private key", insecure_dev)
        try:
            key = cose.load_private_key(Path(path).read_bytes())
        except (OSError, ValueError) as exc:
            raise GridLinkError(f"operator key {path}: {exc}") from exc
        return cls(key, kid or kid_for(key.public_key()), prefix)

    def topic(self, site: str, dev: str | None) -> str:
        target = ALL if dev in (None, ANY_DEVICE) else dev
        return f"{self.prefix}/{site}/{target}/cmd"

    def build(
        self,
        site: str,
        dev: str | None,
        op: str,
        *,
        seq: int,
        now_ms: int | None = None,
        validity_s: float = 900.0,
        power_w: int | None = None,
        ramp_w_s: int | None = None,
        nbf_ms: int | None = None,
        fallback: str | None = None,
        cmd_id: bytes | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> SignedCommand:
        """A signed command; `dev` None (or "*") targets every device of the site."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        cmd: dict[str, Any] = {
            "v": VERSION,
            "id": cmd_id if cmd_id is not None else secrets.token_bytes(16),
            "seq": seq,
            "site": site,
            "dev": ANY_DEVICE if dev in (None, ANY_DEVICE) else dev,
            "iat": now_ms,
        }
        if nbf_ms is not None:
            cmd["nbf"] = nbf_ms
        cmd["exp"] = now_ms + round(validity_s * 1000)
        cmd["op"] = op
        if power_w is not None:
            cmd["power_w"] = int(power_w)
        if ramp_w_s is not None:
            cmd["ramp_w_s"] = int(ramp_w_s)
        if fallback is not None:
            cmd["fallback"] = fallback
        cmd.update(extra or {})
        topic = self.topic(site, dev)
        return SignedCommand(topic, self.sign(topic, cmd), cmd)

    def sign(self, topic: str, cmd: Mapping[str, Any]) -> bytes:
        """Sign any map (tests craft bad ones on purpose)."""
        return cose.sign(cbor2.dumps(dict(cmd)), self.key, self.kid, topic.encode("utf-8"))


class SeqCounter:
    """The issuer's `seq` per kid: max(last + 1, now in ms), kept in a locked JSON file so several
    operator processes sharing a key never reuse a value (and a lost file only jumps forward)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def next(self, kid: bytes) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_name(self.path.name + ".lock")
        with open(lock_path, "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            store = StateFile(self.path)
            try:
                data = store.load() or {}
            except ValueError:
                data = {}
            last = int(data.get(kid.hex(), -1))
            seq = max(last + 1, int(time.time() * 1000))
            data[kid.hex()] = seq
            store.save(data)
            return seq


def jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


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
        prefix = self.signer.prefix if self.signer else "gridminer"
        return f"{prefix}/{site}/{dev}/ack/{self.options.client_id}"

    def online_devices(self, site: str, settle_s: float = 0.3) -> list[str]:
        """Devices whose retained status says online (read once, then unsubscribed)."""
        prefix = self.signer.prefix if self.signer else "gridminer"
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
                status = _decode_map(payload)
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
            ack = _decode_map(payload)
            if ack is None or (ack.get("id") not in (None, signed.id)):
                continue
            if ack.get("id") is None and correlation is None:
                continue  # undecodable-command acks can only be matched by correlation data
            device = _user_property(props, "dev") or topic.split("/")[2]
            replies[device] = Reply(device, ack, topic, received)
        return list(replies.values())


def _decode_map(payload: bytes) -> dict[str, Any] | None:
    try:
        data = cbor2.loads(payload)
    except Exception:
        return None
    return dict(data) if isinstance(data, Mapping) else None


def _user_property(props: Any, name: str) -> str | None:
    for key, value in getattr(props, "UserProperty", None) or []:
        if key == name:
            return str(value)
    return None


# ---- watch ------------------------------------------------------------------------------------
class SiteView:
    """The latest status and telemetry per device of a site, as a table."""

    COLUMNS = ("device", "state", "mode", "power_w", "setpoint_w", "temp_c", "last_seen_s")

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}

    def update(self, topic: str, payload: bytes, now_s: float) -> str | None:
        parts = topic.split("/")
        if len(parts) != 4 or parts[3] not in ("status", "telemetry"):
            return None
        data = _decode_map(payload)
        if data is None:
            return None
        row = self.rows.setdefault(parts[2], {"device": parts[2]})
        if parts[3] == "status":
            row["state"] = data.get("state")
            row["mode"] = data.get("mode", row.get("mode"))
        else:
            for key in ("mode", "power_w", "setpoint_w", "temp_c", "target_w"):
                row[key] = data.get(key)
            row["seen_s"] = now_s
        return parts[3]

    def table(self, now_s: float) -> list[dict[str, Any]]:
        out = []
        for name in sorted(self.rows):
            row = dict(self.rows[name])
            seen = row.pop("seen_s", None)
            row["last_seen_s"] = round(now_s - seen, 1) if seen is not None else None
            out.append({k: row.get(k) for k in self.COLUMNS})
        return out

    def render(self, now_s: float) -> str:
        rows = self.table(now_s)
        cells = [[_cell(r[c]) for c in self.COLUMNS] for r in rows]
        widths = [max([len(c)] + [len(row[i]) for row in cells])
                  for i, c in enumerate(self.COLUMNS)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(self.COLUMNS, widths, strict=True))]
        lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
        return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if isinstance(value, float) else str(value)


def watch(op: Operator, site: str, prefix: str, out: TextIO, *, count: int | None,
          interval_s: float, as_json: bool, timeout_s: float | None) -> int:
    view = SiteView()
    op.subscribe([f"{prefix}/{site}/+/status", f"{prefix}/{site}/+/telemetry"])
    printed = 0
    next_print = time.monotonic() + interval_s
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while count is None or printed < count:
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            break
        try:
            topic, payload, _, received = op.messages.get(timeout=max(0.0, next_print - now))
            view.update(topic, payload, received)
            if time.monotonic() < next_print:
                continue
        except queue.Empty:
            pass
        now = time.monotonic()
        next_print = now + interval_s
        if not view.rows:
            continue
        if as_json:
            for row in view.table(now):
                out.write(json.dumps(jsonable(row)) + "\n")
        else:
            if out.isatty():
                out.write("\x1b[H\x1b[2J")
            out.write(view.render(now) + "\n\n")
        out.flush()
        printed += 1
    return EXIT_OK if printed or count is None else EXIT_TIMEOUT


# ---- command line -----------------------------------------------------------------------------
def _common(p: argparse.ArgumentParser, needs_key: bool) -> None:
    p.add_argument("--broker", default="mqtt://127.0.0.1:1883", metavar="URL",
                   help="mqtt://HOST:PORT or mqtts://HOST:PORT")
    p.add_argument("--prefix", default="gridminer")
    p.add_argument("--ca", metavar="FILE", help="CA certificate of the broker (mqtts)")
    p.add_argument("--cert", metavar="FILE", help="client certificate (mqtts)")
    p.add_argument("--client-key", metavar="FILE", help="client certificate key (mqtts)")
    p.add_argument("--username")
    p.add_argument("--password-file", metavar="FILE")
    p.add_argument("--timeout", type=float, default=5.0, metavar="S",
                   help="seconds to wait for acks (watch: total time, default forever)")
    p.add_argument("--site", required=True)
    if needs_key:
        p.add_argument("--key", required=True, metavar="PRIVATE.pem", help="operator private key")
        p.add_argument("--kid", help="key id (default: derived from the key)")
        p.add_argument("--seq-file", metavar="FILE",
                       help="persisted seq counter (default: PRIVATE.pem.seq.json)")
        p.add_argument("--insecure-dev", action="store_true",
                       help="accept a private key readable by others (lab only)")


def _target(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--device", help="one device")
    group.add_argument("--all", action="store_true", help="every device of the site")
    p.add_argument("--for", dest="valid_for", default="15m", metavar="DURATION",
                   help="validity (exp - iat), e.g. 90s, 15m, 2h (default 15m)")
    p.add_argument("--ramp-w-s", type=int, metavar="R", help="ramp limit, W/s")
    p.add_argument("--fallback", choices=("hold_until_exp", "default_now"))
    p.add_argument("--at", type=float, metavar="EPOCH_S", help="not before (Unix seconds)")


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = sub.add_parser("keygen", help="make an Ed25519 operator key pair, print its kid")
    p.add_argument("--key", required=True, metavar="PRIVATE.pem", help="private key to write")
    p.add_argument("--pub", metavar="PUBLIC.pem", help="public key (default: PRIVATE.pub.pem)")
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    p = sub.add_parser("setpoint", help="set a device's power target")
    _common(p, True)
    _target(p)
    p.add_argument("--power-w", type=int, required=True, metavar="W")
    for name, text in (("curtail", "hold the deepest ready-to-resume load"),
                       ("resume", "return to the configured default target"),
                       ("standby", "power the chain down"),
                       ("ping", "ack only (latency probe)")):
        p = sub.add_parser(name, help=text)
        _common(p, True)
        _target(p)
    p = sub.add_parser("watch", help="live table of a site's devices")
    _common(p, False)
    p.add_argument("--once", action="store_true", help="print one table and exit")
    p.add_argument("--count", type=int, metavar="N", help="print N tables and exit")
    p.add_argument("--interval", type=float, default=1.0, metavar="S")
    p.add_argument("--json", action="store_true", help="JSON lines instead of a table")


def _broker_options(args: argparse.Namespace) -> BrokerOptions:
    password = None
    if args.password_file:
        password = Path(args.password_file).read_text(encoding="utf-8").strip()
    return BrokerOptions(args.broker, args.ca, args.cert, args.client_key, args.username, password)


def keygen(args: argparse.Namespace) -> int:
    key_path = Path(args.key)
    pub_path = Path(args.pub) if args.pub else key_path.with_name(key_path.stem + ".pub.pem")
    for path in (key_path, pub_path):
        if path.exists() and not args.force:
            print(f"{path} exists (use --force to overwrite)", file=sys.stderr)
            return EXIT_ERROR
    key = Ed25519PrivateKey.generate()
    key_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(cose.private_pem(key))
    os.chmod(key_path, 0o600)
    pub_path.write_bytes(cose.public_pem(key.public_key()))
    print(f"private key {key_path} (0600), public key {pub_path}", file=sys.stderr)
    print(kid_for(key.public_key()))
    return EXIT_OK


def run(args: argparse.Namespace) -> int:
    if args.action == "keygen":
        return keygen(args)
    try:
        options = _broker_options(args)
        if args.action == "watch":
            with Operator(options).connect(args.timeout if args.timeout else 5.0) as op:
                count = 1 if args.once else args.count
                return watch(op, args.site, args.prefix, sys.stdout, count=count,
                             interval_s=args.interval, as_json=args.json,
                             timeout_s=None if count is None else max(args.timeout, 1.0) * 2)
        signer = CommandSigner.from_file(args.key, args.kid, args.prefix, args.insecure_dev)
        seq = SeqCounter(args.seq_file or f"{args.key}.seq.json")
        build: dict[str, Any] = {"validity_s": parse_duration(args.valid_for)}
        if args.action == "setpoint":
            build["power_w"] = args.power_w
        if args.ramp_w_s is not None:
            build["ramp_w_s"] = args.ramp_w_s
        if args.fallback is not None:
            build["fallback"] = args.fallback
        if args.at is not None:
            build["nbf_ms"] = int(args.at * 1000)
        with Operator(options, signer, seq).connect(args.timeout) as op:
            signed, replies = op.send(args.site, None if args.all else args.device, args.action,
                                      timeout_s=args.timeout, **build)
    except (GridLinkError, ValueError, OSError) as exc:
        print(f"gridminer operator: {exc}", file=sys.stderr)
        return EXIT_ERROR
    for reply in replies:
        print(json.dumps(reply.to_json(), sort_keys=True))
    missing = sorted(op.last_wanted - {r.device for r in replies})
    for device in missing or ([] if replies else ["?"]):
        print(json.dumps({"device": device, "id": signed.id.hex(), "seq": signed.seq,
                          "result": "timeout"}, sort_keys=True))
    if missing or not replies:
        return EXIT_TIMEOUT
    return EXIT_OK if all(r.ok for r in replies) else EXIT_REJECTED
