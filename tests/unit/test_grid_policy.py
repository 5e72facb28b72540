"""GridSession on the control thread: commands to the sink, acks, schedule, lapse, link loss,
restart spread, telemetry buffering; with a fake link, a fake sink and a FakeClock."""

from __future__ import annotations

import errno
import logging
import random
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent import __build_epoch__
from agent.clock import FakeClock
from agent.grid.contract import Topics
from agent.grid.link import Inbound
from agent.grid.replay import StateFile
from agent.grid.session import GridPolicy, GridSession
from agent.site.signer import CommandSigner
from tests.support.grid_fakes import CAPS
from tests.support.grid_fakes import RecordingSink as FakeSink  # also used by test_takeover

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
SIGNER = CommandSigner(KEY, "op-1")
KEY_2 = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
SIGNER_2 = CommandSigner(KEY_2, "op-2")
ACK = "gridminer/site-a/dev-1/ack"
TOPICS = Topics("site-a", "dev-1")


class FakeLink:
    def __init__(self) -> None:
        self.topics = TOPICS
        self.connected = True
        self.inbox: list[Inbound] = []
        self.sent: list[tuple[str, dict, int, bytes | None]] = []
        self.lost_unconfirmed = 0
        self.acked: list[int] = []
        self.status: list[tuple[Any, Any]] = []

    def drain(self) -> list[Inbound]:
        items, self.inbox = self.inbox, []
        return items

    def publish(self, topic, payload, qos=0, retain=False, correlation_data=None,
                user_properties=()) -> bool:
        if not self.connected:
            return False
        raw = topic.encode("utf-8")  # what paho's publish checks before it sends
        if b"+" in raw or b"#" in raw or len(raw) > 65535:
            raise ValueError("Publish topic cannot contain wildcards.")
        self.sent.append((topic, cbor2.loads(payload), qos, correlation_data))
        return True

    def ack(self, msg: Inbound) -> None:
        self.acked.append(msg.mid)

    def take_lost(self) -> int:
        lost, self.lost_unconfirmed = self.lost_unconfirmed, 0
        return lost

    def set_status(self, caps, mode) -> None:
        self.status.append((caps, mode))

    def acks(self) -> list[dict]:
        return [m for t, m, _, _ in self.sent if "/ack" in t]

    def telemetry(self) -> list[dict]:
        return [m for t, m, _, _ in self.sent if t.endswith("/telemetry")]


class Rig:
    def __init__(self, tmp_path, spread_s: float = 0.0, clock: FakeClock | None = None,
                 **policy: Any) -> None:
        self.clock = clock or FakeClock()
        self.tmp_path = tmp_path
        self.link = FakeLink()
        self.sink = FakeSink()
        self.snap = {"mode": "mining", "power_w": 1000.0, "target_w": 1000.0}
        self.policy = GridPolicy(restart_spread_s=spread_s, **policy)
        self.mid = 0
        self.session = self.new_session()

    def new_session(self) -> GridSession:
        keys = {b"op-1": KEY.public_key(), b"op-2": KEY_2.public_key()}
        self.session = GridSession(self.link, self.sink, keys,
                                   self.tmp_path, lambda: self.snap, self.policy, self.clock,
                                   random.Random(1))
        return self.session

    @property
    def now_ms(self) -> int:
        return int(self.clock.time() * 1000)

    def send(self, op: str = "setpoint", seq: int = 1, dev: str | None = "dev-1",
             response: str | None = "gridminer/site-a/dev-1/ack/op-x", corr: bytes | None = b"c1",
             payload: bytes | None = None, signer: CommandSigner = SIGNER,
             **build: Any) -> None:
        build.setdefault("now_ms", self.now_ms)
        if op == "setpoint":
            build.setdefault("power_w", 1500)
        signed = signer.build("site-a", dev, op, seq=seq, cmd_id=bytes([seq % 256]) * 16, **build)
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


def full_disk(fd: int, data: memoryview) -> int:
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("how", ["now", "nbf", "ping"])
def test_a_command_whose_replay_state_cannot_be_saved_is_rejected_and_not_applied(
    rig: Rig, how: str
) -> None:
    build: dict[str, Any] = {"op": "ping"} if how == "ping" else {}
    if how == "nbf":
        build = {"nbf_ms": rig.now_ms + 60_000}
    working = rig.session.state
    rig.session.state = StateFile(working.path, writer=full_disk)
    rig.send(seq=3, **build)
    rig.tick()
    ack = rig.link.acks()[-1]
    assert ack["result"] == "rejected" and ack["reason"] == "unavailable" and ack["seq"] == 3
    assert "No space left on device" in ack["detail"]  # something the operator can act on
    assert rig.link.acked == [1]  # answered: the broker does not redeliver it for ever
    rig.tick(61.0)
    assert rig.sink.calls == [] and rig.session.scheduled == []
    rig.session.state = working  # room on the disk again: the same command is taken
    rig.send(seq=3, **build)
    rig.tick()
    assert rig.link.acks()[-1]["result"] in ("accepted", "scheduled")


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
    assert ack["detail"] == f"restart spread: ramping up in {hold_s:.1f} s"  # says why
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


