"""One Stratum V1 connection's protocol, without I/O: bytes in (`feed`), lines out (`output`).

`StratumSession` sends the handshake the way the strictest pools want it (notes/stratum.md §7):
`mining.configure` first (BIP 310 version rolling, when the pool entry allows it), then
subscribe and authorize back to back; `mining.suggest_difficulty` and
`mining.extranonce.subscribe` only after the authorization, without waiting for their replies.
Replies are matched by id, never by shape; notifications that come before the subscribe or
configure reply are kept. The mask the pool grants (ANDed with what the chips can roll) is the
mask the chips get; a pool that refuses, errs or never answers grants none, and the submits
then carry 5 params instead of 6.

Jobs: `clean_jobs` (or a new prevhash) forgets every earlier job at once; a share for a
forgotten job is stale and never sent. A difficulty applies to the jobs notified after it; a
share is sent when it meets the lower of its job's difficulty and the current one (ckpool
accepts that; notes §7.6). `mining.set_extranonce` takes effect with the next notify, which
then also makes the earlier jobs stale (they were built with the old extranonce1).

Every line is outside input: one that does not parse, or that makes no sense now, is counted
under its reason in `PoolStats.bad_lines` and the session goes on.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from agent.pool import message as msg
from agent.pool.endpoint import ROLLABLE_MASK, PoolEndpoint
from agent.pool.errors import RejectedLine
from agent.pool.header import Job
from agent.pool.stats import PoolStats

log = logging.getLogger("gridminer.pool")

#: jobs kept for late shares when the pool says nothing is stale
JOBS_KEPT = 32
#: a submit without a reply for this long is counted unanswered
SUBMIT_REPLY_S = 60.0
RECENT_SUBMITS = 4096


@dataclass(frozen=True)
class JobTemplate:
    """What the work source needs to make headers from the latest job of a session."""

    pool: int
    session: int
    job: Job
    extranonce1: bytes
    extranonce2_size: int
    difficulty: float  # the pool difficulty when the job came
    version_mask: int  # the bits the chips may roll (0: none)
    rolling: bool  # version rolling negotiated: submits carry the 6th param


@dataclass(frozen=True)
class ShareRequest:
    """A verified nonce to submit, with what makes it a share of one job of one session."""

    pool: int
    session: int
    job_id: str
    extranonce2: bytes
    ntime: int
    nonce: int
    version_bits: int  # rolled version & mask
    difficulty: float  # the hash's own difficulty


@dataclass(frozen=True)
class WorkChanged:
    """The session's template or difficulty changed; `urgent`: earlier work is stale now."""

    urgent: bool


@dataclass(frozen=True)
class Redirect:
    """The pool asked for a reconnect (client.reconnect)."""

    host: str | None
    port: int | None
    wait_s: float


@dataclass(frozen=True)
class Failed:
    """The session cannot go on (subscription or authorization refused)."""

    reason: str


Event = WorkChanged | Redirect | Failed


@dataclass
class _Pending:
    kind: str
    sent_s: float
    required: float = 0.0  # submits: the difficulty the share was sent for


@dataclass(frozen=True)
class _JobEntry:
    job: Job
    difficulty: float


