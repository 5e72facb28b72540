"""One thread for the whole fleet: a selector over every device's MQTT socket and a timer heap
for their control ticks.

Per device, the loop does what the agent's threads do for one: paho's network loop (`loop_read`
when the socket is readable, `loop_write` while paho has bytes left, `loop_misc` once a tick for
the keepalive, `connect_now` when the link's reconnect is due), the control tick at the device's
own phase, and the grid session's pass at once when a command came in. Connections are admitted
a few at a time (`max_connecting` waiting for their CONNACK), so a fleet coming up does not
overrun the broker's listen queue. Other threads reach the loop through `call(fn)`, which runs
`fn` on the loop thread and returns its result.

Faults the loop owns: a device `cut` from the network (its TCP connection dropped without a
DISCONNECT, and no reconnect until it is restored) and a `dead` device (no tick, no link).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import queue
import resource
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from functools import partial
from typing import Any, TypeVar

from hil.fleet.device import VirtualDevice

log = logging.getLogger(__name__)

T = TypeVar("T")
READ, WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
FDS_PER_DEVICE = 2  # its socket, and one to spare for a reconnect in flight
FDS_RESERVE = 256  # files, the state folder, the interpreter's own
MAX_WAIT_S = 0.5
LATE_WINDOW = 10_000  # timer runs whose lateness `late_s` keeps
ACK_ROUNDS = 8  # reads of a burst acked before the ticks and the rest of the passes


def raise_fd_limit(needed: int) -> int:
    """Raise this process's open-file limit (soft, up to the hard limit) to at least `needed`;
    returns the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        new = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        soft = new
    return int(soft)


