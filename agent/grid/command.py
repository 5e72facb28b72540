"""Grid commands: the command map, its checks in the order of the contract, and the ack map.

`CommandChecker.check` never raises on outside input: every fault is a `Verdict` with one of the
reason codes of spec section 3.3, checked in that order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeGuard

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.grid import cose
from agent.grid.contract import (
    ANY_DEVICE,
    DEFAULT_FALLBACK,
    FALLBACKS,
    MAX_PAYLOAD_BYTES,
    OPS,
    VERSION,
    Topics,
)

MAX_INT = 2**64 - 1
_REQUIRED = ("v", "id", "seq", "site", "dev", "iat", "exp", "op")
_KNOWN = frozenset((*_REQUIRED, "nbf", "power_w", "ramp_w_s", "fallback"))


@dataclass(frozen=True)
class Command:
    """A decoded command map (not necessarily verified: see `Verdict.reason`)."""

    v: int
    id: bytes
    seq: int
    site: str
    dev: str
    iat: int
    exp: int
    op: str
    nbf: int | None = None
    power_w: int | None = None
    ramp_w_s: int | None = None
    fallback: str = DEFAULT_FALLBACK
    kid: bytes = b""
    topic: str = ""
    # Once the device took it: the monotonic times at which it takes effect and lapses, so that a
    # step of the wall clock neither starts, ends nor extends it (`pinned`). Not persisted.
    start_s: float | None = field(default=None, compare=False)
    end_s: float | None = field(default=None, compare=False)

    @property
    def start_ms(self) -> int:
        """When the command takes effect (`nbf`, default `iat`)."""
        return self.iat if self.nbf is None else self.nbf

    def pinned(self, wall_ms: int, now_s: float) -> Command:
        """This command with `start_s`/`end_s` from its `nbf`/`exp`, read against a trusted wall
        time `wall_ms` taken at monotonic time `now_s`."""
        return replace(self, start_s=now_s + max(0, self.start_ms - wall_ms) / 1000.0,
                       end_s=now_s + (self.exp - wall_ms) / 1000.0)

    def to_json(self) -> dict[str, Any]:
        """For the device's state file (bytes as hex; the monotonic times are left out)."""
        data = {k: getattr(self, k) for k in self.__dataclass_fields__
                if k not in ("start_s", "end_s")}
        data["id"] = self.id.hex()
        data["kid"] = self.kid.hex()
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Command:
        values = dict(data)
        values["id"] = bytes.fromhex(values["id"])
        values["kid"] = bytes.fromhex(values["kid"])
        return cls(**values)


@dataclass(frozen=True)
class Verdict:
    """The outcome of the checks: `reason` None means the command passed every check."""

    command: Command | None = None
    reason: str | None = None
    detail: str = ""
    echo: dict[str, Any] = field(default_factory=dict)  # `id`/`seq` for the ack, when decodable
    original_ack: dict[str, Any] | None = None  # set for a duplicate

    @property
    def duplicate(self) -> bool:
        return self.original_ack is not None


@dataclass(frozen=True)
class CheckPolicy:
    """What a device checks commands against."""

    topics: Topics
    keys: Mapping[bytes, Ed25519PublicKey]
    max_validity_s: float = 86_400.0
    clock_skew_s: float = 30.0


class ReplayView(Protocol):
    """What the checker needs from the replay state (ReplayGuard implements it)."""

    def lookup(
        self, kid: bytes, cmd_id: bytes, seq: int, iat_ms: int
    ) -> tuple[str, dict[str, Any] | None]:
        """("new", None) | ("duplicate", original ack) | ("replayed", None)."""
        ...


