"""GridSession on the control thread: commands to the sink, acks, schedule, lapse, link loss,
restart spread, telemetry buffering; with a fake link, a fake sink and a FakeClock."""

from __future__ import annotations

import random
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.clock import FakeClock
from agent.grid.contract import Topics
from agent.grid.link import Inbound
from agent.grid.session import GridPolicy, GridSession
from agent.site.signer import CommandSigner
from tests.support.grid_fakes import CAPS
from tests.support.grid_fakes import RecordingSink as FakeSink  # also used by test_takeover

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
SIGNER = CommandSigner(KEY, "op-1")
TOPICS = Topics("site-a", "dev-1")


class FakeLink:
    def __init__(self) -> None:
        self.topics = TOPICS
        self.connected = True
        self.inbox: list[Inbound] = []
        self.sent: list[tuple[str, dict, int, bytes | None]] = []
        self.acked: list[int] = []
        self.status: list[tuple[Any, Any]] = []

    def drain(self) -> list[Inbound]:
        items, self.inbox = self.inbox, []
        return items

    def publish(self, topic, payload, qos=0, retain=False, correlation_data=None,
                user_properties=()) -> bool:
        if not self.connected:
            return False
        self.sent.append((topic, cbor2.loads(payload), qos, correlation_data))
        return True

    def ack(self, msg: Inbound) -> None:
        self.acked.append(msg.mid)

    def set_status(self, caps, mode) -> None:
        self.status.append((caps, mode))

    def acks(self) -> list[dict]:
        return [m for t, m, _, _ in self.sent if "/ack" in t]

    def telemetry(self) -> list[dict]:
        return [m for t, m, _, _ in self.sent if t.endswith("/telemetry")]


class Rig:
    def __init__(self, tmp_path, spread_s: float = 0.0, **policy: Any) -> None:
        self.clock = FakeClock()
        self.tmp_path = tmp_path
        self.link = FakeLink()
        self.sink = FakeSink()
        self.snap = {"mode": "mining", "power_w": 1000.0, "target_w": 1000.0}
        self.policy = GridPolicy(restart_spread_s=spread_s, **policy)
        self.mid = 0
        self.session = self.new_session()

    def new_session(self) -> GridSession:
        self.session = GridSession(self.link, self.sink, {b"op-1": KEY.public_key()},
                                   self.tmp_path, lambda: self.snap, self.policy, self.clock,
                                   random.Random(1))
        return self.session

    @property
    def now_ms(self) -> int:
        return int(self.clock.time() * 1000)

    def send(self, op: str = "setpoint", seq: int = 1, dev: str | None = "dev-1",
             response: str | None = "gridminer/site-a/dev-1/ack/op-x", corr: bytes | None = b"c1",
             payload: bytes | None = None, **build: Any) -> None:
        build.setdefault("now_ms", self.now_ms)
        if op == "setpoint":
            build.setdefault("power_w", 1500)
        signed = SIGNER.build("site-a", dev, op, seq=seq, cmd_id=bytes([seq % 256]) * 16, **build)
        self.mid += 1
        self.link.inbox.append(Inbound(signed.topic, payload if payload is not None
                                       else signed.payload, response, corr, 0.0, self.mid, 1))

    def tick(self, seconds: float = 0.0) -> None:
        self.clock.advance(seconds)
        self.session.service()


@pytest.fixture
def rig(tmp_path) -> Rig:
    r = Rig(tmp_path)
    r.tick()
    r.sink.calls.clear()
    return r


def test_accepted_setpoint_reaches_the_sink_and_is_acked_on_the_response_topic(rig: Rig) -> None:
    rig.send(seq=5, ramp_w_s=200)
    rig.tick()
    assert rig.sink.calls == [("setpoint", 1500, 200)]
    reply = "gridminer/site-a/dev-1/ack/op-x"
    _, ack, qos, corr = next(s for s in rig.link.sent if s[0] == reply)
    assert (qos, corr) == (1, b"c1")
    assert ack["result"] == "accepted" and ack["seq"] == 5 and ack["id"] == bytes([5]) * 16
    assert ack["applied_w"] == 1500.0 and ack["eta_ms"] == 1500 and "limited_by" not in ack
    assert rig.link.acked == [1]  # PUBACK only after handling


def test_clamped_setpoint_is_accepted_and_says_what_limited_it(rig: Rig) -> None:
    rig.sink.max_w = 1200
    rig.send(seq=1, power_w=2000)
    rig.tick()
    ack = rig.link.acks()[-1]
    assert ack["result"] == "accepted" and ack["applied_w"] == 1200.0
    assert ack["limited_by"] == "thermal"


def test_without_response_topic_the_ack_goes_to_the_device_ack_topic(rig: Rig) -> None:
    rig.send(seq=1, response=None, corr=None)
    rig.tick()
    assert rig.link.sent[-1][0] == "gridminer/site-a/dev-1/ack"


