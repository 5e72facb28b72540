"""The fleet emulator on a real Mosquitto: virtual devices come online, take signed commands,
reject bad ones, and show their faults (killed, tripped, cut) the way real devices would."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.site.client import BrokerOptions, Operator
from agent.site.signer import CommandSigner, SeqCounter
from hil.broker import Mosquitto
from hil.fleet.fleet import Fleet, FleetOptions
from tests.integration.conftest import KID, OPERATOR_KEY, Observer, operator_for

SITE = "site-a"
PREFIX = f"gridminer/{SITE}"


@pytest.fixture
def fleet_factory(mosquitto: Mosquitto, tmp_path: Path) -> Iterator[Callable[..., Fleet]]:
    """Fleets trusting the test operator key (as devices of a site trust its controller's),
    started with no restart spread, each waited online."""
    pub = tmp_path / "site_pub.pem"
    pub.write_bytes(OPERATOR_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    os.chmod(pub, 0o644)
    fleets: list[Fleet] = []

    def make(devices: int, **kw: Any) -> Fleet:
        fleet = Fleet(FleetOptions(mosquitto.url, SITE, [(KID, str(pub))],
                                   str(tmp_path / f"state{len(fleets)}"), devices=devices,
                                   seed=1, restart_spread_s=0.0, **kw))
        fleets.append(fleet)
        fleet.start()
        fleet.wait_online(timeout_s=20)
        return fleet

    yield make
    for fleet in fleets:
        fleet.stop()


def _latest(observer: Observer, leaf: str, want: Callable[[str, dict[str, Any]], bool],
            devices: set[str], timeout_s: float, since: int = 0) -> dict[str, dict[str, Any]]:
    """The first message on `.../DEVICE/leaf` of each device in `devices` that `want` accepts,
    from the observer's `since`-th message on (those it has read already included);
    AssertionError naming the devices still missing at the deadline."""
    found: dict[str, dict[str, Any]] = {}

    def take(topic: str, msg: Any) -> None:
        dev = topic.split("/")[2]
        if topic.endswith("/" + leaf) and dev in devices and dev not in found \
                and isinstance(msg, dict) and want(dev, msg):
            found[dev] = msg

    for topic, msg, _ in observer.seen[since:]:
        take(topic, msg)
    deadline = time.monotonic() + timeout_s
    while set(found) != devices:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {leaf} for {sorted(devices - set(found))[:5]} "
                                 f"(of {len(devices)}) in {timeout_s} s")
        try:
            topic, msg, _ = observer.wait_for(lambda t, m, r: True, left)
        except AssertionError:
            continue
        take(topic, msg)
    return found


def test_fleet_comes_online_and_follows_a_signed_site_command(fleet_factory, mosquitto,
                                                              tmp_path):
    fleet = fleet_factory(20)
    ids = set(fleet.device_ids)
    assert len(ids) == 20 and not ids & {"all", "site"}
    # a subscriber that comes later sees each device's retained status: online, with its caps
    status_obs = Observer(mosquitto, [f"{PREFIX}/+/status"])
    try:
        status = _latest(status_obs, "status", lambda d, m: m.get("state") == "online", ids, 10)
    finally:
        status_obs.close()
    ratings = {d: s["caps"]["max_w"] for d, s in status.items()}
    assert len(set(ratings.values())) == 3  # the default mix: three models
    telemetry = Observer(mosquitto, [f"{PREFIX}/+/telemetry"])
    try:
        with operator_for(mosquitto, tmp_path).connect() as op:
            signed, replies = op.send(SITE, None, "setpoint", power_w=700, expect=sorted(ids),
                                      timeout_s=10)
        assert {r.device for r in replies} == ids
        assert all(r.ack["result"] == "accepted" for r in replies), replies
        eta_s = max(r.ack.get("eta_ms", 0) for r in replies) / 1000.0
        # telemetry of every device shows the command and its power reaching the setpoint
        follows = _latest(
            telemetry, "telemetry",
            lambda d, m: m.get("cmd_id") == signed.id and m.get("setpoint_w") == 700
            and abs(m.get("power_w", 0) - 700) <= 0.03 * ratings[d], ids, eta_s + 8)
    finally:
        telemetry.close()
    assert all(m["mode"] == "mining" for m in follows.values())
    # the fleet's true power is the sum of the setpoints (within the devices' tolerance)
    assert abs(fleet.figures()["power_w"] - 20 * 700) <= 0.03 * 20 * 700


def test_fleet_rejects_unsigned_and_wrongly_signed_commands(fleet_factory, mosquitto, tmp_path):
    fleet = fleet_factory(3)
    dev = fleet.device_ids[0]
    stranger = CommandSigner(Ed25519PrivateKey.generate(), KID)
    with Operator(BrokerOptions(mosquitto.url), stranger, SeqCounter(tmp_path / "s.json")) \
            .connect() as op:
        _, replies = op.send(SITE, dev, "setpoint", power_w=500, timeout_s=5)
        assert [r.ack["reason"] for r in replies] == ["bad_signature"]
        # a plain CBOR map (no COSE signature) on the device's command topic
        cmd = {"v": 1, "id": os.urandom(16), "seq": 1, "site": SITE, "dev": dev,
               "iat": int(time.time() * 1000), "exp": int(time.time() * 1000) + 60_000,
               "op": "curtail"}
        op.subscribe([op.response_topic(SITE, dev)])
        op.publish_raw(f"{PREFIX}/{dev}/cmd", cbor2.dumps(cmd), op.response_topic(SITE, dev),
                       b"raw-1")
        signed = stranger.build(SITE, dev, "curtail", seq=2)
        raw = op.collect(signed, {dev}, b"raw-1", 5)
        assert [r.ack["reason"] for r in raw] == ["malformed"]
    # neither took effect: no command in force, both counted as rejected
    session = fleet.device(dev).session
    active, counters = fleet.loop.call(lambda: (session.active, dict(session.counters)))
    assert active is None
    assert counters["rejected_bad_signature"] == counters["rejected_malformed"] == 1


def test_fleet_faults_show_as_real_devices_show_them(fleet_factory, mosquitto, tmp_path):
    fleet = fleet_factory(12)
    obs = Observer(mosquitto, [f"{PREFIX}/+/status", f"{PREFIX}/+/telemetry"])
    try:
        with operator_for(mosquitto, tmp_path).connect() as op:
            signed, replies = op.send(SITE, None, "setpoint", power_w=600, expect=fleet.device_ids,
                                      fallback="default_now", timeout_s=10)
        assert len(replies) == 12 and all(r.ok for r in replies)
        mark = len(obs.seen)
        killed = set(fleet.kill(share=2 / 12))
        tripped = set(fleet.trip(share=2 / 12))
        assert len(killed) == 2 and len(tripped) == 2 and not killed & tripped
        # killed: the broker publishes their Will, the status goes offline
        _latest(obs, "status", lambda d, m: m.get("state") == "offline", killed, 10, mark)
        # tripped: telemetry and status say so
        _latest(obs, "telemetry", lambda d, m: m.get("mode") == "tripped", tripped, 10, mark)
        _latest(obs, "status", lambda d, m: m.get("mode") == "tripped", tripped, 10, mark)
        # cut: the connection drops (status offline) and each falls back to its default target
        mark = len(obs.seen)
        healthy = sorted(set(fleet.device_ids) - killed - tripped)
        cut = set(fleet.cut(ids=healthy[:2]))
        assert cut == set(healthy[:2])
        _latest(obs, "status", lambda d, m: m.get("state") == "offline", cut, 10, mark)

        def fell_back() -> bool:
            return fleet.loop.call(lambda: all(
                fleet.device(d).session.counters["fallback_link_lost"] == 1
                and fleet.device(d).session.active is None for d in cut))

        deadline = time.monotonic() + 5
        while not fell_back():
            assert time.monotonic() < deadline, "cut devices did not fall back"
            time.sleep(0.05)
        # restored: back online, and the telemetry they buffered shows no command in force
        mark = len(obs.seen)
        fleet.restore()
        _latest(obs, "status", lambda d, m: m.get("state") == "online", cut, 10, mark)
        _latest(obs, "telemetry", lambda d, m: "cmd_id" not in m, cut, 10, mark)
        # the others still follow the command
        rest = set(fleet.device_ids) - killed - tripped - cut
        _latest(obs, "telemetry", lambda d, m: m.get("cmd_id") == signed.id, rest, 5, mark)
        figs = fleet.figures()
        assert (figs["dead"], figs["tripped"], figs["cut"]) == (2, 2, 0)
        assert figs["online"] == 10
    finally:
        obs.close()
