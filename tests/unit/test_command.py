"""Command checks of spec 3.3: every reason code, in order, and no crash on any input."""

from __future__ import annotations

import math

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.grid import cose
from agent.grid.command import CheckPolicy, CommandChecker, ack_map
from agent.grid.contract import REASONS, Topics
from agent.grid.replay import ReplayGuard
from agent.site.signer import CommandSigner

NOW_MS = 1_800_000_000_000
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
SIGNER = CommandSigner(KEY, "op-1")
OTHER = CommandSigner(Ed25519PrivateKey.from_private_bytes(bytes(32)), "op-1")
TOPICS = Topics("site-a", "dev-1")
CAPS = {"min_w": 100, "max_w": 3000, "ramp_max_w_s": 500}


def checker(replay: ReplayGuard | None = None) -> CommandChecker:
    policy = CheckPolicy(TOPICS, {b"op-1": KEY.public_key()})
    return CommandChecker(policy, replay or ReplayGuard())


def cmd_map(**over: object) -> dict:
    base = {"v": 1, "id": bytes(range(16)), "seq": 10, "site": "site-a", "dev": "dev-1",
            "iat": NOW_MS, "exp": NOW_MS + 900_000, "op": "setpoint", "power_w": 1500}
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def check(cmd: dict, topic: str = TOPICS.cmd, signer: CommandSigner = SIGNER,
          c: CommandChecker | None = None, now_ms: int = NOW_MS):
    return (c or checker()).check(topic, signer.sign(topic, cmd), now_ms, CAPS)


def test_a_valid_setpoint_passes() -> None:
    verdict = check(cmd_map())
    assert verdict.reason is None and verdict.command is not None
    assert verdict.command.power_w == 1500 and verdict.command.kid == b"op-1"
    assert verdict.echo == {"id": bytes(range(16)), "seq": 10}


def test_site_command_with_star_passes_on_the_site_topic_only() -> None:
    assert check(cmd_map(dev="*"), TOPICS.site_cmd).reason is None
    assert check(cmd_map(dev="*"), TOPICS.cmd).reason == "wrong_target"
    assert check(cmd_map(), TOPICS.site_cmd).reason == "wrong_target"


CASES = {
    "too_large": lambda: checker().check(TOPICS.cmd, b"\x00" * 4097, NOW_MS, CAPS),
    "malformed": lambda: check(cmd_map(colour="red")),
    "bad_signature": lambda: check(cmd_map(), signer=OTHER),
    "wrong_target": lambda: check(cmd_map(dev="dev-2")),
    "unsupported_version": lambda: check(cmd_map(v=2)),
    "expired": lambda: check(cmd_map(exp=NOW_MS - 1, iat=NOW_MS - 1000)),
    "replayed": None,
    "out_of_range": lambda: check(cmd_map(power_w=5000)),
    "unavailable": lambda: checker().check(TOPICS.cmd, SIGNER.sign(TOPICS.cmd, cmd_map()), None,
                                           CAPS),
}
SESSION_REASONS = ("schedule_full",)  # given by the session (test_grid_policy), not the checks


@pytest.mark.parametrize("reason", [r for r in REASONS if r not in SESSION_REASONS])
def test_each_reason_code_is_produced(reason: str) -> None:
    if reason == "replayed":
        replay = ReplayGuard()
        replay.record(b"op-1", bytes(16), 10, {})
        verdict = check(cmd_map(), c=checker(replay))
    else:
        verdict = CASES[reason]()
    assert verdict.reason == reason
    assert verdict.detail


@pytest.mark.parametrize(
    ("cmd", "detail"),
    [
        (cmd_map(power_w=1500.0), "power_w must be an integer"),
        (cmd_map(power_w=math.nan), "not a finite"),
        (cmd_map(power_w=math.inf), "not a finite"),
        (cmd_map(seq=-1), "seq out of"),
        (cmd_map(id=b"short"), "id must be 16 bytes"),
        (cmd_map(op="boost"), "op must be one of"),
        (cmd_map(op="curtail"), "power_w is only for setpoint"),
        (cmd_map(power_w=None), "setpoint needs power_w"),
        (cmd_map(exp=None), "missing key exp"),
        (cmd_map(ramp_w_s=0), "ramp_w_s out of"),
        (cmd_map(fallback="panic"), "fallback must be one of"),
        (cmd_map(site=7), "site must be text"),
        (cmd_map(iat=True), "iat must be an integer"),
        ({**cmd_map(), 5: 1}, "unknown key"),
    ],
)
def test_type_faults_are_malformed_with_a_detail(cmd: dict, detail: str) -> None:
    verdict = check(cmd)
    assert verdict.reason == "malformed"
    assert detail in verdict.detail


def test_checks_run_in_the_order_of_the_contract() -> None:
    # malformed before bad_signature: an unsigned garbage map says malformed
    assert check(cmd_map(colour="red"), signer=OTHER).reason == "malformed"
    # bad_signature before wrong_target
    assert check(cmd_map(dev="dev-2"), signer=OTHER).reason == "bad_signature"
    # wrong_target before unsupported_version
    assert check(cmd_map(v=2, dev="dev-2")).reason == "wrong_target"
    # unsupported_version before expired; a later version's new keys are not "malformed"
    assert check(cmd_map(v=2, exp=0, future_key=1)).reason == "unsupported_version"
    # expired before replayed
    replay = ReplayGuard()
    replay.record(b"op-1", bytes(16), 99, {})
    assert check(cmd_map(exp=NOW_MS - 1, iat=NOW_MS - 5), c=checker(replay)).reason == "expired"
    # replayed before out_of_range
    assert check(cmd_map(power_w=99_999), c=checker(replay)).reason == "replayed"