def test_buffered_telemetry_is_flushed_in_bounded_batches_after_a_reconnect(tmp_path) -> None:
    rig = Rig(tmp_path, telemetry_buffer=1000)
    rig.tick()
    rig.link.connected = False
    for _ in range(300):  # five minutes offline
        rig.tick(1.0)
    rig.link.connected = True
    wait_s = rig.session.service()
    first = len(rig.link.telemetry()) - 1
    assert 0 < first <= 100 and wait_s == 0.0  # a share now, and come back at once for more
    for _ in range(20):
        rig.session.service()
    assert [m["seq"] for m in rig.link.telemetry()] == list(range(301))
    assert rig.session.service() > 0.0  # drained: back to the telemetry period


def test_telemetry_lost_on_a_half_open_connection_is_counted_in_lost(tmp_path) -> None:
    rig = Rig(tmp_path)
    rig.tick()
    before = rig.link.telemetry()[-1]["lost"]
    rig.link.lost_unconfirmed = 3  # the link found three messages never confirmed
    rig.tick(1.0)
    assert rig.link.telemetry()[-1]["lost"] == before + 3


# ---- abuse: one message must not take the others (or the session) down ----------------------
def test_a_wildcard_response_topic_is_answered_on_the_ack_topic_and_the_batch_goes_on(
    rig: Rig,
) -> None:
    rig.send(seq=1, response=ACK + "/+")  # paho refuses to publish on a wildcard
    rig.send(seq=2, op="ping", response=ACK + "/#", corr=b"c2")
    rig.send(seq=3)
    rig.tick()  # does not raise
    assert rig.link.acked == [1, 2, 3]
    (t1, a1, _, c1), (t2, a2, _, c2), (t3, a3, _, _) = rig.link.sent[-3:]
    assert (t1, t2, t3) == (ACK, ACK, ACK + "/op-x")
    assert (c1, c2) == (b"c1", b"c2")  # the operator can still match the answer
    assert a1["result"] == a2["result"] == a3["result"] == "accepted"
    assert "response topic" in a1["detail"] and "response topic" in a2["detail"]
    assert "detail" not in a3
    assert rig.session.counters["response_topic_refused"] == 2


@pytest.mark.parametrize("response", [
    "gridminer/site-a/dev-2/ack",  # another device's answers
    "gridminer/site-a/dev-1/acknowledged",  # not a level below ack
    "gridminer/site-a/dev-1/status",  # the device's retained status
    "gridminer/site-a/all/cmd",  # a command topic
    ACK + "/a\x00b",  # a broker drops the connection on a NUL in a topic
    ACK + "/" + "x" * 300,
    ACK + "/\udc80",  # not encodable as UTF-8
])
def test_a_response_topic_outside_the_device_ack_tree_is_not_used(rig: Rig, response: str) -> None:
    rig.send(seq=1, response=response)
    rig.send(seq=2, payload=b"junk", response=response)  # rejections alike
    rig.tick()
    assert [t for t, _, _, _ in rig.link.sent if "/ack" in t or t == response][-2:] == [ACK, ACK]
    accepted, rejected = rig.link.acks()[-2:]
    assert accepted["result"] == "accepted" and "response topic" in accepted["detail"]
    assert rejected["reason"] == "malformed" and "response topic" in rejected["detail"]
    assert rig.link.acked == [1, 2]


@pytest.mark.parametrize("response", [ACK, ACK + "/op-x", ACK + "/op-x/req-7"])
def test_a_response_topic_in_the_device_ack_tree_is_used(rig: Rig, response: str) -> None:
    rig.send(seq=1, response=response)
    rig.tick()
    topic, ack, _, _ = rig.link.sent[-1]
    assert topic == response and "detail" not in ack


