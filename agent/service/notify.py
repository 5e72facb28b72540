"""The service manager's notify protocol (systemd's `sd_notify`), spoken on the datagram socket
named by $NOTIFY_SOCKET, with no systemd library: `Type=notify` readiness, status text, and
the watchdog.

`Notifier` sends the messages; `Heartbeat` is the control loop's side (a `Runtime.on_tick` hook):
READY=1 once the chain is up (the governor left `starting`) and the grid link is up, then
WATCHDOG=1 every half $WATCHDOG_USEC. Only the control thread calls it, so a hung control thread
stops the pings and the supervisor restarts the agent (the restart takes the running chain over
at the ramp limit). Without $NOTIFY_SOCKET everything here is a no-op.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Mapping
from typing import Any

log = logging.getLogger("gridminer.service")

#: a STATUS= text is cut to this many characters (one line of `systemctl status`)
STATUS_MAX = 200


def socket_address(value: str) -> str | bytes | None:
    """The AF_UNIX address of a $NOTIFY_SOCKET value: a path, or "@name" for the abstract
    namespace; None for what a datagram to a local socket cannot reach (e.g. vsock:)."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None


class Notifier:
    """Messages to the service manager; sending never raises (a failure is logged once)."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        raw = env.get("NOTIFY_SOCKET", "")
        self.name = raw
        self.address = socket_address(raw) if raw else None
        if raw and self.address is None:
            log.warning("NOTIFY_SOCKET=%r is not a local socket: the service manager is not "
                        "told of readiness or the watchdog", raw)
        self.watchdog_s = _watchdog_s(env)
        self._sock: socket.socket | None = None
        self._failed = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, **fields: Any) -> bool:
        """One datagram of KEY=value lines (send(READY=1, STATUS="...")); True when sent."""
        if self.address is None:
            return False
        text = "".join(f"{key}={_one_line(value)}\n" for key, value in fields.items())
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(text.encode(), self.address)
        except OSError as exc:
            if not self._failed:
                log.warning("the service manager's socket refused a message (%s); the "
                            "watchdog may restart the agent", exc)
            self._failed = True
            return False
        self._failed = False
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _watchdog_s(env: Mapping[str, str]) -> float | None:
    """$WATCHDOG_USEC in seconds when the watchdog is meant for this process, else None."""
    pid = env.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 1e6 if usec > 0 else None


def _one_line(value: Any) -> str:
    return " ".join(str(value).split())[:STATUS_MAX]


class Heartbeat:
    """The control loop's side of the protocol. `tick(now_s)` after every control tick: READY=1
    (with a STATUS) the first time `awaiting()` returns None, WATCHDOG=1 every half watchdog
    period; `status(line)` passes the agent's status line on; `stopping()` at shutdown."""

    def __init__(self, notifier: Notifier, awaiting: Callable[[], str | None],
                 ready_status: str = "running") -> None:
        self.notifier = notifier
        self.awaiting = awaiting
        self.ready_status = ready_status
        self.ready = False
        self._next_ping_s: float | None = None
        self._waiting_for: str | None = None

    def tick(self, now_s: float) -> None:
        if not self.ready:
            waiting = self.awaiting()
            if waiting is None:
                self.ready = True
                self.notifier.send(READY=1, STATUS=self.ready_status)
                log.info("service ready: %s", self.ready_status)
            elif waiting != self._waiting_for:
                self._waiting_for = waiting
                self.notifier.send(STATUS=f"starting: waiting for {waiting}")
        period_s = self.notifier.watchdog_s
        if period_s is not None and (self._next_ping_s is None or now_s >= self._next_ping_s):
            self.notifier.send(WATCHDOG=1)
            self._next_ping_s = now_s + period_s / 2

    def status(self, line: str) -> None:
        if self.ready:
            self.notifier.send(STATUS=line)

    def stopping(self) -> None:
        self.notifier.send(STOPPING=1, STATUS="stopping: idling the chain")


def awaiting(runtime: Any) -> str | None:
    """What the agent (an `agent.control.runtime.Runtime`) still waits for before it is ready,
    or None: the chain up (the governor out of its `starting` mode: hashing with a chip
    temperature known, or held in standby or a trip on purpose) and, when the agent has one, the
    grid link up."""
    missing = []
    if getattr(runtime.actuation, "mode", "starting") == "starting":
        missing.append("the chain to start hashing")
    link = getattr(runtime.grid, "link", None)
    if link is not None and link.state != "up":
        missing.append(f"the grid link ({link.state})")
    return " and ".join(missing) or None


def attach(runtime: Any, ready_status: str, environ: Mapping[str, str] | None = None
           ) -> Heartbeat | None:
    """A Heartbeat on `runtime`'s control loop (a tick hook; its status lines go to the service
    manager too) when a service manager started the agent ($NOTIFY_SOCKET), else None."""
    notifier = Notifier(environ)
    if not notifier.enabled:
        return None
    beat = Heartbeat(notifier, lambda: awaiting(runtime), ready_status)
    runtime.on_tick.append(beat.tick)
    runtime.on_stop.append(notifier.close)
    status_out = runtime.status_out

    def status_both(line: str) -> None:
        status_out(line)
        beat.status(line)

    runtime.status_out = status_both
    log.info("service manager at %s: readiness%s", notifier.name,
             f" and a {notifier.watchdog_s:g} s watchdog" if notifier.watchdog_s else "")
    return beat
