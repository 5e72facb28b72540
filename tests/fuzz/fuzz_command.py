"""Fuzz the grid command path: `cose.decode` and `CommandChecker.check` (spec 3.3).

Every input must end in a Verdict that becomes an ack the device can encode; `cose.decode` and
`cose.loads_exact` may raise only `cose.CoseError`. An accepted command must come back as a
duplicate when it arrives again, and survive the state file (JSON) round trip.

Input: two header bytes, then the body.
  byte 0: bits 0-1 mode (0: the body is the MQTT payload as is; 1 and 3: the body is the CBOR
          command map, signed here with the test key; 2: a length byte and the protected header,
          then the payload, signed here), bits 2-3 topic, bits 4-5 clock, bits 6-7 the replay
          state before the command
  byte 1: bits 0-2 the device's caps (through `caps_map`, as GridSession passes them)
"""

from __future__ import annotations

import json
import sys
from typing import Any

import cbor2
import harness
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

with harness.instrumented(__name__ == "__main__"):
    from agent.grid import cose
    from agent.grid.command import CheckPolicy, Command, CommandChecker, Verdict, ack_map
    from agent.grid.contract import FALLBACKS, MAX_PAYLOAD_BYTES, OPS, REASONS, Topics
    from agent.grid.replay import ReplayGuard
    from agent.grid.telemetry import caps_map, decode_map, encode

VECTORS = json.loads((harness.ROOT / "tests/vectors/cose_sign1.json").read_text("utf-8"))
KEY = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(VECTORS["private_key_seed_hex"]))
KID = bytes.fromhex(VECTORS["kid_hex"])
TOPICS = Topics("site-a", "dev-1")
NOW_MS = 1_800_000_000_000 + 1_000  # inside the vectors' iat..exp
CAPS = (
    {"min_w": 100, "max_w": 3000, "ramp_max_w_s": 500},
    {},
    {"max_w": 3000},
    {"min_w": 100},
    {"ramp_max_w_s": 50.0},
    None,  # three fuzzed ints
    {"min_w": float("nan"), "max_w": float("inf"), "ramp_max_w_s": -0.0},
    {"min_w": True, "max_w": None, "ramp_max_w_s": "500"},
)

KNOWN_BUGS: dict[str, harness.KnownBug] = {}  # every bug found so far is fixed


def _topic(choice: int, r: harness.Reader) -> str:
    if choice == 0:
        return TOPICS.cmd
    if choice == 1:
        return TOPICS.site_cmd
    if choice == 2:
        return "gridminer/site-a/dev-2/cmd"
    return r.chunk().decode("utf-8", "replace")  # paho hands over valid UTF-8 only


def _now(choice: int, r: harness.Reader) -> int | None:
    return (NOW_MS, None, NOW_MS + 10**9, 0)[choice] if choice < 3 else r.sint(8)


def _replay(choice: int) -> ReplayGuard:
    replay = ReplayGuard()
    if choice == 1:
        replay.record(KID, bytes(16), 5, {"v": 1, "result": "accepted", "ts": 1})
    elif choice == 2:
        replay.floor_ms = NOW_MS
    elif choice == 3:
        replay.record(KID, bytes(range(16)), 1, {"v": 1, "id": bytes(range(16)), "seq": 1,
                                                 "result": "accepted", "ts": 1})
    return replay


def _caps(choice: int, r: harness.Reader) -> dict[str, Any]:
    raw = CAPS[choice]
    if raw is None:
        raw = {"min_w": r.sint(4), "max_w": r.sint(4), "ramp_max_w_s": r.sint(4)}
    return caps_map(raw)


def sign1(protected: bytes, payload: bytes, topic: str) -> bytes:
    """A COSE_Sign1 with any protected header bytes, signed with the test key."""
    aad = topic.encode("utf-8", "surrogatepass")
    signature = KEY.sign(cose.sig_structure(protected, aad, payload))
    return cbor2.dumps(cbor2.CBORTag(cose.SIGN1_TAG, [protected, {}, payload, signature]))


def _decode_only(blob: bytes) -> None:
    for fn in (cose.decode, cose.loads_exact):
        try:
            fn(blob)
        except cose.CoseError as exc:
            assert exc.reason in ("malformed", "bad_signature"), exc.reason


def _ack(verdict: Verdict, now_ms: int | None) -> dict[str, Any]:
    """The ack GridSession would send for `verdict` (before the command is applied)."""
    if verdict.reason is not None:
        return ack_map("rejected", 7, echo=verdict.echo, reason=verdict.reason,
                       detail=verdict.detail)
    cmd = verdict.command
    assert cmd is not None and now_ms is not None
    if verdict.original_ack is not None:
        return {**verdict.original_ack, "result": "duplicate", "ts": 7}
    pinned = cmd.pinned(now_ms, 100.0)
    assert pinned.start_s is not None and pinned.end_s is not None
    echo = {"id": cmd.id, "seq": cmd.seq}
    if cmd.op != "ping" and cmd.start_ms > now_ms:
        return ack_map("scheduled", 7, echo=echo, applied_w=0.0,
                       eta_s=(cmd.start_ms - now_ms) / 1000.0)
    return ack_map("accepted", 7, echo=echo)


