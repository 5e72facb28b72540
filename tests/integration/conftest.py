"""Integration fixtures: a real Mosquitto broker on loopback, and a device (GridLink +
GridSession with a fake sink) run by a control thread the way the agent runs it."""

from __future__ import annotations

import gc
import os
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.grid.broker import release_sockets
from agent.grid.link import GridLink, LinkSettings
from agent.grid.session import GridPolicy, GridSession
from agent.site.client import BrokerOptions, Operator
from agent.site.signer import CommandSigner, SeqCounter
from hil.broker import Mosquitto
from tests.support.grid_fakes import CAPS as CAPS  # re-exported
from tests.support.grid_fakes import RecordingSink

OPERATOR_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
KID = "op-test"


def _open_fds() -> set[tuple[int, str]]:
    """Open file descriptors of this process with what they point at."""
    fds = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            fds.add((int(name), os.readlink(f"/proc/self/fd/{name}")))
        except OSError:
            continue  # the descriptor listdir itself used, closed by now
    return fds


@pytest.fixture
def no_leaks() -> Iterator[None]:
    """Fail a test that leaves a thread running or a file descriptor open.

    Compares identities, not counts, so an earlier test's garbage closed meanwhile is no error."""
    gc.collect()
    threads, fds = set(threading.enumerate()), _open_fds()
    yield
    deadline = time.monotonic() + 2.0
    while True:
        gc.collect()
        new_threads = set(threading.enumerate()) - threads
        new_fds = _open_fds() - fds
        if not (new_threads or new_fds) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not new_threads, f"threads left running: {sorted(t.name for t in new_threads)}"
    assert not new_fds, f"file descriptors left open: {sorted(new_fds)}"


@pytest.fixture
def mosquitto() -> Iterator[Mosquitto]:
    """An anonymous broker (no ACL) on a free loopback port."""
    with Mosquitto() as broker:
        yield broker


@pytest.fixture
def secure_mosquitto() -> Iterator[Mosquitto]:
    """TLS + passwords/client certificates + the ACL of spec 1 for dev-1, dev-2 (site-a)."""
    with Mosquitto(tls=True, devices={"dev-1": "site-a", "dev-2": "site-a"}) as broker:
        yield broker


class Device:
    """A device on the broker: GridLink + GridSession driven by its own control thread, which
    sleeps until the next due time or until the link wakes it."""

    def __init__(self, settings: LinkSettings, state_dir: Path, policy: GridPolicy | None = None,
                 snapshot: Any = None) -> None:
        self.link = GridLink(settings, rng=random.Random(7))
        self.sink = RecordingSink(eta_s=0.5)
        self.snap = {"mode": "mining", "power_w": 1000.0, "target_w": 1000.0}
        self.session = GridSession(
            self.link, self.sink, {KID.encode(): OPERATOR_KEY.public_key()}, state_dir,
            snapshot or (lambda: self.snap),
            policy or GridPolicy(restart_spread_s=0.0, telemetry_period_s=0.2),
            rng=random.Random(3),
        )
        self._stop = threading.Event()
        self._wake = threading.Event()
        self.link.on_inbound = self._wake.set
        self._thread = threading.Thread(target=self._loop, name="control", daemon=True)
        self.errors: list[BaseException] = []

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                wait_s = self.session.service()
            except BaseException as exc:  # surfaced by the test
                self.errors.append(exc)
                return
            self._wake.wait(min(wait_s, 0.05))
            self._wake.clear()

    def start(self) -> Device:
        self.link.start()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(5)
        self.link.stop()
        assert not self.errors, self.errors


@pytest.fixture
def device_factory(tmp_path) -> Iterator[Any]:
    devices: list[Device] = []

    def make(settings: LinkSettings, name: str = "dev", **kw: Any) -> Device:
        dev = Device(settings, tmp_path / name, **kw).start()
        devices.append(dev)
        return dev

    yield make
    for dev in devices:
        dev.stop()


def plain_settings(broker: Mosquitto, tmp_path: Path, device: str = "dev-1",
                   **kw: Any) -> LinkSettings:
    return LinkSettings(broker.url, "site-a", device, state_dir=str(tmp_path / device),
                        reconnect_min_s=0.2, reconnect_max_s=1.0, **kw)


def operator_for(broker: Mosquitto, tmp_path: Path, url: str | None = None,
                 **options: Any) -> Operator:
    signer = CommandSigner(OPERATOR_KEY, KID)
    return Operator(BrokerOptions(url or broker.url, **options), signer,
                    SeqCounter(tmp_path / "seq.json"))


class Observer:
    """A plain MQTT 5 client that records decoded messages (CBOR maps) per topic."""

    def __init__(self, broker: Mosquitto, topics: list[str], **auth: Any) -> None:
        import queue
        import time

        import cbor2
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self._time = time
        self._cbor2 = cbor2
        self.messages: queue.Queue[tuple[str, Any, bool]] = queue.Queue()
        self.seen: list[tuple[str, Any, bool]] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="observer",
                                  protocol=mqtt.MQTTv5)
        if auth.get("username"):
            self.client.username_pw_set(auth["username"], auth.get("password"))
        subscribed = threading.Event()
        self.client.on_message = lambda c, u, m: self.messages.put(
            (m.topic, self._decode(m.payload), bool(m.retain)))
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        self.client.subscribe([(t, 1) for t in topics])
        assert subscribed.wait(5), "observer subscription"

    def _decode(self, payload: bytes) -> Any:
        try:
            return self._cbor2.loads(payload)
        except Exception:
            return payload

    def wait_for(self, predicate: Any, timeout_s: float = 5.0) -> tuple[str, Any, bool]:
        import queue

        deadline = self._time.monotonic() + timeout_s
        while (left := deadline - self._time.monotonic()) > 0:
            try:
                item = self.messages.get(timeout=left)
            except queue.Empty:
                break
            self.seen.append(item)
            if predicate(*item):
                return item
        raise AssertionError(f"no matching message in {timeout_s} s; saw {self.seen[-5:]}")

    def close(self) -> None:
        self.client.disconnect()
        deadline = self._time.monotonic() + 1.0
        while self.client.socket() is not None and self._time.monotonic() < deadline:
            self._time.sleep(0.01)
        self.client.loop_stop()
        release_sockets(self.client)
