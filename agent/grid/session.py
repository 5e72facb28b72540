"""The device's grid policy, run by the control thread: commands, acks, fallback, telemetry.

`GridSession.service()` is called on every control tick (and whenever the link wakes the control
thread). It takes the commands the network thread queued, checks them (agent.grid.command), persists
the replay state before anything acts, applies accepted commands to a `SetpointSink` (the
governor), answers with acks, runs the `nbf` scheduler, the `exp` lapse, the link-loss fallback
and the restart spread, and publishes telemetry from the runtime's snapshot.

Each inbound message is handled on its own: whatever it holds, and whatever goes wrong with it, it
is PUBACKed and the others are served. Commands are timed against the wall clock only while the
device trusts it (agent.clock.WallClockTrust); once taken, a command's `nbf` and `exp` run on the
monotonic clock. A command that takes effect supersedes the older ones of its key still waiting.

Size: about 630 lines on purpose: intake, schedule, fallback and persistence are one state
machine on one thread; the checks, replay state, trust files, telemetry and the link are apart.
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

from agent.clock import Clock, SystemClock, WallClockTrust
from agent.errors import GridLinkError
from agent.grid import cose
from agent.grid.command import CheckPolicy, Command, CommandChecker, ack_map
from agent.grid.contract import LIMITS, Topics, response_topic_problem
from agent.grid.link import Inbound
from agent.grid.replay import ReplayGuard, StateFile
from agent.grid.telemetry import TelemetryBuffer, caps_map, encode
from agent.grid.trust import check_owner_only_write

log = logging.getLogger(__name__)

STATE_VERSION = 1
DEFAULT_OP = "resume"  # what "the configured default target" means to the sink
FAILURE_LOG_PERIOD_S = 60.0  # a failing inbound message is logged at most this often


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

    def take_lost(self) -> int: ...  # telemetry handed to a connection that turned half-open


@dataclass(frozen=True)
class GridPolicy:
    """The device-side numbers of the contract."""

    telemetry_period_s: float = 1.0
    telemetry_buffer: int = 3600
    telemetry_batch: int = 50  # buffered messages published per service() after an outage
    max_validity_s: float = 86_400.0
    clock_skew_s: float = 30.0  # also the most the wall clock may step between two readings
    clock_settle_s: float = 10.0  # a wall clock that stepped is trusted after this long steady
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

    The kid on the wire is the UTF-8 of the configured kid text. A key file that group or others
    may write is refused (a trust anchor), and so is no key at all, unless `insecure_dev` (then
    that is logged loudly; with no key every command is rejected `bad_signature`)."""
    out: dict[bytes, Ed25519PublicKey] = {}
    for item in keys or ():
        kid, path = (item.kid, item.path) if hasattr(item, "kid") else item
        try:
            out[str(kid).encode("utf-8")] = cose.load_public_key(Path(path).read_bytes())
        except (OSError, ValueError) as exc:
            raise GridLinkError(f"operator key {kid!r} at {path}: {exc}") from exc
        check_owner_only_write(path, f"operator key {kid!r}:", insecure_dev)
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


def _still_waiting(scheduled: list[Command], newer: Command) -> list[Command]:
    """The scheduled commands `newer` does not supersede: those of other keys, or later ones."""
    return [c for c in scheduled if c.kid != newer.kid or c.seq > newer.seq]


