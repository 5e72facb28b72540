"""A baseline dispatcher that behaves like today's fleet tools (site-dispatch notes §1), to measure
the site controller against on the same fleet and signal.

What it does, as those tools do:
* open loop: the site's power is estimated from ratings (an awake machine draws its `max_w`, a
  sleeping one its `min_w`); no meter, no feedback on the measured site power;
* on/off only: a machine is put to sleep (`curtail`) or woken (`resume`), never given a setpoint;
* merit order: the least efficient machines (highest J/TH) sleep first, the most efficient wake
  first; the awake set is the most efficient prefix whose estimate stays within the target (a
  selection stops at the first machine that does not fit, as proto-fleet's FIXED_KW does);
* batches: ceil(1 % of the fleet) commands per batch, clamped to [10, 100] (proto-fleet's
  default), then a confirmation wait (5 s) before the next batch; a machine whose telemetry does
  not show the new mode by then is retried in a later batch (3 retries, then left out);
* commands that outlast an event (4 h, proto-fleet's maximum event) and are re-planned against
  the latest target at every batch.

It speaks the real contract as an operator would: one signed command per device (the
operator's signer and MQTT client of `agent.site`), the fleet learned from the devices'
retained status (caps, online) and telemetry (mode, measured J/TH), read with the site's
`Roster`.

`BaselineCore` is the logic (no MQTT, no threads, time passed in); `BaselineDispatcher` runs it
on a broker.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from agent.errors import GridLinkError
from agent.grid.contract import PREFIX
from agent.grid.telemetry import decode_map
from agent.site.client import Operator
from agent.site.roster import DeviceRecord, Roster

log = logging.getLogger(__name__)

SLEEP_OP = "curtail"  # a fleet tool's "sleep": the deepest load ready to resume
WAKE_OP = "resume"  # back to the machine's own default
ASLEEP_MODES = ("curtailed", "standby")
AWAKE_MODES = ("mining", "starting")


@dataclass(frozen=True)
class BaselinePolicy:
    """A fleet tool's settings (proto-fleet's defaults; `confirm_s` smaller in quick tests)."""

    batch_fraction: float = 0.01
    batch_min: int = 10
    batch_max: int = 100
    confirm_s: float = 5.0  # wait after each batch before the next; telemetry confirms by then
    max_retries: int = 3
    validity_s: float = 14_400.0
    stale_s: float = 10.0  # a device silent this long is left out (dead monitor)

    def batch_size(self, fleet_size: int) -> int:
        """Commands per batch for a fleet of `fleet_size` machines."""
        size = math.ceil(self.batch_fraction * fleet_size)
        return max(1, min(self.batch_max, max(self.batch_min, size)))


@dataclass(frozen=True)
class Machine:
    """What the dispatcher knows of one machine: its draw asleep and awake, its efficiency."""

    device: str
    min_w: float
    max_w: float
    j_per_th: float | None = None  # None: unknown (slept last, woken first)


def shed_order(machines: Iterable[Machine]) -> list[Machine]:
    """Least efficient first (highest J/TH), unknown efficiency last, ties by device id."""
    return sorted(machines, key=lambda m: (m.j_per_th is None, -(m.j_per_th or 0.0), m.device))


def awake_plan(machines: Iterable[Machine], target_w: float) -> set[str]:
    """The devices to keep awake for `target_w`: the most efficient first, while the estimate
    (awake at max_w, asleep at min_w) stays within the target."""
    ranked = list(reversed(shed_order(machines)))
    estimate_w = sum(m.min_w for m in ranked)
    awake: set[str] = set()
    for m in ranked:
        extra_w = m.max_w - m.min_w
        if estimate_w + extra_w > target_w:
            break
        estimate_w += extra_w
        awake.add(m.device)
    return awake


@dataclass(frozen=True)
class Batch:
    sleep: tuple[str, ...] = ()
    wake: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.sleep or self.wake)


def next_batch(machines: Iterable[Machine], awake: set[str], target_w: float, size: int,
               busy: Iterable[str] = ()) -> Batch:
    """The next batch toward `target_w` from the `awake` set: sleeps first (least efficient
    first), then wakes (most efficient first), at most `size` commands; `busy` devices (a
    command in flight) are left alone."""
    ms = list(machines)
    want = awake_plan(ms, target_w)
    skip = set(busy)
    order = shed_order(ms)
    sleep = [m.device for m in order
             if m.device in awake and m.device not in want and m.device not in skip]
    wake = [m.device for m in reversed(order)
            if m.device not in awake and m.device in want and m.device not in skip]
    sleep = sleep[:size]
    return Batch(tuple(sleep), tuple(wake[:size - len(sleep)]))


@dataclass
class BatchRecord:
    """One batch as sent: when, toward which target, what, and how the previous one ended."""

    t_s: float
    target_w: float
    sleep: tuple[str, ...]
    wake: tuple[str, ...]
    confirmed: int  # of the previous batch, confirmed by telemetry at this batch
    unconfirmed: int


@dataclass
class _Dispatch:
    """The dispatcher's own memory of one device: measured efficiency, the op in flight."""

    j_per_th_sum: float = 0.0
    j_per_th_n: int = 0
    pending: str | None = None
    sent_s: float = 0.0
    retries: int = 0
    given_up: bool = False