class FleetLoop:
    """See the module docstring."""

    def __init__(self, max_connecting: int = 32) -> None:
        self.max_connecting = max_connecting
        self.devices: dict[str, VirtualDevice] = {}  # by id: the live ones and the dead
        self.cut: set[str] = set()  # devices whose network is cut
        self.dead: set[str] = set()  # devices killed (no tick, no link)
        self.counters = {"loop_errors": 0, "connects": 0}
        self._sel = selectors.DefaultSelector()
        self._timers: list[tuple[float, int, Callable[[float], None]]] = []
        self._seq = itertools.count()
        self._calls: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = \
            queue.SimpleQueue()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel.register(self._wake_r, READ, None)
        self._inbound: list[VirtualDevice] = []  # links that queued a command
        self._connecting: set[VirtualDevice] = set()  # waiting for their CONNACK
        self._connect_timers: set[VirtualDevice] = set()  # a connect attempt is scheduled
        self._waiting: dict[VirtualDevice, None] = {}  # due, waiting for a slot (in order)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._by_sock: dict[int, VirtualDevice] = {}
        self.late_s: deque[float] = deque(maxlen=LATE_WINDOW)  # how late timers ran (real time)

    # ---- from any thread ------------------------------------------------------------------
    def call(self, fn: Callable[[], T], timeout_s: float | None = 10.0) -> T:
        """Run `fn` on the loop thread and return its result (or raise its exception)."""
        if self._thread is None or threading.current_thread() is self._thread:
            return fn()
        future: Future[T] = Future()
        self._calls.put((fn, future))
        self._wake()
        return future.result(timeout_s)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="fleet-loop", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop every live device cleanly (offline status, DISCONNECT) and end the loop."""
        if self._thread is None:
            return
        if self._thread.is_alive():
            try:
                self.call(self._stop_devices, timeout_s)
            except Exception:  # the loop is gone already
                log.exception("stopping the devices failed")
        self._stop.set()
        self._wake()
        self._thread.join(timeout_s)
        self._thread = None

    def close(self) -> None:
        self._sel.close()
        self._wake_r.close()
        self._wake_w.close()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass

    # ---- on the loop thread ---------------------------------------------------------------
    def add(self, dev: VirtualDevice, first_tick_s: float) -> None:
        """Take a device in: its link starts connecting (admitted in turn), its first control
        tick comes at `first_tick_s` (monotonic)."""
        self.devices[dev.device] = dev
        client = dev.link.client
        client.on_socket_close = lambda c, u, sock: self._unwatch(sock)
        dev.link.on_inbound = lambda: self._inbound.append(dev)
        dev.link.start()
        dev.tick_due_s = first_tick_s
        self._schedule(dev, first_tick_s)
        self._schedule_connect(dev)

    def remove(self, dev: VirtualDevice) -> None:
        """Forget a device whose link has been stopped or aborted."""
        self._connecting.discard(dev)
        self._connect_timers.discard(dev)
        self._waiting.pop(dev, None)
        if self.devices.get(dev.device) is dev:
            del self.devices[dev.device]

    def at(self, due_s: float, fn: Callable[[float], None]) -> None:
        heapq.heappush(self._timers, (due_s, next(self._seq), fn))

    def run(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            wait = MAX_WAIT_S if not self._timers else min(MAX_WAIT_S,
                                                           max(0.0, self._timers[0][0] - now))
            self._poll(wait)
            self._serve_inbound()  # before the timers: acks do not wait behind ticks
            self._run_calls()
            self._run_timers()
            self._admit_waiting()

    def _poll(self, wait_s: float) -> None:
        """Wait up to `wait_s` for the sockets, then serve paho's reads and writes."""
        for key, mask in self._sel.select(wait_s):
            dev = key.data
            if dev is None:
                self._drain_wake()
                continue
            self._io(dev, mask)

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def _run_calls(self) -> None:
        while True:
            try:
                fn, future = self._calls.get_nowait()
            except queue.Empty:
                return
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)

    def _run_timers(self) -> None:
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            due, _, fn = heapq.heappop(self._timers)
            t = time.monotonic()
            self.late_s.append(t - due)
            try:
                fn(t)
            except Exception:
                self.counters["loop_errors"] += 1
                log.exception("fleet timer failed")

    def _serve_inbound(self) -> None:
        """The devices a command came to (a site-wide command reaches them all within a few
        reads), in three rounds: each one's commands checked, persisted, applied and acked, and
        again for the commands read meanwhile, until no more came (at most `ACK_ROUNDS`); then
        the control ticks that act on the new targets; then the rest of each grid session's
        pass (telemetry due, the full ack's write, a tick if that started something). So the
        last ack of a burst waits only for the others' command work, not for their telemetry,
        ticks or second write."""
        served: dict[VirtualDevice, None] = {}
        for _ in range(ACK_ROUNDS):
            if not self._inbound:
                break
            pending, self._inbound = self._inbound, []
            for dev in dict.fromkeys(pending):
                if dev.device not in self.dead:
                    self._guarded(dev, dev.serve_commands)
                    self._sync(dev)
                    served[dev] = None
            self._poll(0.0)  # the rest of the burst, if it came in meanwhile
        for dev in served:
            if dev.tick_requested:
                self._guarded(dev, partial(self._commanded_tick, dev))
        for dev in served:
            self._guarded(dev, dev.service)
            if dev.tick_requested:  # the pass started a scheduled command
                self._guarded(dev, partial(self._commanded_tick, dev))
            self._sync(dev)

    def _commanded_tick(self, dev: VirtualDevice, now: float) -> None:
        """A tick out of the device's phase, on a new target; if its clock waits for the voltage,
        the tick that brings it comes when the voltage has settled, as in the agent's runtime,
        not at the next phase."""
        due = dev.tick(now)
        if dev.tick_due_s is None or due < dev.tick_due_s:
            dev.tick_due_s = due
            if dev.timer_s is None or due < dev.timer_s:
                self._schedule(dev, due)

    def _guarded(self, dev: VirtualDevice, step: Callable[[float], object]) -> None:
        """`step(now)` for one device; its failure is counted and logged, not the loop's."""
        try:
            step(time.monotonic())
        except Exception:
            self.counters["loop_errors"] += 1
            log.exception("device %s failed", dev.device)

    # ---- sockets --------------------------------------------------------------------------
    def _io(self, dev: VirtualDevice, mask: int) -> None:
        client = dev.link.client
        try:
            if mask & WRITE:
                client.loop_write()
            if mask & READ and client.socket() is not None:
                client.loop_read()
                sock = client.socket()
                while sock is not None and getattr(sock, "pending", lambda: 0)():
                    client.loop_read()  # TLS: records decrypted but not yet read
                    sock = client.socket()
        except Exception:
            self.counters["loop_errors"] += 1
            log.exception("device %s: network loop failed", dev.device)
        self._sync(dev)

    def _sync(self, dev: VirtualDevice) -> None:
        """The selector's interest in the device's socket as paho needs it now; a reconnect
        scheduled if the link wants one."""
        client = dev.link.client
        sock = client.socket()
        if sock is not None:
            events = READ | (WRITE if client.want_write() else 0)
            fd = sock.fileno()
            if fd not in self._by_sock:
                self._sel.register(sock, events, dev)
                self._by_sock[fd] = dev
            elif self._sel.get_key(sock).events != events:
                self._sel.modify(sock, events, dev)
        if dev.link.connected:
            self._connecting.discard(dev)
        if dev.link.reconnect_due_s is not None and dev not in self._connect_timers:
            self._schedule_connect(dev)

    def _unwatch(self, sock: Any) -> None:
        """paho is about to close `sock`: the selector forgets it first."""
        try:
            fd = sock.fileno()
        except OSError:
            return
        dev = self._by_sock.pop(fd, None)
        if dev is not None:
            try:
                self._sel.unregister(sock)
            except (KeyError, ValueError):
                pass
            self._connecting.discard(dev)

    # ---- connections ----------------------------------------------------------------------
    def _schedule_connect(self, dev: VirtualDevice) -> None:
        due = dev.link.reconnect_due_s
        if due is None:
            return
        self._connect_timers.add(dev)
        self.at(due, lambda now: self._connect(dev, now))

    def _connect(self, dev: VirtualDevice, now: float) -> None:
        self._connect_timers.discard(dev)
        link = dev.link
        if dev.device in self.dead or link.reconnect_due_s is None:
            return
        if link.reconnect_due_s > now + 1e-3:  # moved later meanwhile
            self._schedule_connect(dev)
            return
        if dev.device in self.cut:  # no network: try again later
            link.reconnect_due_s = now + 1.0
            self._schedule_connect(dev)
            return
        if len(self._connecting) >= self.max_connecting:
            self._waiting[dev] = None  # admitted when a connection in flight is answered
            return
        self._connect_now(dev)

    def _connect_now(self, dev: VirtualDevice) -> None:
        self.counters["connects"] += 1
        if dev.link.connect_now():
            self._connecting.add(dev)
        self._sync(dev)

    def _admit_waiting(self) -> None:
        """Connect the devices waiting for a slot, oldest first, while there are slots."""
        while self._waiting and len(self._connecting) < self.max_connecting:
            dev = next(iter(self._waiting))
            del self._waiting[dev]
            if dev.device not in self.dead and dev.device not in self.cut \
                    and dev.link.reconnect_due_s is not None:
                self._connect_now(dev)

    # ---- devices --------------------------------------------------------------------------
    def _device_timer(self, dev: VirtualDevice, now: float) -> None:
        if dev.device in self.dead or self.devices.get(dev.device) is not dev:
            return
        due = dev.tick_due_s
        try:
            if due is None or now >= due - 1e-3:
                dev.tick_due_s = dev.tick(now)
            service_in = dev.service(now)
            if dev.tick_requested:
                dev.tick(now)
            if dev.link.client.socket() is not None:
                dev.link.client.loop_misc()
        except Exception:
            self.counters["loop_errors"] += 1
            log.exception("device %s failed", dev.device)
            service_in = dev.period_s
        self._sync(dev)
        tick_due = dev.tick_due_s if dev.tick_due_s is not None else now + dev.period_s
        self._schedule(dev, min(tick_due, now + max(service_in, 0.05)))

    def _schedule(self, dev: VirtualDevice, due_s: float) -> None:
        """The device's one timer, at `due_s`: a timer scheduled for it before is dropped."""
        dev.timer_s = due_s
        self.at(due_s, lambda now: self._device_timer(dev, now) if dev.timer_s == due_s else None)

    def _stop_devices(self) -> None:
        for dev in list(self.devices.values()):
            if dev.device not in self.dead:
                try:
                    dev.link.stop()
                except Exception:
                    log.exception("device %s: stopping its link failed", dev.device)