def test_a_message_whose_handling_raises_is_counted_and_the_batch_goes_on(
    rig: Rig, monkeypatch, caplog
) -> None:
    check = rig.session.checker.check

    def flaky(topic: str, payload: bytes, *args: Any) -> Any:
        if payload == b"boom":
            raise RuntimeError("a bug")
        return check(topic, payload, *args)

    monkeypatch.setattr(rig.session.checker, "check", flaky)
    for _ in range(5):
        rig.send(seq=1, payload=b"boom")
    rig.send(seq=2)
    with caplog.at_level(logging.ERROR, logger="agent.grid.session"):
        rig.tick()  # does not raise
        assert rig.link.acked == [1, 2, 3, 4, 5, 6]  # every one PUBACKed
        assert rig.sink.calls == [("setpoint", 1500, None)]
        assert rig.link.acks()[-1]["seq"] == 2
        assert rig.session.counters["inbound_errors"] == 5
        assert len(caplog.records) == 1  # rate-limited
        rig.send(seq=3, payload=b"boom")
        rig.tick(1.0)
        assert len(caplog.records) == 1
        rig.tick(60.0)
        rig.send(seq=3, payload=b"boom")
        rig.tick()
        assert len(caplog.records) == 2 and "suppressed" in caplog.records[-1].getMessage()


# ---- replay floor ------------------------------------------------------------------------------
@pytest.mark.parametrize("loss", ["missing", "corrupt"])
def test_a_lost_state_file_does_not_reopen_the_replay_window(rig: Rig, loss: str) -> None:
    rig.send(seq=5)
    captured = rig.link.inbox[-1]  # what someone on the network recorded
    rig.tick()
    rig.tick(120.0)
    state = rig.tmp_path / "grid.json"
    if loss == "missing":
        state.unlink()  # state on tmpfs after a power cut, or a reflash
    else:
        state.write_text('{"replay": {"last_seq": ')  # torn by a broken flash
    rig.new_session()
    rig.tick()
    rig.new_session()  # and once more: the floor was written down at the first start
    rig.tick()
    rig.link.inbox.append(captured)
    rig.send(seq=6, now_ms=rig.now_ms - 20_000)  # issued inside the allowed skew: taken
    rig.tick()
    replayed, fresh = rig.link.acks()[-2:]
    assert replayed["result"] == "rejected" and replayed["reason"] == "replayed"
    assert fresh["result"] == "accepted" and fresh["seq"] == 6
    assert rig.sink.calls[-1] == ("setpoint", 1500, None) and len(rig.link.acks()) == 3


# ---- clock trust -------------------------------------------------------------------------------
def test_no_command_acts_while_the_clock_is_before_the_build_date_then_ntp_sets_it(
    tmp_path,
) -> None:
    clock = FakeClock(wall_offset_s=0.0)  # a board without RTC boots in 1970
    rig = Rig(tmp_path, clock=clock)
    rig.tick()
    real_ms = (__build_epoch__ + 30 * 86_400) * 1000
    rig.send(seq=1, now_ms=real_ms)
    rig.tick()
    ack = rig.link.acks()[-1]
    assert ack["result"] == "rejected" and ack["reason"] == "unavailable"
    assert ack["detail"] == "device clock not trusted"
    assert rig.link.acked == [1] and [c for c in rig.sink.calls if c[0] == "setpoint"] == []
    assert not (tmp_path / "grid.json").exists()  # no floor written against 1970
    clock.step(real_ms / 1000 - clock.time())  # NTP steps the clock
    rig.tick(1.0)
    rig.send(seq=2)
    rig.tick()
    assert rig.link.acks()[-1]["reason"] == "unavailable"  # a clock that just stepped waits
    rig.tick(rig.policy.clock_settle_s)
    rig.send(seq=3)
    rig.tick()
    assert rig.link.acks()[-1]["result"] == "accepted"
    assert rig.sink.calls[-1] == ("setpoint", 1500, None)


def test_a_clock_that_steps_while_running_is_not_trusted_until_it_keeps_pace(rig: Rig) -> None:
    rig.clock.step(120.0)  # over the allowed skew between two readings
    rig.send(seq=1)
    rig.tick(0.5)
    assert rig.link.acks()[-1]["reason"] == "unavailable"
    rig.tick(rig.policy.clock_settle_s)
    rig.send(seq=2)
    rig.tick()
    assert rig.link.acks()[-1]["result"] == "accepted"


def test_a_clock_behind_the_last_persisted_time_is_not_trusted(rig: Rig) -> None:
    rig.send(seq=1)
    rig.tick()
    day_s = 86_400.0
    rig.clock = FakeClock(wall_offset_s=rig.clock.time() - 1000.0 - day_s)  # reboot, a day back
    rig.new_session()
    rig.tick()
    rig.send(seq=2)
    rig.tick()
    assert rig.link.acks()[-1]["reason"] == "unavailable"
    rig.clock.step(day_s)  # NTP
    rig.tick(1.0)
    rig.tick(rig.policy.clock_settle_s)
    rig.send(seq=3)
    rig.tick()
    assert rig.link.acks()[-1]["result"] == "accepted"


