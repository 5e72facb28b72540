"""The pool client's network thread: Stratum V1 connections over TCP or TLS, failover across the
ordered pool list, and the hand-off of work to the control thread.

Why asyncio in one thread (and not selectors): at times two connections are open at once (the
active pool and a preferred one being retried), each with a TLS handshake, a connect timeout, a
silence deadline and a reconnect backoff. asyncio gives non-blocking TLS, timeouts and timers
ready-made; with selectors the non-blocking TLS handshake (SSLWantRead/SSLWantWrite) and every
timer would be hand-written. All of it stays on this one thread: the protocol itself is the
I/O-free `StratumSession`, the failover rule the I/O-free `Failover`.

The control thread never touches a socket and never waits for this thread: new work reaches it
through `on_state` (a callback that stores a `PoolState` under a lock and wakes the control
thread), and shares leave it through `submit`, which only schedules a call on this thread's loop
(`call_soon_threadsafe`). A share is sent on the very connection its work came from, or not at
all (counted stale): work of a pool that is gone is never submitted to another.

Keepalive: TCP keepalive on every socket (idle 60 s, 3 probes 10 s apart) finds a dead peer; a
pool that says nothing for `silence_timeout_s` (pools send a job every 30 to 60 s) is dropped
and reconnected, so a silently stuck pool leads to failover too.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from agent.errors import ConfigError
from agent.pool.endpoint import PoolEndpoint, redirect_allowed
from agent.pool.failover import Failover
from agent.pool.session import (
    Failed,
    JobTemplate,
    Redirect,
    ShareRequest,
    StratumSession,
    WorkChanged,
)
from agent.pool.stats import PoolStats

log = logging.getLogger("gridminer.pool")

READ_BYTES = 65536
#: a pool that does not read what we write (its buffer here grows past this) is dropped
MAX_WRITE_BUFFER = 1 << 20
KEEPALIVE = (("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3))
#: Linux: acknowledge what was read at once. A pool that leaves Nagle on holds its next line
#: (a new block's notify) until our ACK of its last one, which Linux delays up to 40 ms.
QUICKACK = getattr(socket, "TCP_QUICKACK", None)


@dataclass(frozen=True)
class PoolTiming:
    """How the client connects, fails over, comes back and gives up on a silent pool."""

    failover_after_s: float = 3.0  # a pool without work this long: the next one is tried
    retry_min_s: float = 1.0  # reconnect backoff: doubles from this ...
    retry_max_s: float = 30.0  # ... up to this, each delay jittered to 50-100 %
    connect_timeout_s: float = 10.0  # TCP + TLS; the handshake gets three times this
    silence_timeout_s: float = 120.0  # nothing from the pool this long: reconnect
    status_period_s: float = 60.0  # a status line per pool this often (0: never)


@dataclass(frozen=True)
class PoolState:
    """What the control thread mines: the active pool's latest job, or nothing."""

    active: int | None  # index of the pool with work (None: no pool has work)
    url: str | None
    template: JobTemplate | None
    difficulty: float | None  # the active pool's current difficulty
    urgent: bool  # the chips' earlier work is stale (new block, other pool, new mask)


class _Link:
    """One pool of the list: its configuration, figures and (while connected) its session."""

    def __init__(self, index: int, endpoint: PoolEndpoint) -> None:
        self.index = index
        self.endpoint = endpoint
        self.stats = PoolStats(endpoint.url)
        self.task: asyncio.Task[None] | None = None
        self.session: StratumSession | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.redirect: PoolEndpoint | None = None  # the next connection goes here once
        self.redirect_wait_s: float | None = None
        self.close_reason: str | None = None
        self.released = False
        self.skip_configure = False  # the pool hung up on mining.configure before


def tls_context(endpoint: PoolEndpoint) -> ssl.SSLContext | None:
    """The TLS context of a stratum+ssl endpoint (None for plain TCP); ConfigError when its
    CA file cannot be loaded."""
    if not endpoint.tls:
        return None
    try:
        return ssl.create_default_context(cafile=endpoint.ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"pool {endpoint.url}: ca_file {endpoint.ca_file}: {exc}") from None