def test_rejections_are_acked_with_the_reason_also_when_undecodable(rig: Rig) -> None:
    rig.send(seq=1, payload=b"\xff\x00garbage")
    rig.send(seq=2, power_w=99_999)
    rig.tick()
    bad, out = rig.link.acks()[-2:]
    assert bad["result"] == "rejected" and bad["reason"] == "malformed"
    assert "id" not in bad and "seq" not in bad
    assert out["reason"] == "out_of_range" and out["seq"] == 2
    assert rig.sink.calls == []
    assert rig.session.counters["rejected_malformed"] == 1


def test_duplicate_after_kill_and_restart_gets_the_original_ack_and_is_not_reapplied(
    rig: Rig,
) -> None:
    rig.send(seq=7)
    rig.tick()
    original = rig.link.acks()[-1]
    rig.new_session()  # kill -9: nothing flushed on purpose, new process reads the state file
    rig.tick()
    assert rig.sink.calls[-1] == ("setpoint", 1500, None)  # the active command is restored
    rig.sink.calls.clear()
    rig.send(seq=7)  # QoS 1 redelivery
    rig.send(seq=6)  # older seq
    rig.tick()
    dup, old = rig.link.acks()[-2:]
    assert dup["result"] == "duplicate"
    assert {k: v for k, v in dup.items() if k not in ("result", "ts")} == {
        k: v for k, v in original.items() if k not in ("result", "ts")}
    assert old["reason"] == "replayed"
    assert [c for c in rig.sink.calls if c[0] == "setpoint"] == []


def test_state_is_persisted_before_the_command_acts(rig: Rig, monkeypatch) -> None:
    def broken(_doc: dict) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(rig.session.state, "save", broken)
    rig.send(seq=3)
    rig.tick()
    assert rig.sink.calls == [] and rig.link.acks() == [] and rig.link.acked == []
    monkeypatch.undo()
    rig.send(seq=3)  # the broker delivers it again
    rig.tick()
    assert rig.link.acks()[-1]["result"] == "accepted"


def test_nbf_in_the_future_is_scheduled_then_applied_at_nbf(rig: Rig) -> None:
    rig.send(seq=1, nbf_ms=rig.now_ms + 60_000, validity_s=600)
    rig.tick()
    ack = rig.link.acks()[-1]
    assert ack["result"] == "scheduled" and ack["eta_ms"] == 60_000
    assert rig.sink.calls == []
    rig.tick(59.0)
    assert rig.sink.calls == []
    rig.tick(1.0)
    assert rig.sink.calls == [("setpoint", 1500, None)]
    assert len(rig.link.acks()) == 1  # one ack per command


def test_exp_lapse_moves_to_the_default_target(rig: Rig) -> None:
    rig.send(seq=1, op="curtail", validity_s=30)
    rig.tick()
    assert rig.sink.calls == [("curtail", None, None)]
    rig.tick(29.0)
    assert len(rig.sink.calls) == 1
    rig.tick(1.0)
    assert rig.sink.calls[-1] == ("resume", None, None)
    assert rig.session.active is None


def test_link_loss_with_default_now_falls_back_at_once(rig: Rig) -> None:
    rig.send(seq=1, op="standby", fallback="default_now")
    rig.tick()
    rig.link.connected = False
    rig.tick(0.1)
    assert rig.sink.calls[-1] == ("resume", None, None)


def test_link_loss_with_hold_until_exp_keeps_the_command(rig: Rig) -> None:
    rig.send(seq=1, op="standby", validity_s=60)
    rig.tick()
    rig.link.connected = False
    rig.tick(30.0)
    assert rig.sink.calls == [("standby", None, None)]
    rig.tick(30.0)
    assert rig.sink.calls[-1] == ("resume", None, None)


def test_restart_spread_holds_then_ramps_up_after_a_random_delay(tmp_path) -> None:
    rig = Rig(tmp_path, spread_s=30.0)
    rig.tick()
    assert rig.sink.calls == [("curtail", None, None)]
    hold_s = rig.session.hold_until_s - rig.clock.monotonic()
    assert 0.0 <= hold_s <= 30.0
    rig.send(seq=1, power_w=2000)  # a setpoint during the spread waits for it
    rig.tick()
    ack = rig.link.acks()[-1]
    assert ack["result"] == "accepted" and ack["limited_by"] == "ramp"
    assert ack["eta_ms"] == pytest.approx(hold_s * 1000, abs=2)
    assert rig.sink.calls == [("curtail", None, None)]
    rig.tick(hold_s + 0.01)
    assert rig.sink.calls[-1] == ("setpoint", 2000, None)