class LineSplitter:
    """Bytes in, complete lines out; a line longer than `max_bytes` is skipped to its end and
    counted once (`overlong`)."""

    def __init__(self, max_bytes: int = msg.MAX_LINE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._buf = bytearray()
        self._skipping = False
        self.overlong = 0

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        lines: list[bytes] = []
        while True:
            end = self._buf.find(b"\n")
            if end < 0:
                if len(self._buf) > self.max_bytes:
                    if not self._skipping:
                        self.overlong += 1
                    self._skipping = True
                    self._buf.clear()
                return lines
            line = bytes(self._buf[:end]).strip()
            del self._buf[:end + 1]
            if self._skipping or len(line) > self.max_bytes:
                if not self._skipping:
                    self.overlong += 1
                self._skipping = False
                continue
            if line:
                lines.append(line)


class StratumSession:
    """The protocol of one connection to pool number `pool` (`serial` tells connections
    apart). Feed it what the socket reads; write what `output()` returns."""

    def __init__(self, endpoint: PoolEndpoint, pool: int, serial: int, stats: PoolStats,
                 now_s: float, agent: str = "gridminer", configure: bool = True) -> None:
        self.endpoint = endpoint
        self.pool = pool
        self.serial = serial
        self.stats = stats
        self.agent = agent
        self.started_s = now_s
        self.last_rx_s = now_s
        self._configure = configure and endpoint.version_rolling
        self._out = bytearray()
        self._lines = LineSplitter()
        self._next_id = 1
        self._pending: dict[int, _Pending] = {}
        self._jobs: OrderedDict[str, _JobEntry] = OrderedDict()
        self._latest: str | None = None
        self._recent: OrderedDict[tuple[Any, ...], None] = OrderedDict()
        self._new_extranonce: tuple[bytes, int] | None = None
        self.subscribed = False
        self.authorized = False
        self.extranonce1 = b""
        self.extranonce2_size = 0
        self.difficulty = 1.0  # slush: difficulty 1 until set_difficulty
        self.rolling = False
        self.version_mask = 0
        self.configure_answered = not self._configure

    # -- state --------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Subscribed and authorized: shares may go out."""
        return self.subscribed and self.authorized

    @property
    def has_work(self) -> bool:
        return self.ready and self._latest is not None

    @property
    def sent_configure(self) -> bool:
        return self._configure

    def template(self) -> JobTemplate | None:
        """The latest job with everything needed to make headers (None: no usable job yet)."""
        if not self.has_work:
            return None
        assert self._latest is not None
        entry = self._jobs[self._latest]
        return JobTemplate(self.pool, self.serial, entry.job, self.extranonce1,
                           self.extranonce2_size, entry.difficulty, self.version_mask,
                           self.rolling)

    def output(self) -> bytes:
        """The lines to write now (and forget)."""
        out = bytes(self._out)
        self._out.clear()
        return out

    # -- sending ------------------------------------------------------------------------------

    def _send(self, method: str, params: list[Any], kind: str, now_s: float,
              required: float = 0.0) -> int:
        req_id = self._next_id
        self._next_id += 1
        self._pending[req_id] = _Pending(kind, now_s, required)
        self._out += msg.request(req_id, method, params)
        return req_id

    def start(self) -> None:
        """Queue the handshake: configure (if allowed), subscribe, authorize."""
        now = self.started_s
        if self._configure:
            self._send("mining.configure",
                       [["version-rolling"], {"version-rolling.mask": f"{ROLLABLE_MASK:08x}"}],
                       "configure", now)
        self._send("mining.subscribe", [self.agent], "subscribe", now)
        self._send("mining.authorize", [self.endpoint.user, self.endpoint.password],
                   "authorize", now)

    def submit(self, share: ShareRequest, now_s: float) -> str | None:
        """Send `share`; None when sent, else the reason it was dropped (also counted)."""
        reason = self._submit(share, now_s)
        if reason is not None:
            self.stats.drop(reason)
        return reason

    def _submit(self, share: ShareRequest, now_s: float) -> str | None:
        if share.pool != self.pool or share.session != self.serial:
            return "stale"  # work of another connection is never sent on this one
        if not self.ready:
            return "not ready"
        entry = self._jobs.get(share.job_id)
        if entry is None:
            return "stale"
        required = min(entry.difficulty, self.difficulty)
        if share.difficulty < required:
            return "below target"
        if share.version_bits & ~self.version_mask & 0xFFFFFFFF:
            return "version bits outside the mask"
        key = (share.job_id, share.extranonce2, share.ntime, share.nonce, share.version_bits)
        if key in self._recent:
            return "duplicate"
        self._recent[key] = None
        if len(self._recent) > RECENT_SUBMITS:
            self._recent.popitem(last=False)
        self._send("mining.submit", msg.submit_params(
            self.endpoint.user, share.job_id, share.extranonce2, share.ntime, share.nonce,
            share.version_bits if self.rolling else None), "submit", now_s, required)
        self.stats.count("submitted")
        return None

    def expire(self, now_s: float) -> None:
        """Count submits left without a reply for SUBMIT_REPLY_S (and forget them)."""
        late = [i for i, p in self._pending.items()
                if p.kind == "submit" and now_s - p.sent_s > SUBMIT_REPLY_S]
        for i in late:
            del self._pending[i]
        if late:
            self.stats.count("unanswered", len(late))

    def close(self) -> None:
        """The connection ended: submits still waiting for a reply are unanswered."""
        waiting = sum(1 for p in self._pending.values() if p.kind == "submit")
        if waiting:
            self.stats.count("unanswered", waiting)
        self._pending.clear()

    # -- receiving ----------------------------------------------------------------------------

    def feed(self, data: bytes, now_s: float) -> list[Event]:
        """Bytes read from the socket; the events they caused."""
        before = self._lines.overlong
        lines = self._lines.feed(data)
        for _ in range(self._lines.overlong - before):
            self.stats.reject_line("line too long")
        events: list[Event] = []
        for line in lines:
            events.extend(self.receive(line, now_s))
        return events

    def receive(self, line: bytes, now_s: float) -> list[Event]:
        """One line from the pool; never raises on what the pool sent."""
        self.last_rx_s = now_s
        try:
            message = msg.parse_line(line)
        except RejectedLine as exc:
            self._bad(exc.reason, str(exc))
            return []
        try:
            return self._dispatch(message, now_s)
        except RejectedLine as exc:
            self._bad(exc.reason, str(exc))
        except Exception:  # a bug here must not end the connection's thread
            log.exception("pool %s: handling %r failed", self.endpoint.address, line[:200])
            self.stats.reject_line("internal error")
        return []

    def _bad(self, reason: str, text: str) -> None:
        self.stats.reject_line(reason)
        log.debug("pool %s: line rejected: %s", self.endpoint.address, text)

    def _dispatch(self, message: msg.Message, now_s: float) -> list[Event]:
        if isinstance(message, msg.Reply):
            return self._reply(message, now_s)
        if isinstance(message, Job):
            return self._notify(message)
        if isinstance(message, msg.SetDifficulty):
            self.difficulty = message.difficulty
            self.stats.difficulty = message.difficulty
            return [WorkChanged(urgent=False)] if self.has_work else []
        if isinstance(message, msg.SetVersionMask):
            return self._set_mask(message.mask)
        if isinstance(message, msg.SetExtranonce):
            self._new_extranonce = (message.extranonce1, message.extranonce2_size)
            return []
        if isinstance(message, msg.Reconnect):
            return [Redirect(message.host, message.port, message.wait_s)]
        if isinstance(message, msg.ShowMessage):
            self.stats.messages.append(message.text)
            log.info("pool %s says: %s", self.endpoint.address, message.text)
            return []
        if message.method == "mining.ping":
            self._out += msg.answer(message.id, "pong")  # cgminer's pong: what pools parse
        elif message.method == "client.get_version":
            self._out += msg.answer(message.id, self.agent)
        else:
            self._bad("unknown method", message.method)
            if message.id is not None:
                self._out += msg.answer(message.id, None, [20, "Unsupported method", None])
        return []

    def _notify(self, job: Job) -> list[Event]:
        latest = self._jobs.get(self._latest) if self._latest is not None else None
        clean = job.clean or (latest is not None and latest.job.prevhash != job.prevhash)
        if self._new_extranonce is not None and self.subscribed:
            self.extranonce1, self.extranonce2_size = self._new_extranonce
            self._new_extranonce = None
            clean = True  # earlier jobs were built with the old extranonce1
        if clean:
            self._jobs.clear()
        self._jobs.pop(job.job_id, None)
        self._jobs[job.job_id] = _JobEntry(job, self.difficulty)
        while len(self._jobs) > JOBS_KEPT:
            self._jobs.popitem(last=False)
        self._latest = job.job_id
        self.stats.count("jobs")
        return [WorkChanged(urgent=clean or latest is None)] if self.has_work else []

    def _set_mask(self, mask: int) -> list[Event]:
        if not self.rolling:
            raise RejectedLine("mining.set_version_mask: version rolling not negotiated")
        self.version_mask = mask & ROLLABLE_MASK
        self.stats.version_mask = self.version_mask
        log.info("pool %s: version mask now %08x", self.endpoint.address, self.version_mask)
        return [WorkChanged(urgent=True)] if self.has_work else []

    def _reply(self, reply: msg.Reply, now_s: float) -> list[Event]:
        if reply.error is not None:
            self.stats.error_code(reply.error.code)
        pending = self._pending.pop(reply.id, None)
        if pending is None:
            raise RejectedLine("reply to no request", f"id {reply.id}")
        ok = reply.error is None and reply.result is True
        kind = pending.kind
        if kind == "submit":
            if ok:
                self.stats.accept(now_s, pending.required)
            else:
                why = reply.error.kind if reply.error is not None else "other"
                self.stats.reject(why)
                log.info("pool %s rejected a share: %s", self.endpoint.address,
                         reply.error.text if reply.error is not None else reply.result)
            return []
        if kind == "configure":
            return self._configured(reply)
        if kind == "subscribe":
            return self._subscribed(reply)
        if kind == "authorize":
            return self._authorized(ok, reply, now_s)
        return []  # suggest_difficulty, extranonce.subscribe: nothing to do either way

    def _configured(self, reply: msg.Reply) -> list[Event]:
        self.configure_answered = True
        granted = msg.parse_configure_result(reply.result) if reply.error is None else None
        if granted is None:
            log.warning("pool %s grants no version rolling: the chips roll no version bits",
                        self.endpoint.address)
            self.rolling, self.version_mask = False, 0
        else:
            self.rolling, self.version_mask = True, granted & ROLLABLE_MASK
            log.info("pool %s grants version mask %08x (chips roll %08x)",
                     self.endpoint.address, granted, self.version_mask)
        self.stats.version_mask = self.version_mask if self.rolling else None
        return [WorkChanged(urgent=True)] if self.has_work else []

    def _subscribed(self, reply: msg.Reply) -> list[Event]:
        if reply.error is not None:
            return [Failed(f"subscription refused: {reply.error.text}")]
        try:
            self.extranonce1, self.extranonce2_size = msg.parse_subscribe_result(reply.result)
        except RejectedLine as exc:
            self._bad(exc.reason, str(exc))
            return [Failed(f"subscription result unusable: {exc}")]
        self.subscribed = True
        return [WorkChanged(urgent=True)] if self.has_work else []

    def _authorized(self, ok: bool, reply: msg.Reply, now_s: float) -> list[Event]:
        if not ok:
            self.stats.count("auth_failures")
            text = reply.error.text if reply.error is not None else str(reply.result)
            return [Failed(f"worker {self.endpoint.user!r} not authorized: {text}")]
        self.authorized = True
        if self.endpoint.suggest_difficulty is not None:
            value = self.endpoint.suggest_difficulty
            self._send("mining.suggest_difficulty",
                       [int(value) if float(value).is_integer() else value], "suggest", now_s)
        if self.endpoint.extranonce_subscribe:
            self._send("mining.extranonce.subscribe", [], "extranonce", now_s)
        return [WorkChanged(urgent=True)] if self.has_work else []