def _verdict_ok(verdict: Verdict, now_ms: int | None) -> dict[str, Any]:
    assert isinstance(verdict, Verdict), type(verdict)
    assert verdict.reason is None or verdict.reason in REASONS, verdict.reason
    assert set(verdict.echo) <= {"id", "seq"}, verdict.echo
    if verdict.reason is None:
        assert verdict.command is not None
        assert verdict.command.op in OPS and verdict.command.fallback in FALLBACKS
    ack = _ack(verdict, now_ms)
    back = decode_map(encode(ack))
    assert back is not None and back["result"] in ("accepted", "scheduled", "duplicate",
                                                   "rejected"), back
    return ack


def test_one_input(data: bytes) -> None:
    r = harness.Reader(data)
    head, opts = r.u8(), r.u8()
    mode, replay_choice = head & 3, head >> 6
    topic = _topic(head >> 2 & 3, r)
    now_ms = _now(head >> 4 & 3, r)
    caps = _caps(opts & 7, r)
    if mode == 0:
        payload = r.rest()
        _decode_only(payload)
    elif mode == 2:
        protected = r.chunk()
        payload = sign1(protected, r.rest(), topic)
    else:
        payload = sign1(cose.protected_header(KID), r.rest(), topic)
    replay = _replay(replay_choice)
    checker = CommandChecker(CheckPolicy(TOPICS, {KID: KEY.public_key()}), replay)
    verdict = checker.check(topic, payload, now_ms, caps)
    ack = _verdict_ok(verdict, now_ms)
    if len(payload) > MAX_PAYLOAD_BYTES:  # check 1 comes first, whatever else is wrong
        assert verdict.reason == "too_large", verdict.reason
    cmd = verdict.command
    if verdict.reason is None and not verdict.duplicate and cmd is not None:
        # the state file keeps the command and the replay state; a resend is a duplicate
        assert Command.from_json(json.loads(json.dumps(cmd.to_json()))) == cmd
        replay.record(cmd.kid, cmd.id, cmd.seq, ack)
        reloaded = ReplayGuard()
        reloaded.load_json(json.loads(json.dumps(replay.to_json())))
        again = CommandChecker(checker.policy, reloaded).check(topic, payload, now_ms, caps)
        _verdict_ok(again, now_ms)
        assert again.reason is None and again.duplicate, (again.reason, again.detail)


# ---- seeds and dictionary -----------------------------------------------------------------------


def _cmd(**over: Any) -> bytes:
    base: dict[str, Any] = {"v": 1, "id": bytes(range(16, 32)), "seq": 7, "site": "site-a",
                            "dev": "dev-1", "iat": NOW_MS - 1000, "exp": NOW_MS + 60_000,
                            "op": "setpoint", "power_w": 1500}
    base.update(over)
    return cbor2.dumps({k: v for k, v in base.items() if v is not None})


def seeds() -> list[tuple[str, bytes]]:
    out: list[tuple[str, bytes]] = []
    for i, vec in enumerate(VECTORS["vectors"]):
        site_topic = vec["topic"].endswith("/all/cmd")
        head = (1 if site_topic else 0) << 2
        out.append((f"vector{i}-raw", bytes((head | 0, 0)) + bytes.fromhex(vec["sign1_hex"])))
        out.append((f"vector{i}-signed", bytes((head | 1, 0)) + bytes.fromhex(vec["payload_hex"])))
        prot = cose.protected_header(KID)
        out.append((f"vector{i}-header", bytes((head | 2, 0, len(prot))) + prot
                    + bytes.fromhex(vec["payload_hex"])))
    for op in OPS:
        power = 1500 if op == "setpoint" else None
        out.append((f"op-{op}", bytes((1, 0)) + _cmd(op=op, power_w=power)))
    variants = {
        "nbf": _cmd(nbf=NOW_MS + 5000, fallback="default_now", ramp_w_s=20),
        "site": _cmd(dev="*"),
        "v2": _cmd(v=2, extra=1),
        "range": _cmd(power_w=5000, ramp_w_s=900),
        "expired": _cmd(exp=NOW_MS - 1),
    }
    for name, blob in variants.items():
        out.append((f"cmd-{name}", bytes((1 | (4 if name == "site" else 0), 0)) + blob))
    out.append(("replayed", bytes((1 | 1 << 6, 0)) + _cmd()))
    out.append(("no-clock", bytes((1 | 1 << 4, 0)) + _cmd()))
    out.append(("too-large", bytes((0, 0)) + bytes(4097)))
    return out


def dictionary() -> list[bytes]:
    words = ["v", "id", "seq", "site", "dev", "iat", "exp", "op", "nbf", "power_w", "ramp_w_s",
             "fallback", "site-a", "dev-1", "*", *OPS, *FALLBACKS]
    tokens = [cbor2.dumps(w) for w in words]
    tokens += [cbor2.dumps(NOW_MS), cbor2.dumps(2**64 - 1), cbor2.dumps(-(2**64)),
               cbor2.dumps(float("nan")), cbor2.dumps(1.5), b"\xd2\x84", b"\x50",
               cose.protected_header(KID), b"\xa2\x01\x27\x04", b"\xf5", b"\xf6", b"\xf7"]
    return tokens


if __name__ == "__main__":
    harness.main("command", test_one_input, seeds, known=KNOWN_BUGS, dictionary=dictionary,
                 max_len=4200)
    sys.exit(0)
