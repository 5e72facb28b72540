"""The device's grid policy, run by the control thread: commands, acks, fallback, telemetry.

`GridSession.service()` is called on every control tick (and whenever the link wakes the control
thread). It takes the commands the network thread queued, checks them (agent.grid.command), persists
the replay state before anything acts, applies accepted commands to a `SetpointSink` (the
governor), answers with acks, runs the `nbf` scheduler, the `exp` lapse, the link-loss fallback
and the restart spread, and publishes telemetry from the runtime's snapshot.
"""

from __future__ import annotations

import logging
import math
import random
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.clock import Clock, SystemClock
from agent.errors import GridLinkError
from agent.grid import cose
from agent.grid.command import CheckPolicy, Command, CommandChecker, ack_map
from agent.grid.contract import LIMITS, Topics
from agent.grid.link import Inbound
from agent.grid.replay import ReplayGuard, StateFile
from agent.grid.telemetry import TelemetryBuffer, caps_map, encode

log = logging.getLogger(__name__)

STATE_VERSION = 1
DEFAULT_OP = "resume"  # what "the configured default target" means to the sink


class Decision(Protocol):
    """What the governor answers to a target: where it is going, what limits it, how long."""

    applied_w: float
    limited_by: str | None
    eta_s: float | None


class SetpointSink(Protocol):
    """Where accepted commands go (the governor, through the runtime).

    `op` is "setpoint" (with `power_w`), "curtail", "standby" or "resume" (the configured default
    target); `ramp_w_s` None means the device's own ramp. The sink clamps to its envelope and says
    so in the decision. `caps()` returns the status caps (mapping or object with min_w, max_w,
    ramp_max_w_s, chips, chip_model, hashrate_max_ghs).
    """

    def apply(self, op: str, power_w: float | None, ramp_w_s: float | None) -> Decision: ...

    def caps(self) -> Any: ...


class Link(Protocol):
    """What GridSession needs from agent.grid.link.GridLink (tests use a fake)."""

    topics: Topics

    @property
    def connected(self) -> bool: ...

    def drain(self) -> list[Inbound]: ...

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 0,
        retain: bool = False,
        correlation_data: bytes | None = None,
        user_properties: tuple[tuple[str, str], ...] = (),
    ) -> bool: ...

    def ack(self, msg: Inbound) -> None: ...

    def set_status(self, caps: Any, mode: str | None) -> None: ...


@dataclass(frozen=True)
class GridPolicy:
    """The device-side numbers of the contract."""

    telemetry_period_s: float = 1.0
    telemetry_buffer: int = 3600
    max_validity_s: float = 86_400.0
    clock_skew_s: float = 30.0
    restart_spread_s: float = 30.0
    link_grace_s: float = 10.0  # at start, how long a never-connected link is not yet "lost"
    recent_ids: int = 256
    max_scheduled: int = 64
    hold_during_spread: bool = True

    @classmethod
    def from_config(cls, grid: Any, **overrides: Any) -> GridPolicy:
        names = ("telemetry_period_s", "telemetry_buffer", "max_validity_s", "clock_skew_s",
                 "restart_spread_s")
        values = {n: getattr(grid, n) for n in names if getattr(grid, n, None) is not None}
        values.update(overrides)
        return cls(**values)


def load_operator_keys(
    keys: Any, insecure_dev: bool = False
) -> dict[bytes, Ed25519PublicKey]:
    """{kid bytes: public key} from (kid, path) pairs or objects with .kid/.path.

    The kid on the wire is the UTF-8 of the configured kid text. No key at all is refused unless
    `insecure_dev` (then every command is rejected `bad_signature`, logged loudly)."""
    out: dict[bytes, Ed25519PublicKey] = {}
    for item in keys or ():
        kid, path = (item.kid, item.path) if hasattr(item, "kid") else item
        try:
            out[str(kid).encode("utf-8")] = cose.load_public_key(Path(path).read_bytes())
        except (OSError, ValueError) as exc:
            raise GridLinkError(f"operator key {kid!r} at {path}: {exc}") from exc
    if not out:
        if not insecure_dev:
            raise GridLinkError("no operator public key configured (grid.operator_keys)")
        log.warning("INSECURE DEVELOPMENT MODE: no operator key, every command will be rejected")
    return out


def _decision_fields(decision: Any) -> tuple[float | None, str | None, float | None]:
    if decision is None:
        return None, None, None
    applied = getattr(decision, "applied_w", None)
    limited = getattr(decision, "limited_by", None)
    eta = getattr(decision, "eta_s", None)
    applied_w = float(applied) if isinstance(applied, (int, float)) else None
    eta_s = float(eta) if isinstance(eta, (int, float)) else None
    return applied_w, (limited if limited in LIMITS else None), eta_s