def test_restart_spread_delays_differ_between_devices(tmp_path) -> None:
    delays = set()
    for seed in range(5):
        session = GridSession(FakeLink(), FakeSink(), {b"k": KEY.public_key()},
                              tmp_path / str(seed), None, GridPolicy(restart_spread_s=30.0),
                              FakeClock(), random.Random(seed))
        session.start()
        delays.add(round(session.hold_until_s, 3))
    assert len(delays) == 5


def test_active_curtail_survives_a_restart_and_applies_at_once(tmp_path) -> None:
    rig = Rig(tmp_path)
    rig.tick()
    rig.send(seq=1, op="curtail", validity_s=3600)
    rig.tick()
    rig.policy = GridPolicy(restart_spread_s=30.0)
    rig.sink.calls.clear()
    rig.new_session()
    rig.tick()
    assert rig.sink.calls == [("curtail", None, None)]
    assert rig.session.active is not None and rig.session.active.op == "curtail"


def test_telemetry_every_period_with_command_fields(rig: Rig) -> None:
    rig.send(seq=1)
    for _ in range(3):
        rig.tick(1.0)
    msgs = rig.link.telemetry()
    assert [m["seq"] for m in msgs] == [0, 1, 2, 3]
    assert msgs[-1]["setpoint_w"] == 1500 and msgs[-1]["cmd_id"] == bytes([1]) * 16
    assert msgs[0]["mode"] == "mining" and "setpoint_w" not in msgs[0]
    assert rig.link.status[-1] == (CAPS, "mining")


def test_telemetry_is_buffered_while_offline_and_sent_in_order(tmp_path) -> None:
    rig = Rig(tmp_path, telemetry_buffer=5)
    rig.tick()
    rig.link.connected = False
    for _ in range(12):
        rig.tick(1.0)
    assert rig.link.telemetry()[-1]["seq"] == 0
    rig.link.connected = True
    rig.tick(0.0)
    msgs = rig.link.telemetry()[1:]
    assert [m["seq"] for m in msgs] == [8, 9, 10, 11, 12]
    assert {m["lost"] for m in msgs} == {7}  # seq 1..7 dropped by the bound


# ---- link set-up checks (no connection is made) -----------------------------------------------
def test_backoff_is_exponential_capped_and_really_jittered() -> None:
    from agent.grid.link import Backoff

    backoff = Backoff(0.5, 8.0, random.Random(4))
    delays = [backoff.next_delay() for _ in range(8)]
    bases = [0.5, 1, 2, 4, 8, 8, 8, 8]
    assert all(b / 2 <= d <= b for d, b in zip(delays, bases, strict=True))
    assert len({round(d, 6) for d in delays[4:]}) == 4  # same base, different delays
    backoff.reset()
    assert backoff.next_delay() <= 0.5


def test_plain_mqtt_to_a_remote_broker_needs_the_insecure_flag(tmp_path) -> None:
    from agent.errors import GridLinkError
    from agent.grid.link import GridLink, LinkSettings

    with pytest.raises(GridLinkError, match="plain MQTT"):
        GridLink(LinkSettings("mqtt://broker.example:1883", "s", "d", state_dir=str(tmp_path)))
    GridLink(LinkSettings("mqtt://broker.example:1883", "s", "d", state_dir=str(tmp_path),
                          insecure_no_tls=True))
    GridLink(LinkSettings("mqtt://127.0.0.1:1883", "s", "d", state_dir=str(tmp_path)))
    with pytest.raises(GridLinkError, match="expected mqtt"):
        GridLink(LinkSettings("http://x", "s", "d", state_dir=str(tmp_path)))
    with pytest.raises(GridLinkError, match="must match"):
        GridLink(LinkSettings("mqtt://127.0.0.1", "s/x", "d", state_dir=str(tmp_path)))


def test_password_file_readable_by_others_is_refused(tmp_path) -> None:
    from agent.errors import GridLinkError
    from agent.grid.link import GridLink, LinkSettings

    secret = tmp_path / "pw"
    secret.write_text("hunter2")
    secret.chmod(0o640)
    settings = LinkSettings("mqtts://127.0.0.1:8883", "s", "d", state_dir=str(tmp_path),
                            username="d", password_file=str(secret))
    with pytest.raises(GridLinkError, match="chmod 600"):
        GridLink(settings)
    secret.chmod(0o600)
    GridLink(settings)


def test_operator_keys_are_required_unless_insecure(tmp_path) -> None:
    from agent.errors import GridLinkError
    from agent.grid import cose
    from agent.grid.session import load_operator_keys

    with pytest.raises(GridLinkError, match="no operator public key"):
        load_operator_keys([])
    assert load_operator_keys([], insecure_dev=True) == {}
    pub = tmp_path / "op.pub.pem"
    pub.write_bytes(cose.public_pem(KEY.public_key()))
    keys = load_operator_keys([("op-1", str(pub))])
    assert list(keys) == [b"op-1"]
    with pytest.raises(GridLinkError, match="op-2"):
        load_operator_keys([("op-2", str(tmp_path / "missing.pem"))])