class BaselineCore:
    """The dispatcher's decisions: feed it the site's status/telemetry/acks (`observe`) and a
    target (`set_target`); `step(now_s)` returns the (device, op) commands to send now.

    The fleet is read with the site's `Roster`; efficiency is the mean of the J/TH measured
    while a machine hashed (its rating until then), so a machine does not change rank when it
    sleeps."""

    def __init__(self, site: str, policy: BaselinePolicy | None = None,
                 machines: Iterable[Machine] = (), prefix: str = PREFIX) -> None:
        self.policy = policy or BaselinePolicy()
        self.roster = Roster(site, prefix)
        self.known = {m.device: m for m in machines}  # given ratings/efficiency win
        self.memory: dict[str, _Dispatch] = {}
        self.target_w: float | None = None
        self.next_batch_s = -math.inf
        self.batches: list[BatchRecord] = []
        self.given_up = 0
        self.rejected: dict[str, int] = {}

    # ---- what the site says ------------------------------------------------------------------
    def set_target(self, power_w: float) -> None:
        self.target_w = float(power_w)

    def observe(self, topic: str, payload: bytes, now_s: float) -> None:
        """A status, telemetry or ack message of the site (anything else is ignored)."""
        if topic.split("/")[3:4] == ["ack"]:
            ack = decode_map(payload)
            if ack is not None and ack.get("result") == "rejected":
                reason = str(ack.get("reason", "?"))
                self.rejected[reason] = self.rejected.get(reason, 0) + 1
            return
        if self.roster.update(topic, payload, now_s) != "telemetry":
            return
        device = topic.split("/")[2]
        rec = self.roster.devices[device]
        if rec.mode == "mining" and rec.power_w and rec.hashrate_ghs:
            memory = self.memory.setdefault(device, _Dispatch())
            memory.j_per_th_sum += rec.power_w / (rec.hashrate_ghs / 1000.0)
            memory.j_per_th_n += 1

    # ---- the fleet as the dispatcher sees it -------------------------------------------------
    def machines(self, now_s: float) -> list[Machine]:
        """The machines it may dispatch now: online and reporting, not tripped, not given up."""
        out = []
        for rec in self.roster.answering(now_s, self.policy.stale_s):
            memory = self.memory.get(rec.device)
            if rec.mode == "tripped" or (memory is not None and memory.given_up):
                continue
            out.append(self.known.get(rec.device) or self._machine(rec, memory))
        return out

    @staticmethod
    def _machine(rec: DeviceRecord, memory: _Dispatch | None) -> Machine:
        if memory is not None and memory.j_per_th_n:
            j_per_th: float | None = memory.j_per_th_sum / memory.j_per_th_n
        elif rec.hashrate_max_ghs > 0:
            j_per_th = rec.max_w / (rec.hashrate_max_ghs / 1000.0)
        else:
            j_per_th = None
        return Machine(rec.device, rec.min_w, rec.max_w, j_per_th)

    def awake(self) -> set[str]:
        """Awake as believed: the op in flight, else the mode the telemetry shows."""
        out = set()
        for name, rec in self.roster.devices.items():
            memory = self.memory.get(name)
            if memory is not None and memory.pending is not None:
                if memory.pending == WAKE_OP:
                    out.add(name)
            elif rec.mode in AWAKE_MODES:
                out.add(name)
        return out

    def estimate_w(self, now_s: float) -> float:
        """The open-loop estimate of the site's power: what the dispatcher believes it draws."""
        awake = self.awake()
        return sum(m.max_w if m.device in awake else m.min_w for m in self.machines(now_s))

    # ---- deciding ----------------------------------------------------------------------------
    def step(self, now_s: float) -> list[tuple[str, str]]:
        """The commands due now: nothing until the previous batch's confirmation wait is over,
        then the pending ones are judged and the next batch planned."""
        if self.target_w is None or now_s < self.next_batch_s:
            return []
        confirmed, unconfirmed = self._confirm()
        batch = next_batch(self.machines(now_s), self.awake(), self.target_w,
                           self.policy.batch_size(len(self.roster.devices)))
        if not batch:
            return []
        for name, op in _ops(batch):
            memory = self.memory.setdefault(name, _Dispatch())
            memory.pending, memory.sent_s = op, now_s
        self.next_batch_s = now_s + self.policy.confirm_s
        self.batches.append(BatchRecord(now_s, self.target_w, batch.sleep, batch.wake,
                                        confirmed, unconfirmed))
        return _ops(batch)

    def _confirm(self) -> tuple[int, int]:
        confirmed = unconfirmed = 0
        for name, memory in self.memory.items():
            if memory.pending is None:
                continue
            rec = self.roster.devices.get(name)
            modes = AWAKE_MODES[:1] if memory.pending == WAKE_OP else ASLEEP_MODES
            if (rec is not None and rec.mode in modes and rec.seen_s is not None
                    and rec.seen_s > memory.sent_s):
                confirmed += 1
                memory.retries = 0
            else:
                unconfirmed += 1
                memory.retries += 1
                if memory.retries > self.policy.max_retries:
                    memory.given_up = True
                    self.given_up += 1
                    log.warning("baseline: %s never confirmed %s; left out", name,
                                memory.pending)
            memory.pending = None
        return confirmed, unconfirmed