def _quickack(writer: asyncio.StreamWriter) -> None:
    """Send the ACK of what was just read now, not delayed (see QUICKACK; not permanent, so
    after every read)."""
    sock = writer.get_extra_info("socket")
    if QUICKACK is not None and sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, QUICKACK, 1)


def _tune(writer: asyncio.StreamWriter) -> None:
    """TCP_NODELAY (a share goes out at once) and TCP keepalive."""
    sock = writer.get_extra_info("socket")
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in KEEPALIVE:
            if hasattr(socket, name):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


class PoolClient:
    """Connections to an ordered list of pools on a thread of its own. `start()`, `stop()`;
    `submit(share)` from any thread; `on_state(PoolState)` is called on the client's thread
    whenever the work to mine changes (it must not block)."""

    def __init__(self, endpoints: Sequence[PoolEndpoint], on_state: Callable[[PoolState], None],
                 timing: PoolTiming | None = None, agent: str = "gridminer",
                 rng: random.Random | None = None) -> None:
        if not endpoints:
            raise ValueError("at least one pool")
        self.timing = timing or PoolTiming()
        self.agent = agent
        self._on_state = on_state
        self._rng = rng or random.Random()
        self._links = [_Link(i, e) for i, e in enumerate(endpoints)]
        self._tls = [tls_context(e) for e in endpoints]
        self._serials = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stopping = False
        self._wake: asyncio.Event | None = None
        self._failover: Failover | None = None
        self._last: PoolState | None = None
        self.lost_submits = 0  # shares handed over after the client stopped

    # -- any thread -----------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("pool client already started")
        self._thread = threading.Thread(target=self._thread_main, name="pool-client",
                                        daemon=True)
        self._thread.start()
        self._ready.wait(5.0)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Close every connection and end the thread."""
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None and thread.is_alive():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self._request_stop)
            thread.join(timeout_s)

    def submit(self, share: ShareRequest) -> None:
        """Hand a share to the network thread (never blocks)."""
        loop = self._loop
        try:
            if loop is None or self._stopping:
                raise RuntimeError("not running")
            loop.call_soon_threadsafe(self._submit, share)
        except RuntimeError:
            self.lost_submits += 1

    @property
    def endpoints(self) -> list[PoolEndpoint]:
        return [link.endpoint for link in self._links]

    def snapshot(self) -> list[dict[str, Any]]:
        """Each pool's figures (PoolStats.snapshot), with `active` and `connected`."""
        now = self._now()
        active = self._last.active if self._last is not None else None
        out = []
        for link in self._links:
            figures = link.stats.snapshot(now)
            figures["active"] = link.index == active
            figures["connected"] = link.session is not None
            out.append(figures)
        return out

    @staticmethod
    def _now() -> float:
        return time.monotonic()

    # -- the client's thread ----------------------------------------------------------------------

    def _thread_main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        except Exception:
            log.exception("pool client stopped on an error")
        finally:
            self._ready.set()
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def _request_stop(self) -> None:
        self._stopping = True
        if self._wake is not None:
            self._wake.set()

    async def _main(self) -> None:
        self._wake = asyncio.Event()
        failover = self._failover = Failover(
            len(self._links), self._now(), self.timing.failover_after_s,
            self.timing.retry_min_s, self.timing.retry_max_s, self._rng)
        self._ready.set()
        next_status = self._now() + self.timing.status_period_s
        try:
            while not self._stopping:
                now = self._now()
                for i in failover.to_release(now):
                    self._close(self._links[i], "a preferred pool has work again", released=True)
                for i in failover.to_start(now):
                    failover.started(i)
                    link = self._links[i]
                    link.task = asyncio.get_running_loop().create_task(self._run(link))
                self._watch(now)
                if self.timing.status_period_s > 0 and now >= next_status:
                    next_status = now + self.timing.status_period_s
                    self._log_status(now)
                timeout = max(0.01, min(failover.next_change_s(now), now + 1.0) - now)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
                self._wake.clear()
        finally:
            tasks = [link.task for link in self._links if link.task is not None]
            for link in self._links:
                self._close(link, "stopping")
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
                await asyncio.sleep(0.01)  # the transports' connection_lost: sockets close

    def _watch(self, now: float) -> None:
        """Deadlines of the open sessions: handshake, silence; late submit replies."""
        for link in self._links:
            session = link.session
            if session is None:
                continue
            session.expire(now)
            if not session.ready and now - session.started_s > 3 * self.timing.connect_timeout_s:
                self._close(link, "no subscription and authorization in time")
            elif now - session.last_rx_s > self.timing.silence_timeout_s:
                self._close(link, f"nothing from the pool for {self.timing.silence_timeout_s:g} s")
            elif link.writer is not None and \
                    link.writer.transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
                self._close(link, "the pool does not read")

    def _close(self, link: _Link, reason: str, released: bool = False) -> None:
        if link.task is not None and not link.task.done():
            link.close_reason = link.close_reason or reason
            link.released = link.released or released
            link.task.cancel()

    async def _connect(self, endpoint: PoolEndpoint, index: int) -> tuple[
            asyncio.StreamReader, asyncio.StreamWriter]:
        tls = self._tls[index]
        async with asyncio.timeout(self.timing.connect_timeout_s):
            return await asyncio.open_connection(
                endpoint.host, endpoint.port, ssl=tls,
                server_hostname=endpoint.host if tls is not None else None)

    async def _run(self, link: _Link) -> None:
        """One connection to one pool, from connect to close."""
        assert self._failover is not None
        endpoint = link.redirect or link.endpoint
        link.redirect, link.close_reason, link.released = None, None, False
        link.redirect_wait_s = None
        stats = link.stats
        reason = "closed"
        session: StratumSession | None = None
        try:
            try:
                reader, writer = await self._connect(endpoint, link.index)
            except (OSError, TimeoutError) as exc:
                stats.count("connect_failures")
                reason = f"cannot connect: {exc or type(exc).__name__}"
                return
            _tune(writer)
            stats.count("connects")
            now = self._now()
            session = StratumSession(endpoint, link.index, next(self._serials), stats, now,
                                     self.agent, configure=not link.skip_configure)
            link.session, link.writer = session, writer
            log.info("pool #%d %s: connected to %s", link.index, link.endpoint.url,
                     endpoint.address)
            session.start()
            writer.write(session.output())
            reason = await self._serve(link, session, reader, writer)
        except asyncio.CancelledError:
            reason = link.close_reason or "stopped"
        except OSError as exc:
            reason = f"connection failed: {exc or type(exc).__name__}"
        finally:
            self._ended(link, session, reason)

    async def _serve(self, link: _Link, session: StratumSession, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> str:
        while True:
            data = await reader.read(READ_BYTES)
            _quickack(writer)
            if not data:
                if session.sent_configure and not session.configure_answered \
                        and not session.subscribed:
                    link.skip_configure = True  # old pools hang up on an unknown method
                return "closed by the pool"
            events = session.feed(data, self._now())
            out = session.output()
            if out:
                writer.write(out)
            for event in events:
                if isinstance(event, Failed):
                    return event.reason
                if isinstance(event, Redirect):
                    why = self._redirect(link, event)
                    if why is not None:
                        return why
                elif isinstance(event, WorkChanged):
                    self._work_changed(link, session, event.urgent)

    def _redirect(self, link: _Link, event: Redirect) -> str | None:
        current = link.endpoint.host
        if not redirect_allowed(current, event.host):
            link.stats.reject_line("client.reconnect to another domain")
            log.warning("pool #%d: ignoring client.reconnect to %s (not %s's domain)",
                        link.index, event.host, current)
            return None
        link.stats.count("redirects")
        link.redirect = link.endpoint.redirected(event.host, event.port)
        link.redirect_wait_s = event.wait_s
        return f"the pool asked for a reconnect to {link.redirect.address} in {event.wait_s:g} s"

    def _work_changed(self, link: _Link, session: StratumSession, urgent: bool) -> None:
        assert self._failover is not None
        if session.has_work and not self._failover.links[link.index].healthy:
            self._failover.has_work(link.index)
        self._publish(urgent)

    def _ended(self, link: _Link, session: StratumSession | None, reason: str) -> None:
        assert self._failover is not None
        now = self._now()
        if session is not None:
            session.close()
            link.stats.count("disconnects")
        writer = link.writer
        if writer is not None:
            with contextlib.suppress(Exception):
                if self._stopping:  # no time for a TLS close_notify exchange: the loop ends
                    writer.transport.abort()
                else:
                    writer.close()
        link.session, link.writer, link.task = None, None, None
        link.stats.last_error = reason
        if self._stopping:
            pass
        elif link.released:
            self._failover.released(link.index, now)
        elif link.redirect_wait_s is not None:
            self._failover.redirected(link.index, now, link.redirect_wait_s)
        else:
            retry_s = self._failover.lost(link.index, now) - now
            failures = self._failover.links[link.index].failures
            # the first failure in a row is news; then one line in ten (the rest at DEBUG)
            level = logging.WARNING if failures % 10 == 1 else logging.DEBUG
            log.log(level, "pool #%d %s: %s; trying again in %.1f s%s", link.index,
                    link.endpoint.url, reason, retry_s,
                    f" ({failures} failures in a row)" if failures > 1 else "")
            link.redirect = None
        if not self._stopping:
            if link.released or link.redirect_wait_s is not None:
                log.info("pool #%d %s: disconnected (%s)", link.index, link.endpoint.url,
                         reason)
            self._publish(False)
        if self._wake is not None:
            self._wake.set()

    def _publish(self, urgent: bool) -> None:
        """Tell the control thread what to mine, when it changed."""
        assert self._failover is not None
        active = self._failover.active
        link = self._links[active] if active is not None else None
        session = link.session if link is not None else None
        template = session.template() if session is not None else None
        state = PoolState(active, link.endpoint.url if link is not None else None, template,
                          session.difficulty if session is not None else None, urgent)
        last = self._last
        if last is not None and not urgent and (last.active, last.template, last.difficulty) \
                == (state.active, state.template, state.difficulty):
            return
        if last is None or last.active != active:
            state = PoolState(active, state.url, template, state.difficulty, True)
            if link is not None:
                log.info("pool #%d %s: mining its work", active, link.endpoint.url)
            elif last is not None:
                log.warning("no pool has work: the chips hash local work until one has")
        self._last = state
        try:
            self._on_state(state)
        except Exception:
            log.exception("handing pool work over failed")

    def _submit(self, share: ShareRequest) -> None:
        if not 0 <= share.pool < len(self._links):
            return
        link = self._links[share.pool]
        session = link.session
        if session is None or session.serial != share.session:
            link.stats.drop("stale")  # its connection is gone: never sent anywhere else
            return
        if session.submit(share, self._now()) is None and link.writer is not None:
            link.writer.write(session.output())

    def _log_status(self, now: float) -> None:
        active = self._last.active if self._last is not None else None
        for link in self._links:
            s = link.stats.snapshot(now)
            state = "active" if link.index == active else (
                "connected" if link.session is not None else "down")
            log.info("pool #%d %s: %s, difficulty %s, accepted %d, rejected %d, stale %d, "
                     "%.4g GH/s credited", link.index, link.endpoint.url, state,
                     "-" if s["difficulty"] is None else f"{s['difficulty']:g}", s["accepted"],
                     s["rejected_total"], s["stale"], s["hashrate_ghs"])