class _Reject(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _int(data: Mapping[str, Any], key: str, low: int = -MAX_INT, required: bool = True) -> Any:
    value = data.get(key)
    if value is None and key not in data and not required:
        return None
    if isinstance(value, float) and not math.isfinite(value):
        raise _Reject("malformed", f"{key} is not a finite number")
    if not _is_int(value):
        raise _Reject("malformed", f"{key} must be an integer")
    if not low <= value <= MAX_INT:
        raise _Reject("malformed", f"{key} out of the integer range of the contract")
    return value


def _text(data: Mapping[str, Any], key: str, choices: tuple[str, ...] | None = None) -> Any:
    value = data.get(key)
    if not isinstance(value, str):
        raise _Reject("malformed", f"{key} must be text")
    if choices is not None and value not in choices:
        raise _Reject("malformed", f"{key} must be one of {', '.join(choices)}")
    return value


def _echo(data: Mapping[str, Any]) -> dict[str, Any]:
    echo: dict[str, Any] = {}
    cmd_id = data.get("id")
    if isinstance(cmd_id, bytes) and len(cmd_id) == 16:
        echo["id"] = cmd_id
    seq = data.get("seq")
    if _is_int(seq) and 0 <= seq <= MAX_INT:
        echo["seq"] = seq
    return echo


def parse_map(data: Any) -> Command:
    """The decoded command map as a Command; raises _Reject("malformed").

    A map whose `v` is not 1 is only required to carry what checks 3 and 4 need."""
    if not isinstance(data, Mapping):
        raise _Reject("malformed", "payload must be a CBOR map")
    if "v" not in data:
        raise _Reject("malformed", "missing key v")
    version = _int(data, "v")
    if version != VERSION:
        # A later version may add keys: only what checks 3-4 need is required of it.
        cmd_id = data.get("id")
        seq = data.get("seq")
        return Command(
            v=version,
            id=cmd_id if isinstance(cmd_id, bytes) else b"",
            seq=seq if _is_int(seq) else -1,
            site=_text(data, "site"),
            dev=_text(data, "dev"),
            iat=0,
            exp=0,
            op="",
        )
    unknown = [k for k in data if not isinstance(k, str) or k not in _KNOWN]
    if unknown:
        raise _Reject("malformed", f"unknown key {unknown[0]!r}"[:80])
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise _Reject("malformed", f"missing key {missing[0]}")
    cmd_id = data["id"]
    if not isinstance(cmd_id, bytes) or len(cmd_id) != 16:
        raise _Reject("malformed", "id must be 16 bytes")
    op = _text(data, "op", OPS)
    power_w = _int(data, "power_w", 0, required=False)
    if op == "setpoint" and power_w is None:
        raise _Reject("malformed", "setpoint needs power_w")
    if op != "setpoint" and power_w is not None:
        raise _Reject("malformed", f"power_w is only for setpoint, not {op}")
    ramp_w_s = _int(data, "ramp_w_s", 1, required=False)
    fallback = data.get("fallback", DEFAULT_FALLBACK)
    if "fallback" in data:
        fallback = _text(data, "fallback", FALLBACKS)
    return Command(
        v=version,
        id=cmd_id,
        seq=_int(data, "seq", 0),
        site=_text(data, "site"),
        dev=_text(data, "dev"),
        iat=_int(data, "iat"),
        exp=_int(data, "exp"),
        op=op,
        nbf=_int(data, "nbf", required=False),
        power_w=power_w,
        ramp_w_s=ramp_w_s,
        fallback=fallback,
    )


def _caps_number(caps: Mapping[str, Any], key: str) -> float | None:
    value = caps.get(key)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


class CommandChecker:
    """Runs the checks of spec 3.3, in order, against one device's policy and replay state."""

    def __init__(self, policy: CheckPolicy, replay: ReplayView) -> None:
        self.policy = policy
        self.replay = replay

    def check(
        self, topic: str, payload: bytes, now_ms: int | None, caps: Mapping[str, Any]
    ) -> Verdict:
        """The verdict on one command; `now_ms` None means the device does not trust its clock:
        checks 1-5 still run, then the command is `unavailable` instead of being timed."""
        echo: dict[str, Any] = {}
        try:
            # 1. too_large
            if len(payload) > MAX_PAYLOAD_BYTES:
                raise _Reject("too_large", f"payload of {len(payload)} bytes over 4096")
            # 2. malformed (envelope, then the command map)
            try:
                msg = cose.decode(payload)
            except cose.CoseError as exc:
                raise _Reject(exc.reason, exc.detail) from exc
            try:
                raw = cose.loads_exact(msg.payload)
            except cose.CoseError as exc:
                raise _Reject("malformed", "payload: " + exc.detail) from exc
            if isinstance(raw, Mapping):
                echo = _echo(raw)
            cmd = parse_map(raw)
            # 3. bad_signature
            try:
                cose.verify(msg, self.policy.keys, topic.encode("utf-8"))
            except cose.CoseError as exc:
                raise _Reject(exc.reason, exc.detail) from exc
            cmd = Command(**{**cmd.__dict__, "kid": msg.kid or b"", "topic": topic})
            # 4. wrong_target
            self._check_target(topic, cmd)
            # 5. unsupported_version
            if cmd.v != VERSION:
                raise _Reject("unsupported_version", f"v {cmd.v} not supported (device speaks 1)")
            # 6. expired, against a clock the device trusts (else unavailable)
            if now_ms is None:
                raise _Reject("unavailable", "device clock not trusted")
            self._check_time(cmd, now_ms)
            # 7. replayed / duplicate
            state, original = self.replay.lookup(cmd.kid, cmd.id, cmd.seq, cmd.iat)
            if state == "duplicate":
                return Verdict(cmd, None, "duplicate", echo, original_ack=original or {})
            if state != "new":
                raise _Reject("replayed", "seq not above the last accepted seq for this kid")
            # 8. out_of_range
            self._check_range(cmd, caps)
        except _Reject as rej:
            return Verdict(None, rej.reason, rej.detail, echo)
        return Verdict(cmd, None, "", echo)

    def _check_target(self, topic: str, cmd: Command) -> None:
        topics = self.policy.topics
        if cmd.site != topics.site:
            raise _Reject("wrong_target", "site is not this device's site")
        if topic == topics.cmd:
            if cmd.dev != topics.device:
                raise _Reject("wrong_target", "dev is not this device")
        elif topic == topics.site_cmd:
            if cmd.dev != ANY_DEVICE:
                raise _Reject("wrong_target", 'the site topic takes dev "*" only')
        else:
            raise _Reject("wrong_target", "not one of this device's command topics")

    def _check_time(self, cmd: Command, now_ms: int) -> None:
        policy = self.policy
        if now_ms > cmd.exp:
            raise _Reject("expired", "exp is in the past")
        if cmd.exp <= cmd.iat or cmd.exp - cmd.iat > policy.max_validity_s * 1000:
            raise _Reject("expired", "validity (exp - iat) empty or over the device maximum")
        if cmd.iat > now_ms + policy.clock_skew_s * 1000:
            raise _Reject("expired", "iat is in the future beyond the allowed clock skew")
        if cmd.nbf is not None and cmd.nbf >= cmd.exp:
            raise _Reject("expired", "nbf is not before exp")

    def _check_range(self, cmd: Command, caps: Mapping[str, Any]) -> None:
        if cmd.power_w is not None:
            low, high = _caps_number(caps, "min_w"), _caps_number(caps, "max_w")
            if (low is not None and cmd.power_w < low) or (high is not None and cmd.power_w > high):
                bounds = "[" + ", ".join("-" if b is None else f"{b:g}" for b in (low, high))
                raise _Reject("out_of_range", f"power_w outside caps {bounds}]")
        if cmd.ramp_w_s is not None:
            ramp_max = _caps_number(caps, "ramp_max_w_s")
            if ramp_max is not None and cmd.ramp_w_s > ramp_max:
                raise _Reject("out_of_range", f"ramp_w_s over caps ramp_max_w_s {ramp_max:g}")


def ack_map(
    result: str,
    ts_ms: int,
    *,
    echo: Mapping[str, Any] | None = None,
    reason: str | None = None,
    detail: str = "",
    applied_w: float | None = None,
    limited_by: str | None = None,
    eta_s: float | None = None,
) -> dict[str, Any]:
    """The ack map of spec section 4 (keys absent when they do not apply)."""
    ack: dict[str, Any] = {"v": VERSION}
    ack.update(echo or {})
    ack["result"] = result
    if reason is not None:
        ack["reason"] = reason
    if detail:
        ack["detail"] = detail[:120]
    if applied_w is not None and math.isfinite(applied_w):
        ack["applied_w"] = round(float(applied_w), 1)
    if limited_by:
        ack["limited_by"] = limited_by
    if eta_s is not None and math.isfinite(eta_s):
        ack["eta_ms"] = max(0, round(eta_s * 1000))
    ack["ts"] = ts_ms
    return ack
