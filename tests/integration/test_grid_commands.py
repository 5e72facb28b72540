"""Signed commands through a real Mosquitto: each rejection code, fuzzed payloads, the operator
CLI end to end (ack printed, the sink got the setpoint), site-wide commands."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.grid import cose
from agent.grid.contract import REASONS
from agent.grid.replay import StateFile
from agent.grid.session import GridPolicy
from agent.site.signer import CommandSigner
from tests.integration.conftest import KID, OPERATOR_KEY, operator_for, plain_settings

ROOT = Path(__file__).parents[2]
CMD_TOPIC = "gridminer/site-a/dev-1/cmd"
REPLY = "gridminer/site-a/dev-1/ack/test"


def wait_online(dev, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not dev.link.connected:
        assert time.monotonic() < deadline, "device did not connect"
        time.sleep(0.01)


@pytest.fixture
def setup(mosquitto, tmp_path, device_factory):
    dev = device_factory(plain_settings(mosquitto, tmp_path), name="d")
    wait_online(dev)
    op = operator_for(mosquitto, tmp_path).connect()
    op.subscribe([REPLY, "gridminer/site-a/+/ack"])
    yield dev, op
    op.close()


def acks_for(op, n: int, timeout_s: float = 5.0) -> list[dict]:
    import queue

    import cbor2

    out = []
    deadline = time.monotonic() + timeout_s
    while len(out) < n and (left := deadline - time.monotonic()) > 0:
        try:
            topic, payload, props, _ = op.messages.get(timeout=left)
        except queue.Empty:
            break
        if topic == REPLY:
            out.append((cbor2.loads(payload), props.CorrelationData))
    return out


def test_each_rejection_code_is_acked_over_the_broker(setup) -> None:
    dev, op = setup
    signer = op.signer
    now = int(time.time() * 1000)

    def cmd(**over):
        base = {"v": 1, "id": os.urandom(16), "seq": 1000, "site": "site-a", "dev": "dev-1",
                "iat": now, "exp": now + 60_000, "op": "setpoint", "power_w": 1500}
        base.update(over)
        return base

    other = CommandSigner(Ed25519PrivateKey.from_private_bytes(bytes(32)), KID)
    crafted = {
        "too_large": b"\xa0" * 5000,
        "malformed": signer.sign(CMD_TOPIC, cmd(extra=1)),
        "bad_signature": other.sign(CMD_TOPIC, cmd()),
        "wrong_target": signer.sign(CMD_TOPIC, cmd(dev="dev-2")),
        "unsupported_version": signer.sign(CMD_TOPIC, cmd(v=2)),
        "expired": signer.sign(CMD_TOPIC, cmd(iat=now - 120_000, exp=now - 60_000)),
        "out_of_range": signer.sign(CMD_TOPIC, cmd(power_w=10_000)),
        "accepted": signer.sign(CMD_TOPIC, cmd(seq=2000)),
        "replayed": signer.sign(CMD_TOPIC, cmd(seq=1999)),
    }
    for name, payload in crafted.items():
        op.publish_raw(CMD_TOPIC, payload, REPLY, name.encode(), 60)
    got = {corr.decode(): ack for ack, corr in acks_for(op, len(crafted))}
    assert set(got) == set(crafted)
    for name in (r for r in REASONS if r in crafted):
        assert got[name]["result"] == "rejected" and got[name]["reason"] == name, got[name]
    assert "id" not in got["too_large"]
    assert got["accepted"]["result"] == "accepted"
    assert dev.sink.calls[-1] == ("setpoint", 1500, None)


def test_the_added_reason_codes_are_acked_over_the_broker(mosquitto, tmp_path,
                                                          device_factory) -> None:
    policy = GridPolicy(restart_spread_s=0.0, telemetry_period_s=0.2, max_scheduled=1)
    dev = device_factory(plain_settings(mosquitto, tmp_path), name="d", policy=policy)
    wait_online(dev)
    with operator_for(mosquitto, tmp_path).connect() as op:
        op.subscribe([REPLY])
        later = int(time.time() * 1000) + 600_000
        for name, seq in (("scheduled", 10), ("schedule_full", 11)):
            signed = op.signer.build("site-a", "dev-1", "setpoint", seq=seq, power_w=1500,
                                     nbf_ms=later, validity_s=900)
            op.publish_raw(CMD_TOPIC, signed.payload, REPLY, name.encode(), 60)
        assert [a["result"] for a, _ in acks_for(op, 2)] == ["scheduled", "rejected"]
        working = dev.session.state
        dev.session.state = StateFile(working.path, writer=full_disk)
        signed = op.signer.build("site-a", "dev-1", "standby", seq=12)
        op.publish_raw(CMD_TOPIC, signed.payload, REPLY, b"unavailable", 60)
        [(ack, _)] = acks_for(op, 1)
        dev.session.state = working
    assert ack["result"] == "rejected" and ack["reason"] == "unavailable", ack
    assert "No space left on device" in ack["detail"]
    assert dev.session.counters["rejected_schedule_full"] == 1
    assert all(call[0] != "standby" for call in dev.sink.calls)


def full_disk(fd: int, data: memoryview) -> int:
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("response", [
    "gridminer/site-a/dev-1/ack/+",  # paho raised on this inside the session
    "gridminer/site-a/dev-1/ack/#",
    "gridminer/site-a/dev-2/ack",  # another device's answers
])
def test_a_response_topic_outside_the_ack_tree_is_answered_on_the_ack_topic(
    setup, response: str
) -> None:
    import cbor2

    dev, op = setup
    bad = op.signer.build("site-a", "dev-1", "setpoint", seq=1, power_w=1500)
    good = op.signer.build("site-a", "dev-1", "setpoint", seq=2, power_w=1600)
    op.publish_raw(CMD_TOPIC, bad.payload, response, b"bad", 60)
    op.publish_raw(CMD_TOPIC, good.payload, REPLY, b"good", 60)
    deadline = time.monotonic() + 5
    seen: dict[str, tuple[str, dict]] = {}
    while len(seen) < 2 and time.monotonic() < deadline:
        topic, payload, props, _ = op.messages.get(timeout=max(0.01, deadline - time.monotonic()))
        seen[props.CorrelationData.decode()] = (topic, cbor2.loads(payload))
    assert seen["bad"][0] == "gridminer/site-a/dev-1/ack"
    assert "response topic refused" in seen["bad"][1]["detail"]
    assert seen["good"] == (REPLY, seen["good"][1]) and seen["good"][1]["result"] == "accepted"
    assert not dev.errors and dev.link.connected
    assert dev.session.counters["inbound_errors"] == 0


def test_fuzzed_payloads_through_the_broker_never_crash_the_device(setup) -> None:
    dev, op = setup
    sent = []

    @settings(max_examples=300, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(st.binary(max_size=200) | st.builds(
        lambda d: op.signer.sign(CMD_TOPIC, d),
        st.dictionaries(st.sampled_from(["v", "id", "seq", "site", "dev", "op", "power_w"]),
                        st.integers(-5, 5) | st.text(max_size=5) | st.binary(max_size=17),
                        max_size=7)))
    def publish(payload: bytes) -> None:
        op.publish_raw(CMD_TOPIC, payload, REPLY, str(len(sent)).encode(), 60)
        sent.append(payload)

    publish()
    acks = acks_for(op, len(sent), timeout_s=20)
    assert len(acks) == len(sent)
    assert all(a["result"] == "rejected" and a["reason"] in REASONS for a, _ in acks)
    assert dev.session.counters["rejected"] >= len(sent)
    assert not dev.errors and dev.link.connected


def test_site_wide_command_is_answered_by_every_online_device(mosquitto, tmp_path,
                                                              device_factory) -> None:
    devs = [device_factory(plain_settings(mosquitto, tmp_path, d), name=d)
            for d in ("dev-1", "dev-2")]
    for d in devs:
        wait_online(d)
    with operator_for(mosquitto, tmp_path).connect() as op:
        signed, replies = op.send("site-a", None, "curtail", timeout_s=5)
    assert signed.topic == "gridminer/site-a/all/cmd"
    assert sorted(r.device for r in replies) == ["dev-1", "dev-2"]
    assert all(r.ack["result"] == "accepted" and r.ack["id"] == signed.id for r in replies)
    assert all(d.sink.calls[-1] == ("curtail", None, None) for d in devs)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", "operator", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_operator_cli_setpoint_reaches_the_device_and_prints_the_ack(setup, mosquitto,
                                                                     tmp_path) -> None:
    dev, _ = setup
    key = tmp_path / "op.pem"
    key.write_bytes(cose.private_pem(OPERATOR_KEY))
    key.chmod(0o600)
    common = ["--broker", mosquitto.url, "--site", "site-a", "--key", str(key), "--kid", KID,
              "--seq-file", str(tmp_path / "seq.json"), "--timeout", "5", "--json"]
    done = run_cli("setpoint", *common, "--device", "dev-1", "--power-w", "1800", "--for", "15m",
                   "--ramp-w-s", "100")
    assert done.returncode == 0, done.stderr
    ack = json.loads(done.stdout.strip().splitlines()[-1])
    assert ack["result"] == "accepted" and ack["device"] == "dev-1" and ack["applied_w"] == 1800.0
    assert ("setpoint", 1800, 100) in dev.sink.calls
    done = run_cli("setpoint", *common, "--device", "dev-1", "--power-w", "99999")
    assert done.returncode == 1
    assert json.loads(done.stdout.strip().splitlines()[-1])["reason"] == "out_of_range"
    done = run_cli("ping", *common, "--device", "nobody", "--timeout", "0.5")
    assert done.returncode == 2 and '"timeout"' in done.stdout and "not online" in done.stdout
    plain = [a for a in common if a != "--json"]
    done = run_cli("setpoint", *plain, "--device", "dev-1", "--power-w", "99999")
    assert done.returncode == 1
    assert done.stdout.strip().startswith("dev-1: rejected (out_of_range)"), done.stdout


def test_operator_cli_keygen_and_watch(setup, mosquitto, tmp_path) -> None:
    done = run_cli("keygen", "--key", str(tmp_path / "k.pem"))
    assert done.returncode == 0, done.stderr
    kid = done.stdout.strip()
    assert len(kid) == 16 and (tmp_path / "k.pem").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "k.pub.pem").exists()
    done = run_cli("watch", "--broker", mosquitto.url, "--site", "site-a", "--count", "1",
                   "--json", "--interval", "0.5")
    assert done.returncode == 0, done.stderr
    row = json.loads(done.stdout.splitlines()[0])
    assert row["device"] == "dev-1" and row["state"] == "online" and row["mode"] == "mining"
    assert row["power_w"] == 1000.0


def test_a_retained_command_left_on_the_broker_never_acts(mosquitto, tmp_path,
                                                          device_factory) -> None:
    with operator_for(mosquitto, tmp_path).connect() as op:
        signed = op.signer.build("site-a", "dev-1", "setpoint", seq=1, power_w=1234)
        info = op._client.publish(signed.topic, signed.payload, qos=1, retain=True)
        info.wait_for_publish(5)
        op.subscribe(["gridminer/site-a/dev-1/ack"])
        dev = device_factory(plain_settings(mosquitto, tmp_path), name="d")
        wait_online(dev)
        time.sleep(0.5)
        assert all(call[0] != "setpoint" for call in dev.sink.calls)
        assert op.messages.empty()  # no ack either: the device never saw it