def test_without_a_trusted_clock_the_time_checks_say_unavailable_after_the_others() -> None:
    untrusted = checker()

    def at_no_time(cmd: dict, signer: CommandSigner = SIGNER):
        return untrusted.check(TOPICS.cmd, signer.sign(TOPICS.cmd, cmd), None, CAPS)

    verdict = at_no_time(cmd_map())
    assert (verdict.reason, verdict.detail) == ("unavailable", "device clock not trusted")
    assert verdict.echo == {"id": bytes(range(16)), "seq": 10}
    # the checks that need no clock still come first, in their order
    assert at_no_time(cmd_map(colour="red")).reason == "malformed"
    assert at_no_time(cmd_map(), signer=OTHER).reason == "bad_signature"
    assert at_no_time(cmd_map(dev="dev-2")).reason == "wrong_target"
    assert at_no_time(cmd_map(v=2)).reason == "unsupported_version"
    assert set(REASONS[:8]) == {"too_large", "malformed", "bad_signature", "wrong_target",
                                "unsupported_version", "expired", "replayed", "out_of_range"}


def test_a_command_signed_for_another_topic_fails_the_signature() -> None:
    blob = SIGNER.sign("gridminer/site-a/dev-2/cmd", cmd_map())
    assert checker().check(TOPICS.cmd, blob, NOW_MS, CAPS).reason == "bad_signature"


@pytest.mark.parametrize(
    "over",
    [
        {"exp": NOW_MS - 1, "iat": NOW_MS - 1000},  # in the past
        {"exp": NOW_MS + 86_400_001},  # validity over 24 h
        {"iat": NOW_MS + 31_000, "exp": NOW_MS + 60_000},  # iat beyond the 30 s skew
        {"exp": NOW_MS - 10, "iat": NOW_MS},  # exp before iat
        {"nbf": NOW_MS + 900_000},  # nbf not before exp
    ],
)
def test_time_window_faults_are_expired(over: dict) -> None:
    assert check(cmd_map(**over)).reason == "expired"


def test_iat_within_the_skew_and_exp_equal_to_now_pass() -> None:
    assert check(cmd_map(iat=NOW_MS + 29_000, exp=NOW_MS + 60_000)).reason is None
    assert check(cmd_map(iat=NOW_MS - 1000, exp=NOW_MS)).reason is None


def test_duplicate_gets_the_original_ack_and_a_reused_id_is_replayed() -> None:
    replay = ReplayGuard()
    original = ack_map("accepted", NOW_MS, echo={"id": bytes(range(16)), "seq": 10},
                       applied_w=1400.0, limited_by="thermal", eta_s=2.5)
    replay.record(b"op-1", bytes(range(16)), 10, original)
    verdict = check(cmd_map(), c=checker(replay))
    assert verdict.duplicate and verdict.original_ack == original
    assert check(cmd_map(seq=11), c=checker(replay)).reason == "replayed"


def test_range_is_checked_against_the_declared_caps() -> None:
    assert check(cmd_map(power_w=99)).reason == "out_of_range"
    assert check(cmd_map(power_w=100)).reason is None
    assert check(cmd_map(power_w=3000, ramp_w_s=500)).reason is None
    assert check(cmd_map(ramp_w_s=501)).reason == "out_of_range"
    assert check(cmd_map(op="curtail", power_w=None, ramp_w_s=600)).reason == "out_of_range"


def test_ack_map_leaves_out_what_does_not_apply() -> None:
    ack = ack_map("rejected", 5, reason="malformed", detail="x" * 500)
    assert set(ack) == {"v", "result", "reason", "detail", "ts"}
    assert len(ack["detail"]) <= 120
    ack = ack_map("accepted", 5, echo={"id": b"i" * 16, "seq": 3}, applied_w=1234.56,
                  limited_by="power_cap", eta_s=1.2345)
    assert ack["applied_w"] == 1234.6 and ack["eta_ms"] == 1234 and ack["limited_by"] == "power_cap"


# ---- fuzzing: the checker never raises, whatever arrives ---------------------------------------
cbor_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.floats() | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8) | st.integers(-3, 3), children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_random_bytes_never_crash(blob: bytes) -> None:
    verdict = checker().check(TOPICS.cmd, blob, NOW_MS, CAPS)
    assert verdict.reason in REASONS


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from([*sorted(cmd_map()), "nbf", "ramp_w_s", "fallback", "x"]),
                       cbor_values, max_size=12),
       st.booleans())
def test_random_signed_maps_never_crash(overrides: dict, merge: bool) -> None:
    data = {**cmd_map(), **overrides} if merge else overrides
    try:
        blob = SIGNER.sign(TOPICS.cmd, data)
    except (cbor2.CBOREncodeError, TypeError, ValueError):
        return
    verdict = checker().check(TOPICS.cmd, blob, NOW_MS, CAPS)
    assert verdict.reason in (*REASONS, None)
    if verdict.reason is None:
        assert verdict.command is not None and verdict.command.v == 1


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(cbor_values, min_size=0, max_size=5), st.integers(0, 40))
def test_random_cose_shapes_never_crash(parts: list, tag: int) -> None:
    try:
        blob = cbor2.dumps(cbor2.CBORTag(tag if tag != 0 else 18, parts))
    except (cbor2.CBOREncodeError, TypeError, ValueError):
        return
    verdict = checker().check(TOPICS.cmd, blob, NOW_MS, CAPS)
    assert verdict.reason in REASONS


def test_vectors_payload_decodes_with_cbor2_6_containers() -> None:
    # cbor2 6 returns tuples/frozendicts inside tags; the envelope must accept both
    blob = SIGNER.sign(TOPICS.cmd, cmd_map())
    item = cbor2.loads(blob)
    assert isinstance(item.value, tuple)
    assert cose.decode(blob).kid == b"op-1"