class _FailureLog:
    """Logs the first failure, then at most one a period, with the count of those left out."""

    def __init__(self, period_s: float) -> None:
        self.period_s = period_s
        self._next_s = -math.inf
        self._suppressed = 0

    def report(self, now_s: float, text: str, exc: BaseException) -> None:
        if now_s < self._next_s:
            self._suppressed += 1
            return
        more = f" ({self._suppressed} more suppressed)" if self._suppressed else ""
        log.error("%s%s", text, more, exc_info=exc)
        self._suppressed = 0
        self._next_s = now_s + self.period_s


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
        self.trust = WallClockTrust(self.clock, self.policy.clock_skew_s,
                                    self.policy.clock_settle_s)
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
        self._failures = _FailureLog(FAILURE_LOG_PERIOD_S)
        self._clock_problem: str | None = None  # the last one logged
        self._trusted_ms: int | None = None  # the latest trusted wall time (persisted)
        self._floor_pending = False  # a new state waits for a trusted clock to set its floor
        self._unpinned = False  # restored commands wait for a trusted clock to time them
        # caps known now, so the link's first birth and Will carry them (start the link after)
        self.link.set_status(caps_map(self._caps()), None)

    # ---- life cycle ---------------------------------------------------------------------------
    def start(self, hot: bool = False) -> None:
        """Restore the persisted state and begin the restart spread. `hot`: the agent took over
        a chain that was already hashing (a restart of the agent, not of the power), so the load
        is on: no curtail and no spread, the persisted active command (or the default) goes on
        from the current load, ramp-limited by the governor."""
        now_s = self.clock.monotonic()
        self._started_s = now_s
        self._next_telemetry_s = now_s
        self._restore()
        self._wall_ms(now_s)  # times the restored commands if the clock is trusted
        if self.active is not None and self.active.end_s is not None and self.active.end_s <= now_s:
            self.active = None  # lapsed while the agent was down
        self.scheduled = [c for c in self.scheduled if c.end_s is None or c.end_s > now_s]
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
        now_s = self.clock.monotonic() if now_s is None else now_s
        self.serve_commands(now_s)
        self._run_schedule(now_s)
        self._run_lapse(now_s)
        self._run_link_fallback(now_s)
        self._run_spread(now_s)
        if now_s >= self._next_telemetry_s:
            self._produce_telemetry(self._now_ms())
            self._next_telemetry_s += self.policy.telemetry_period_s
            if self._next_telemetry_s <= now_s:
                self._next_telemetry_s = now_s + self.policy.telemetry_period_s
        self._flush_telemetry()
        if self._dirty:
            self._save()
        return self._next_due(now_s)

    # ---- commands -----------------------------------------------------------------------------
    def serve_commands(self, now_s: float | None = None) -> None:
        """The first step of `service()` on its own: every queued command checked, persisted,
        applied and acked. A host running many sessions on one thread calls it for each before
        their `service()`, so that the acks of a burst do not queue behind the rest of the
        passes (telemetry, the full ack's write)."""
        if not self._started:
            self.start()
        now_s = self.clock.monotonic() if now_s is None else now_s
        wall_ms = self._wall_ms(now_s)
        for msg in self.link.drain():
            self._serve(msg, wall_ms, now_s)

    def _serve(self, msg: Inbound, wall_ms: int | None, now_s: float) -> None:
        """Handle one message in isolation: a failure is counted and logged (rate-limited), and
        the message is PUBACKed whatever happened, so it cannot hold up or drop the others."""
        try:
            self._handle(msg, wall_ms, now_s)
        except Exception as exc:
            self.counters["inbound_errors"] += 1
            self._failures.report(now_s, f"command on {msg.topic!r} could not be handled", exc)
        finally:
            try:
                self.link.ack(msg)
            except Exception as exc:
                self.counters["inbound_errors"] += 1
                self._failures.report(now_s, f"PUBACK of a command on {msg.topic!r} failed", exc)

    def _handle(self, msg: Inbound, wall_ms: int | None, now_s: float) -> None:
        ts_ms = self._now_ms()
        caps = caps_map(self._caps())
        verdict = self.checker.check(msg.topic, msg.payload, wall_ms, caps)
        if verdict.reason is not None:
            self._reject(msg, ts_ms, verdict.echo, verdict.reason, verdict.detail)
            return
        cmd = verdict.command
        assert cmd is not None and wall_ms is not None
        if verdict.original_ack is not None:
            self.counters["duplicate"] += 1
            self._send_ack(msg, {**verdict.original_ack, "result": "duplicate", "ts": ts_ms})
            return
        echo = {"id": cmd.id, "seq": cmd.seq}
        cmd = cmd.pinned(wall_ms, now_s)
        waits = cmd.op != "ping" and cmd.start_ms > wall_ms
        active, scheduled = self.active, self.scheduled
        if cmd.op == "ping":
            ack = ack_map("accepted", ts_ms, echo=echo, applied_w=self.applied_w)
        elif waits:
            if len(scheduled) >= self.policy.max_scheduled:
                self._reject(msg, ts_ms, echo, "schedule_full",
                             f"{len(scheduled)} commands already wait for their nbf")
                return
            ack = ack_map("scheduled", ts_ms, echo=echo, applied_w=self.applied_w,
                          eta_s=(cmd.start_ms - wall_ms) / 1000.0)
            scheduled = [*scheduled, cmd]
        else:
            ack = ack_map("accepted", ts_ms, echo=echo)
            active, scheduled = cmd, _still_waiting(scheduled, cmd)
        problem = self._commit(cmd, ack, active, scheduled)
        if problem is not None:
            self._reject(msg, ts_ms, echo, "unavailable",
                         f"replay state not saved ({problem}); command not applied")
            return
        if active is cmd:
            ack = self._activate(cmd, ts_ms, now_s, echo)
            self.replay.update_ack(cmd.id, ack)
            self._dirty = True  # the full ack is written after it is sent (off the ack path)
        elif waits:
            self.counters["scheduled"] += 1
        self.counters["accepted"] += 1
        log.info("command %s seq %d (%s) %s", cmd.id.hex(), cmd.seq, cmd.op, ack["result"])
        self._send_ack(msg, ack)

    def _reject(self, msg: Inbound, ts_ms: int, echo: dict[str, Any], reason: str,
                detail: str) -> None:
        self.counters[f"rejected_{reason}"] += 1
        self.counters["rejected"] += 1
        log.info("command rejected on %s: %s (%s)", msg.topic, reason, detail)
        self._send_ack(msg, ack_map("rejected", ts_ms, echo=echo, reason=reason, detail=detail))

    def _commit(self, cmd: Command, ack: dict[str, Any], active: Command | None,
                scheduled: list[Command]) -> str | None:
        """Persist the replay state with `cmd` recorded and `active`/`scheduled` as they are to
        become, before the command acts; then they are the session's. If the state cannot be
        written, nothing changed (the seq is not used up) and the error is returned."""
        undo = self.replay.record(cmd.kid, cmd.id, cmd.seq, ack)
        try:
            self.state.save(self._document(active, scheduled))
        except OSError as exc:
            log.error("cannot persist replay state (%s); command %s not applied", exc, cmd.id.hex())
            undo()
            self.counters["persist_failed"] += 1
            return exc.strerror or str(exc)
        self._note_superseded(self.scheduled, scheduled, cmd)
        self.active, self.scheduled = active, scheduled
        return None

    def _note_superseded(self, before: list[Command], after: list[Command],
                         newer: Command) -> None:
        for old in (c for c in before if c not in after):
            self.counters["superseded"] += 1
            log.info("scheduled command %s seq %d superseded by seq %d", old.id.hex(), old.seq,
                     newer.seq)

    def _activate(self, cmd: Command, ts_ms: int, now_s: float,
                  echo: dict[str, Any]) -> dict[str, Any]:
        """Apply a command that takes effect now and build its ack."""
        holding = self.hold_until_s is not None and now_s < self.hold_until_s
        if holding and cmd.op in ("setpoint", "resume"):
            # Ramping up waits for the restart spread; the ack says when it will start.
            assert self.hold_until_s is not None
            wait_s = self.hold_until_s - now_s
            log.info("command %s accepted; ramping up after the restart spread, in %.1f s",
                     cmd.id.hex(), wait_s)
            return ack_map("accepted", ts_ms, echo=echo, applied_w=self.applied_w,
                           limited_by="ramp", eta_s=wait_s,
                           detail=f"restart spread: ramping up in {wait_s:.1f} s")
        decision = self._apply_command(cmd)
        applied_w, limited_by, eta_s = _decision_fields(decision)
        return ack_map("accepted", ts_ms, echo=echo, applied_w=applied_w, limited_by=limited_by,
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
        """On the command's Response Topic when it lies in the device's ack tree (contract
        `response_topic_problem`), else on the ack topic with the reason in `detail`."""
        topic = self.topics.ack
        if msg.response_topic is not None:
            problem = response_topic_problem(self.topics, msg.response_topic)
            if problem is None:
                topic = msg.response_topic
            else:
                self.counters["response_topic_refused"] += 1
                detail = "; ".join(filter(None, (f"response topic refused: {problem}",
                                                 ack.get("detail"))))
                ack = {**ack, "detail": detail[:120]}
        self.link.publish(
            topic, encode(ack), qos=1, retain=False, correlation_data=msg.correlation_data,
            user_properties=(("site", self.topics.site), ("dev", self.topics.device)),
        )

    # ---- time-driven policy -------------------------------------------------------------------
    def _holding(self, now_s: float) -> bool:
        return self.hold_until_s is not None and now_s < self.hold_until_s

    def _run_schedule(self, now_s: float) -> None:
        due = sorted((c for c in self.scheduled if c.start_s is not None and c.start_s <= now_s),
                     key=lambda c: (c.start_s, c.seq))
        if not due:
            return
        started = None
        for cmd in due:
            if cmd not in self.scheduled:
                continue  # superseded by one that started before it in this pass
            self.scheduled.remove(cmd)
            if cmd.end_s is not None and now_s >= cmd.end_s:
                continue
            before = self.scheduled
            self.active, self.scheduled, started = cmd, _still_waiting(before, cmd), cmd
            self._note_superseded(before, self.scheduled, cmd)
            log.info("scheduled command %s (%s) takes effect", cmd.id.hex(), cmd.op)
        self._save()
        if started is not None:
            if self._holding(now_s) and started.op in ("setpoint", "resume"):
                return
            self._apply_command(started)

    def _run_lapse(self, now_s: float) -> None:
        active = self.active
        if active is None or active.end_s is None or now_s < active.end_s:
            return
        log.info("command %s lapsed at exp", active.id.hex())
        self.active = None
        self._save()
        if not self._holding(now_s):
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

    def _next_due(self, now_s: float) -> float:
        due = [self._next_telemetry_s - now_s]
        if len(self.telemetry) and self.link.connected:
            due.append(0.0)  # more of the backlog at once
        if self.hold_until_s is not None:
            due.append(self.hold_until_s - now_s)
        due.extend(c.start_s - now_s for c in self.scheduled if c.start_s is not None)
        if self.active is not None and self.active.end_s is not None:
            due.append(self.active.end_s - now_s)
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
        """Publish buffered telemetry, oldest first, at most `telemetry_batch` a call, so that the
        backlog of a long outage does not hold up the control thread. Messages the link handed
        to a connection that turned out half-open are counted in `lost`."""
        self.telemetry.lost += self.link.take_lost()
        for _ in range(self.policy.telemetry_batch):
            if not self.link.connected:
                return
            msg = self.telemetry.peek()
            if msg is None:
                return
            if not self.link.publish(self.topics.telemetry, encode(msg), qos=0):
                return
            self.telemetry.pop()

    # ---- clock and persistence ----------------------------------------------------------------
    def _now_ms(self) -> int:
        """Device time for `ts` fields (whether or not the clock is trusted)."""
        return math.floor(self.clock.time() * 1000)

    def _wall_ms(self, now_s: float) -> int | None:
        """The wall time if the device trusts its clock, else None. The first trusted reading
        also settles what waited for one: the replay floor of a new state, the monotonic times
        of restored commands."""
        wall_s = self.trust.read()
        problem = self.trust.problem
        if problem != self._clock_problem:
            if problem is not None:
                log.warning("device clock not trusted (%s; now %d ms): commands are answered "
                            "unavailable", problem, self._now_ms())
            else:
                log.info("device clock trusted")
            self._clock_problem = problem
        if wall_s is None:
            return None
        wall_ms = math.floor(wall_s * 1000)
        self._trusted_ms = wall_ms
        if self._floor_pending:
            self._floor_pending = False
            self.replay.floor_ms = wall_ms - round(self.policy.clock_skew_s * 1000)
            log.warning("new grid state: commands issued before %d ms are refused as replays "
                        "(send a fresh command)", self.replay.floor_ms)
            self._dirty = True
        if self._unpinned:
            self._unpinned = False
            if self.active is not None:
                self.active = self.active.pinned(wall_ms, now_s)
            self.scheduled = [c.pinned(wall_ms, now_s) for c in self.scheduled]
        return wall_ms

    def _document(self, active: Command | None, scheduled: list[Command]) -> dict[str, Any]:
        return {
            "v": STATE_VERSION,
            "replay": self.replay.encoded(),
            "active": active.to_json() if active is not None else None,
            "scheduled": [c.to_json() for c in scheduled],
            "saved_ms": self._trusted_ms,  # the clock is not trusted before this, at the next start
        }

    def _save(self) -> None:
        self._dirty = False
        try:
            self.state.save(self._document(self.active, self.scheduled))
        except OSError:
            log.exception("cannot persist grid state")

    def _restore(self) -> None:
        """Load the persisted state. A missing one (first start, tmpfs, reflash) or an unreadable
        one (moved aside) starts afresh with a replay floor: commands issued before the first
        trusted wall time, less the allowed skew, count as replays for every key."""
        try:
            doc = self.state.load()
        except ValueError as exc:
            log.error("grid state unreadable (%s), kept as %s", exc, self.state.quarantine())
            doc = None
        if doc is not None:
            try:
                self.replay.load_json(doc.get("replay", {}))
                active = doc.get("active")
                self.active = Command.from_json(active) if active else None
                self.scheduled = [Command.from_json(x) for x in doc.get("scheduled", [])]
                saved = doc.get("saved_ms")
                self._trusted_ms = int(saved) if saved is not None else None
            except (AttributeError, KeyError, TypeError, ValueError) as exc:
                log.error("grid state has bad content (%s), kept as %s", exc,
                          self.state.quarantine())
                self.replay.load_json({})
                self.active, self.scheduled, self._trusted_ms, doc = None, [], None, None
        self._unpinned = self.active is not None or bool(self.scheduled)
        self._floor_pending = doc is None
        if self._trusted_ms is not None:
            self.trust.not_before(self._trusted_ms / 1000.0 - self.policy.clock_skew_s,
                                  "before the last persisted time")