class GridSession:
    """The grid policy of one device; every method runs on the control thread."""

    def __init__(
        self,
        link: Link,
        sink: SetpointSink,
        keys: Mapping[bytes, Ed25519PublicKey],
        state_dir: str | Path,
        snapshot: Callable[[], Any] | None = None,
        policy: GridPolicy | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.link = link
        self.sink = sink
        self.policy = policy or GridPolicy()
        self.clock = clock or SystemClock()
        self.rng = rng or random.Random()
        self.snapshot = snapshot
        self.topics = link.topics
        self.replay = ReplayGuard(self.policy.recent_ids)
        self.checker = CommandChecker(
            CheckPolicy(self.topics, keys, self.policy.max_validity_s, self.policy.clock_skew_s),
            self.replay,
        )
        self.state = StateFile(Path(state_dir) / "grid.json")
        self.telemetry = TelemetryBuffer(self.policy.telemetry_buffer)
        self.active: Command | None = None
        self.scheduled: list[Command] = []
        self.counters: Counter[str] = Counter()
        self.applied_w: float | None = None
        self.hold_until_s: float | None = None  # monotonic end of the restart spread
        self._applied_id: bytes | None = None  # the command the sink last received
        self._started_s = 0.0
        self._link_was_up = False
        self._next_telemetry_s = 0.0
        self._mode: str | None = None
        self._started = False
        self._dirty = False
        # caps known now, so the link's first birth and Will carry them (start the link after)
        self.link.set_status(caps_map(self._caps()), None)

    # ---- life cycle ---------------------------------------------------------------------------
    def start(self, hot: bool = False) -> None:
        """Restore the persisted state and begin the restart spread. `hot`: the agent took over
        a chain that was already hashing (a restart of the agent, not of the power), so the load
        is on: no curtail and no spread, the persisted active command (or the default) goes on
        from the current load, ramp-limited by the governor."""
        now_s = self.clock.monotonic()
        now_ms = self._now_ms()
        self._started_s = now_s
        self._next_telemetry_s = now_s
        self._restore(now_ms)
        if hot:
            self.hold_until_s = None
            log.info("hot start: the load is on; continuing without a restart spread")
            if self.active is not None:
                self._apply_command(self.active)
            else:
                self._apply(DEFAULT_OP, None, None)
            self._publish_status()
            self._started = True
            return
        spread = self.rng.uniform(0.0, max(0.0, self.policy.restart_spread_s))
        self.hold_until_s = now_s + spread
        log.info("restart spread: %.1f s before ramping up", spread)
        if self.active is not None and self.active.op in ("curtail", "standby"):
            self._apply_command(self.active)  # going down is never delayed
        elif self.policy.hold_during_spread:
            self._apply("curtail", None, None)
        self._publish_status()
        self._started = True

    def service(self, now_s: float | None = None) -> float:
        """One pass; returns the seconds until the next thing is due (for the caller's wait)."""
        if not self._started:
            self.start()
        now_s = self.clock.monotonic() if now_s is None else now_s
        now_ms = self._now_ms()
        for msg in self.link.drain():
            self._handle(msg, now_ms, now_s)
        self._run_schedule(now_ms)
        self._run_lapse(now_ms)
        self._run_link_fallback(now_s)
        self._run_spread(now_s)
        if now_s >= self._next_telemetry_s:
            self._produce_telemetry(now_ms)
            self._next_telemetry_s += self.policy.telemetry_period_s
            if self._next_telemetry_s <= now_s:
                self._next_telemetry_s = now_s + self.policy.telemetry_period_s
        self._flush_telemetry()
        if self._dirty:
            self._save()
        return self._next_due(now_s, now_ms)

    # ---- commands -----------------------------------------------------------------------------
    def _handle(self, msg: Inbound, now_ms: int, now_s: float) -> None:
        caps = caps_map(self._caps())
        verdict = self.checker.check(msg.topic, msg.payload, now_ms, caps)
        if verdict.reason is not None:
            self.counters[f"rejected_{verdict.reason}"] += 1
            self.counters["rejected"] += 1
            log.info("command rejected on %s: %s (%s)", msg.topic, verdict.reason, verdict.detail)
            self._send_ack(msg, ack_map("rejected", now_ms, echo=verdict.echo,
                                        reason=verdict.reason, detail=verdict.detail))
            self.link.ack(msg)
            return
        cmd = verdict.command
        assert cmd is not None
        if verdict.original_ack is not None:
            self.counters["duplicate"] += 1
            self._send_ack(msg, {**verdict.original_ack, "result": "duplicate", "ts": now_ms})
            self.link.ack(msg)
            return
        echo = {"id": cmd.id, "seq": cmd.seq}
        if cmd.op == "ping":
            ack = ack_map("accepted", now_ms, echo=echo, applied_w=self.applied_w)
            if not self._record(cmd, ack):
                return
        elif cmd.start_ms > now_ms:
            if len(self.scheduled) >= self.policy.max_scheduled:
                self.counters["rejected_out_of_range"] += 1
                self._send_ack(msg, ack_map("rejected", now_ms, echo=echo, reason="out_of_range",
                                            detail="too many scheduled commands"))
                self.link.ack(msg)
                return
            ack = ack_map("scheduled", now_ms, echo=echo, applied_w=self.applied_w,
                          eta_s=(cmd.start_ms - now_ms) / 1000.0)
            self.scheduled.append(cmd)
            if not self._record(cmd, ack):
                self.scheduled.remove(cmd)
                return
            self.counters["scheduled"] += 1
        else:
            previous = self.active
            self.active = cmd
            if not self._record(cmd, ack_map("accepted", now_ms, echo=echo)):
                self.active = previous
                return
            ack = self._activate(cmd, now_ms, now_s, echo)
            self.replay.update_ack(cmd.id, ack)
            self._dirty = True  # the full ack is written after it is sent (off the ack path)
        self.counters["accepted"] += 1
        log.info("command %s seq %d (%s) %s", cmd.id.hex(), cmd.seq, cmd.op, ack["result"])
        self._send_ack(msg, ack)
        self.link.ack(msg)

    def _record(self, cmd: Command, ack: dict[str, Any]) -> bool:
        """Persist the accepted seq/id before the command acts; False (and nothing changed) if the
        state cannot be written: the command is then neither applied nor acked, so the broker
        delivers it again."""
        snapshot = self.replay.to_json()
        self.replay.record(cmd.kid, cmd.id, cmd.seq, ack)
        try:
            self._save(raise_errors=True)
        except OSError as exc:
            log.error("cannot persist replay state (%s); command %s not applied", exc, cmd.id.hex())
            self.replay.load_json(snapshot)
            self.counters["persist_failed"] += 1
            return False
        return True

    def _activate(self, cmd: Command, now_ms: int, now_s: float,
                  echo: dict[str, Any]) -> dict[str, Any]:
        """Apply a command that takes effect now and build its ack."""
        holding = self.hold_until_s is not None and now_s < self.hold_until_s
        if holding and cmd.op in ("setpoint", "resume"):
            # Ramping up waits for the restart spread; the ack says when it will start.
            assert self.hold_until_s is not None
            return ack_map("accepted", now_ms, echo=echo, applied_w=self.applied_w,
                           limited_by="ramp", eta_s=self.hold_until_s - now_s)
        decision = self._apply_command(cmd)
        applied_w, limited_by, eta_s = _decision_fields(decision)
        return ack_map("accepted", now_ms, echo=echo, applied_w=applied_w, limited_by=limited_by,
                       eta_s=eta_s)

    def _apply_command(self, cmd: Command) -> Any:
        self._applied_id = cmd.id
        return self._apply(cmd.op, cmd.power_w, cmd.ramp_w_s)

    def _apply(self, op: str, power_w: float | None, ramp_w_s: float | None) -> Any:
        try:
            decision = self.sink.apply(op, power_w, ramp_w_s)
        except Exception:
            log.exception("setpoint sink failed on %s", op)
            self.counters["sink_errors"] += 1
            return None
        applied_w, _, _ = _decision_fields(decision)
        if applied_w is not None:
            self.applied_w = applied_w
        return decision

    def _apply_default(self, why: str) -> None:
        log.info("moving to the default target: %s", why)
        self.counters[f"fallback_{why}"] += 1
        self._applied_id = None
        self._apply(DEFAULT_OP, None, None)

    def _send_ack(self, msg: Inbound, ack: dict[str, Any]) -> None:
        topic = msg.response_topic or self.topics.ack
        self.link.publish(
            topic, encode(ack), qos=1, retain=False, correlation_data=msg.correlation_data,
            user_properties=(("site", self.topics.site), ("dev", self.topics.device)),
        )

    # ---- time-driven policy -------------------------------------------------------------------
    def _holding(self, now_s: float) -> bool:
        return self.hold_until_s is not None and now_s < self.hold_until_s

    def _run_schedule(self, now_ms: int) -> None:
        due = sorted((c for c in self.scheduled if c.start_ms <= now_ms),
                     key=lambda c: (c.start_ms, c.seq))
        if not due:
            return
        for cmd in due:
            self.scheduled.remove(cmd)
            if now_ms >= cmd.exp:
                continue
            self.active = cmd
            log.info("scheduled command %s (%s) takes effect", cmd.id.hex(), cmd.op)
        self._save()
        now_s = self.clock.monotonic()
        if self.active is not None and self.active in due:
            if self._holding(now_s) and self.active.op in ("setpoint", "resume"):
                return
            self._apply_command(self.active)

    def _run_lapse(self, now_ms: int) -> None:
        if self.active is None or now_ms < self.active.exp:
            return
        log.info("command %s lapsed at exp", self.active.id.hex())
        self.active = None
        self._save()
        if not self._holding(self.clock.monotonic()):
            self._apply_default("lapsed")

    def _run_link_fallback(self, now_s: float) -> None:
        if self.link.connected:
            self._link_was_up = True
            return
        lost = self._link_was_up or now_s - self._started_s >= self.policy.link_grace_s
        if not lost or self.active is None or self.active.fallback != "default_now":
            return
        log.warning("grid link lost: command %s falls back (default_now)", self.active.id.hex())
        self.active = None
        self._save()
        if not self._holding(now_s):
            self._apply_default("link_lost")

    def _run_spread(self, now_s: float) -> None:
        if self.hold_until_s is None or now_s < self.hold_until_s:
            return
        self.hold_until_s = None
        if self.active is not None:
            if self._applied_id != self.active.id:
                self._apply_command(self.active)
        else:
            self._apply_default("started")

    def _next_due(self, now_s: float, now_ms: int) -> float:
        due = [self._next_telemetry_s - now_s]
        if self.hold_until_s is not None:
            due.append(self.hold_until_s - now_s)
        if self.scheduled:
            due.append(min(c.start_ms for c in self.scheduled) / 1000.0 - now_ms / 1000.0)
        if self.active is not None:
            due.append(self.active.exp / 1000.0 - now_ms / 1000.0)
        return max(0.0, min(due))

    # ---- telemetry and status -----------------------------------------------------------------
    def _caps(self) -> Any:
        try:
            return self.sink.caps()
        except Exception:
            log.exception("caps() failed")
            return {}

    def _read_snapshot(self) -> Any:
        if self.snapshot is None:
            return {}
        try:
            return self.snapshot()
        except Exception:
            log.exception("telemetry snapshot failed")
            self.counters["snapshot_errors"] += 1
            return None

    def _publish_status(self, snap: Any = None) -> None:
        snap = self._read_snapshot() if snap is None else snap
        mode = snap.get("mode") if isinstance(snap, Mapping) else getattr(snap, "mode", None)
        self.link.set_status(caps_map(self._caps()), mode if isinstance(mode, str) else None)

    def _produce_telemetry(self, now_ms: int) -> None:
        snap = self._read_snapshot()
        if snap is None:
            return
        active = self.active
        setpoint = active is not None and active.op == "setpoint"
        extra: dict[str, Any] = {
            "setpoint_w": active.power_w if setpoint and active is not None else None,
            "cmd_id": active.id if active is not None else None,
        }
        self.telemetry.produce(snap, now_ms, extra)
        self._publish_status(snap)

    def _flush_telemetry(self) -> None:
        while self.link.connected:
            msg = self.telemetry.peek()
            if msg is None:
                return
            if not self.link.publish(self.topics.telemetry, encode(msg), qos=0):
                return
            self.telemetry.pop()

    # ---- persistence --------------------------------------------------------------------------
    def _now_ms(self) -> int:
        return math.floor(self.clock.time() * 1000)

    def _save(self, raise_errors: bool = False) -> None:
        self._dirty = False
        doc = {
            "v": STATE_VERSION,
            "replay": self.replay.to_json(),
            "active": self.active.to_json() if self.active is not None else None,
            "scheduled": [c.to_json() for c in self.scheduled],
        }
        try:
            self.state.save(doc)
        except OSError:
            if raise_errors:
                raise
            log.exception("cannot persist grid state")

    def _restore(self, now_ms: int) -> None:
        try:
            doc = self.state.load()
        except ValueError as exc:
            bad = self.state.quarantine()
            log.error("grid state unreadable (%s), kept as %s; commands issued before now are "
                      "refused as replays", exc, bad)
            self.replay.floor_ms = now_ms
            self._save()
            return
        if doc is None:
            return
        try:
            self.replay.load_json(doc.get("replay", {}))
            active = doc.get("active")
            cmd = Command.from_json(active) if active else None
            self.active = cmd if cmd is not None and cmd.exp > now_ms else None
            self.scheduled = [
                c for c in (Command.from_json(x) for x in doc.get("scheduled", []))
                if c.exp > now_ms
            ]
        except (KeyError, TypeError, ValueError) as exc:
            log.error("grid state has bad content (%s); commands issued before now are refused",
                      exc)
            self.replay = ReplayGuard(self.policy.recent_ids)
            self.replay.floor_ms = now_ms
            self.checker.replay = self.replay
            self.active, self.scheduled = None, []
            self._save()