def _ops(batch: Batch) -> list[tuple[str, str]]:
    return [(d, SLEEP_OP) for d in batch.sleep] + [(d, WAKE_OP) for d in batch.wake]


class BaselineDispatcher:
    """`BaselineCore` on a broker: an `Operator` (connected, with a signer and seq counter)
    reads the site's status, telemetry and acks and sends the core's commands, one signed
    command per device. `set_target(power_w)` as the site target moves; `stop()` at the end."""

    def __init__(self, operator: Operator, site: str, policy: BaselinePolicy | None = None,
                 machines: Iterable[Machine] = (), prefix: str = PREFIX,
                 poll_s: float = 0.05) -> None:
        if operator.signer is None or operator.seq is None:
            raise ValueError("the baseline dispatcher needs an operator with a key and seq")
        self.operator = operator
        self.site = site
        self.prefix = prefix
        self.core = BaselineCore(site, policy, machines, prefix)
        self.poll_s = poll_s
        self.sent = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="baseline", daemon=True)

    def start(self) -> BaselineDispatcher:
        tree = f"{self.prefix}/{self.site}/+"
        self.operator.subscribe([f"{tree}/status", f"{tree}/telemetry", f"{tree}/ack"])
        self._thread.start()
        return self

    def set_target(self, power_w: float) -> None:
        with self._lock:
            self.core.set_target(power_w)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5.0)

    @property
    def batches(self) -> list[BatchRecord]:
        with self._lock:
            return list(self.core.batches)

    def _run(self) -> None:
        messages = self.operator.messages
        while not self._stop.is_set():
            try:
                item: tuple[str, bytes, Any, float] | None = messages.get(timeout=self.poll_s)
            except queue.Empty:
                item = None
            with self._lock:
                while item is not None:
                    topic, payload, _, received_s = item
                    self.core.observe(topic, payload, received_s)
                    try:
                        item = messages.get_nowait()
                    except queue.Empty:
                        item = None
                commands = self.core.step(time.monotonic())
            for device, op in commands:
                self._send(device, op)

    def _send(self, device: str, op: str) -> None:
        signer, seq = self.operator.signer, self.operator.seq
        assert signer is not None and seq is not None
        try:
            signed = signer.build(self.site, device, op, seq=seq.next(signer.kid),
                                  validity_s=self.core.policy.validity_s)
            self.operator.publish_command(signed)
            self.sent += 1
        except (GridLinkError, OSError) as exc:  # retried when the confirmation misses it
            log.warning("baseline: sending %s to %s failed: %s", op, device, exc)
