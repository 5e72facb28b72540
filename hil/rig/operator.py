"""The rig as the grid operator on the broker: an operator key made for the run, the MQTT client
that sends the grid simulator's signed commands (`OperatorSender`), and the thread
(`Listener`) that files what the agent publishes (telemetry, status, acks) into `Live`, timed
on the rig clock.
"""

from __future__ import annotations

import os
import queue
import secrets
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.grid.telemetry import decode_map, jsonable
from hil.rig.options import DEVICE, KID, PREFIX, SITE, RigClock


def operator_key(work: Path) -> tuple[Any, Path]:
    """A fresh Ed25519 operator key in WORK: its command signer and the public key's path."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from agent.grid import cose
    from agent.site.signer import CommandSigner

    key = Ed25519PrivateKey.generate()
    priv = work / "operator.pem"
    fd = os.open(priv, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(cose.private_pem(key))
    pub = work / "operator.pub.pem"
    pub.write_bytes(cose.public_pem(key.public_key()))
    return CommandSigner(key, KID, PREFIX), pub


class OperatorSender:
    """Sends the simulator's commands to `device` of `site` (the rig's board by default) with
    the operator module's signer over one MQTT client; acks come back on a response topic and
    are matched by correlation data."""

    def __init__(self, op: Any, signer: Any, seq: Any, response_topic: str, *,
                 site: str = SITE, device: str = DEVICE) -> None:
        self.op = op
        self.signer = signer
        self.seq = seq
        self.response_topic = response_topic
        self.site, self.device = site, device
        self.by_correlation: dict[bytes, str] = {}

    def send(self, op: str, *, power_w: int | None, ramp_w_s: int | None, validity_s: float,
             fallback: str | None) -> tuple[str, int | None, int | None]:
        signed = self.signer.build(self.site, self.device, op, seq=self.seq.next(self.signer.kid),
                                   validity_s=validity_s, power_w=power_w, ramp_w_s=ramp_w_s,
                                   fallback=fallback)
        correlation = secrets.token_bytes(8)
        self.by_correlation[correlation] = signed.id.hex()
        self.op.publish_command(signed, self.response_topic, correlation)
        return signed.id.hex(), signed.seq, signed.exp_ms


def connect(broker_url: str, signer: Any, work: Path) -> Any:
    """The operator's MQTT client, connected (its sequence numbers kept in WORK)."""
    from agent.site.client import BrokerOptions, Operator
    from agent.site.signer import SeqCounter

    op = Operator(BrokerOptions(broker_url, client_id=f"hil-grid-{secrets.token_hex(3)}"),
                  signer, SeqCounter(work / "operator.seq.json"))
    op.connect(10.0)
    return op


def subscribe(op: Any, signer: Any) -> OperatorSender:
    """`op` subscribed to the rig device's acks, status and telemetry; the sender of its
    commands."""
    base = f"{PREFIX}/{SITE}/{DEVICE}"
    response = f"{base}/ack/{op.options.client_id}"
    op.subscribe([response, f"{base}/ack", f"{base}/status", f"{base}/telemetry"])
    return OperatorSender(op, signer, op.seq, response)


@dataclass
class Live:
    """What the rig has heard from the agent (updated by the MQTT thread); `epoch` counts the
    agent's restarts (a telemetry row carries the epoch of the process that sent it)."""

    status: dict[str, Any] = field(default_factory=dict)
    telemetry: list[dict[str, Any]] = field(default_factory=list)
    last: dict[str, Any] = field(default_factory=dict)
    acks: dict[str, tuple[float, dict[str, Any]]] = field(default_factory=dict)
    epoch: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class Listener:
    """The rig's MQTT thread: every message of the operator's client filed into `live`."""

    def __init__(self, operator: Any, sender: OperatorSender, live: Live, clock: RigClock) -> None:
        self.operator = operator
        self.sender = sender
        self.live = live
        self.clock = clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hil-mqtt", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to end (`join` waits for it)."""
        self._stop.set()

    def join(self, timeout_s: float) -> None:
        self._thread.join(timeout_s)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                topic, payload, props, _ = self.operator.messages.get(timeout=0.2)
            except queue.Empty:
                continue
            data = decode_map(payload)
            if data is None:
                continue
            t = self.clock.now()
            kind = topic.split("/")[3] if topic.count("/") >= 3 else ""
            with self.live.lock:
                self._file(kind, data, props, t)

    def _file(self, kind: str, data: dict[str, Any], props: Any, t: float) -> None:
        """One message into `live` (its lock held) at rig time `t`."""
        live = self.live
        if kind == "telemetry":
            # time of production from the device's ts (buffered telemetry arrives late)
            ts = data.get("ts")
            t_dev = ts / 1000.0 - self.clock.wall_t0 if isinstance(ts, int) else t
            if abs(t_dev - t) > 3600:
                t_dev = t  # a device clock far off: use the arrival time
            row = {**jsonable(data), "t_s": round(t_dev, 3), "rx_s": round(t, 3),
                   "epoch": live.epoch}
            live.telemetry.append(row)
            live.last = row
        elif kind == "status":
            live.status = jsonable(data)
        elif kind == "ack":
            corr = getattr(props, "CorrelationData", None)
            cid = self.sender.by_correlation.get(bytes(corr)) if corr else None
            if cid is None and isinstance(data.get("id"), bytes):
                cid = data["id"].hex()
            if cid is not None and cid not in live.acks:
                live.acks[cid] = (t, jsonable(data))