def test_a_restored_command_is_timed_once_the_clock_is_trusted_again(rig: Rig) -> None:
    rig.send(seq=1, op="curtail", validity_s=600)
    rig.tick()
    real_s = rig.clock.time()
    rig.clock = FakeClock(wall_offset_s=0.0)  # a power cut: the board boots in 1970
    rig.sink.calls.clear()
    rig.new_session()
    rig.tick()
    assert rig.sink.calls == [("curtail", None, None)]  # going down is never delayed
    rig.tick(100.0)
    rig.clock.step(real_s + 100.0 - rig.clock.time())  # NTP: 100 s since the command came
    rig.tick()
    rig.tick(rig.policy.clock_settle_s)  # trusted again: 490 s of its 600 s are left
    assert rig.session.active is not None  # not expired against 1970, nor at the step
    rig.tick(489.0)
    assert rig.sink.calls[-1] == ("curtail", None, None)
    rig.tick(1.0)
    assert rig.sink.calls[-1] == ("resume", None, None)  # at its exp


@pytest.mark.parametrize("step_s", [3600.0, -3600.0])
def test_an_accepted_command_lives_on_the_monotonic_clock(rig: Rig, step_s: float) -> None:
    rig.send(seq=1, op="curtail", validity_s=60)
    rig.send(seq=2, nbf_ms=rig.now_ms + 30_000, validity_s=90, ramp_w_s=50)
    rig.tick()
    rig.clock.step(step_s)  # NTP sets the clock an hour forward or back
    rig.tick(29.0)
    assert rig.sink.calls == [("curtail", None, None)]  # neither lapsed nor started early
    rig.tick(1.0)
    assert rig.sink.calls[-1] == ("setpoint", 1500, 50)  # the nbf came on time
    rig.tick(60.0)
    assert rig.sink.calls[-1] == ("resume", None, None)  # and its exp too: not extended


# ---- which command wins ------------------------------------------------------------------------
def test_a_newer_command_supersedes_older_scheduled_ones_of_its_key(rig: Rig) -> None:
    rig.send(seq=1, nbf_ms=rig.now_ms + 60_000, validity_s=600)  # a setpoint for later
    rig.send(seq=2, nbf_ms=rig.now_ms + 60_000, validity_s=600, signer=SIGNER_2)  # other key
    rig.send(seq=3, op="curtail", validity_s=600)  # an emergency curtail, now
    rig.tick()
    assert [a["result"] for a in rig.link.acks()] == ["scheduled", "scheduled", "accepted"]
    assert [c.seq for c in rig.session.scheduled] == [2]  # seq 1 of op-1 is superseded
    assert rig.session.counters["superseded"] == 1
    rig.tick(61.0)
    assert rig.sink.calls == [("curtail", None, None), ("setpoint", 1500, None)]  # op-2's own


def test_a_scheduled_command_that_starts_supersedes_older_waiting_ones(rig: Rig) -> None:
    rig.send(seq=1, nbf_ms=rig.now_ms + 120_000, validity_s=600, power_w=1000)
    rig.send(seq=2, nbf_ms=rig.now_ms + 60_000, validity_s=600, power_w=2000)
    rig.send(seq=3, nbf_ms=rig.now_ms + 180_000, validity_s=600, power_w=3000)
    rig.tick()
    rig.tick(60.0)
    assert rig.sink.calls == [("setpoint", 2000, None)]
    rig.tick(60.0)
    assert rig.sink.calls == [("setpoint", 2000, None)]  # the older seq 1 never takes over
    rig.tick(60.0)
    assert rig.sink.calls[-1] == ("setpoint", 3000, None)  # a newer one still does


def test_too_many_scheduled_commands_have_their_own_reason(tmp_path) -> None:
    rig = Rig(tmp_path, max_scheduled=2)
    rig.tick()
    for seq in (1, 2, 3):
        rig.send(seq=seq, nbf_ms=rig.now_ms + 60_000 * seq, validity_s=600)
    rig.tick()
    acks = rig.link.acks()
    assert [a["result"] for a in acks] == ["scheduled", "scheduled", "rejected"]
    assert acks[-1]["reason"] == "schedule_full" and acks[-1]["seq"] == 3


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
