"""The fleet: N virtual devices of a mix on one broker, their faults on cue, their figures.

Python API (every method may be called from any thread; it runs on the fleet's loop thread):

    state_dir = lab_state_dir()            # on /dev/shm when there is one (it says why)
    fleet = Fleet(FleetOptions(broker_url, site, [(kid, pem_path)], state_dir, devices=1300))
    fleet.start(); fleet.wait_online(timeout_s=60)
    ids = fleet.kill(share=0.1)            # power cut: Will -> retained status "offline"
    fleet.revive(ids)                      # power back: a cold start from the state folder
    fleet.trip(share=0.05)                 # the board's protection cuts the chain: mode tripped
    fleet.clear_trip(ids)                  # (the envelope releases after its trip_hold_s)
    fleet.lag(share=0.05, tau_s=30.0)      # the load follows the chips' point this slowly
    fleet.clear_lag(ids)
    fleet.cut(share=0.05)                  # network cut: TCP dropped, no reconnect; fallback
    fleet.restore(ids)                     # network back: reconnect, buffered telemetry sent
    fleet.figures()                        # devices, online, dead, cut, tripped, power_w, ...
    fleet.stop()                           # offline status and DISCONNECT from each live one

Faults pick `share` of the devices not already in that fault (seeded), or take `ids`; each
returns the ids it touched. Telemetry goes where a real device's goes: on
`PREFIX/SITE/DEVICE/telemetry`, status (retained) on `.../status`, acks on `.../ack`;
`figures()["power_w"]` is the true power of the fleet (the plants', no sensor noise): what a meter
at the point of connection would show.

Beyond a few hundred devices, run the fleet in a process of its own (`gridminer fleet`, or
`hil.fleet.group.FleetGroup` for the same API over one or more processes): its sockets push the
process's file descriptors past 1023, and paho's own network thread (`loop_start`, used by
`Operator` and the test observers) watches its socket with select(), which cannot go there.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.grid.contract import PREFIX
from agent.grid.link import LinkSettings
from agent.grid.session import GridPolicy, load_operator_keys
from hil.errors import HilError
from hil.fleet.device import VirtualDevice
from hil.fleet.loop import FDS_PER_DEVICE, FDS_RESERVE, FleetLoop, raise_fd_limit
from hil.fleet.mix import DEFAULT_MIX, DeviceSpec, Mix, specs

log = logging.getLogger(__name__)


STARTS_PER_S = 400.0  # devices started a second at most (their ticks' phases stay uniform)
SHM = Path("/dev/shm")


def lab_state_dir(prefix: str = "gridminer-fleet-") -> Path:
    """A new private folder for a lab fleet's state (`FleetOptions.state_dir`), on /dev/shm
    when the machine has one; the caller removes it.

    Each device writes and fsyncs its replay state before it acts on a command, as the agent
    does. A real device has its own flash; in the lab a whole site's devices share one disk,
    where their fsyncs queue behind each other (a site-wide command to 1,300 devices took
    2.3-3.9 s to the last ack instead of about 1 s): that would measure the lab's disk, not
    the devices. On tmpfs the same calls are made, in memory."""
    shm = SHM if SHM.is_dir() and os.access(SHM, os.W_OK | os.X_OK) else None
    return Path(tempfile.mkdtemp(prefix=prefix, dir=shm))


class FleetError(HilError):
    """The fleet cannot start as asked (options, keys, file-descriptor limit)."""


@dataclass
class FleetOptions:
    """What `gridminer fleet` takes; the defaults are a site's (1,300 devices, 1.5 MW)."""

    broker_url: str
    site: str
    operator_keys: Sequence[tuple[str, str]]  # (kid, public key PEM path) the devices trust
    state_dir: str
    devices: int = 1300
    seed: int = 0
    mix: Mix = field(default_factory=lambda: DEFAULT_MIX)
    prefix: str = PREFIX
    insecure_no_tls: bool = False
    ca_file: str | None = None
    control_period_s: float = 1.0
    telemetry_period_s: float = 1.0
    restart_spread_s: float = 30.0  # each device's cold-start spread (the contract's default)
    keepalive_s: int = 15
    max_connecting: int = 32  # connections admitted at once (waiting for their CONNACK)
    shard: tuple[int, int] = (0, 1)  # (i, n): this process runs devices i, i+n, i+2n, ...


class Fleet:
    """See the module docstring."""

    def __init__(self, options: FleetOptions) -> None:
        self.options = options
        index, count = options.shard
        if not 0 <= index < count:
            raise FleetError(f"shard {index}/{count}: expected 0 <= i < n")
        every = specs(options.mix, options.devices, options.seed)
        self.all_ids = frozenset(s.device for s in every)  # of every shard
        self.specs: list[DeviceSpec] = every[index::count]
        try:
            self.keys = load_operator_keys(options.operator_keys)
        except Exception as exc:
            raise FleetError(str(exc)) from exc
        self.policy = GridPolicy(telemetry_period_s=options.telemetry_period_s,
                                 restart_spread_s=options.restart_spread_s)
        self.loop = FleetLoop(options.max_connecting)
        self._rng = random.Random(f"{options.seed}/{index}")
        self._faults: dict[str, set[str]] = {"tripped": set(), "lagging": set()}
        self._started = False

    # ---- life cycle -----------------------------------------------------------------------
    def start(self) -> Fleet:
        """Raise the file limit, build every device and start the loop; returns at once (the
        devices connect in turn: `wait_online`)."""
        if self._started:
            return self
        needed = FDS_RESERVE + FDS_PER_DEVICE * len(self.specs)
        limit = raise_fd_limit(needed)
        if limit < needed:
            raise FleetError(f"{len(self.specs)} devices need {needed} open files; the limit is "
                             f"{limit} (raise the hard limit: ulimit -Hn)")
        self._started = True
        self.loop.start()
        # the first ticks (each device's grid state read and written) spread over a window of
        # at least a period, so the start of a large fleet does not stall the loop
        window = max(self.options.control_period_s, len(self.specs) / STARTS_PER_S)
        now = time.monotonic()
        phases = [self._rng.uniform(0.0, window) for _ in self.specs]

        def build() -> None:
            for spec, phase in zip(self.specs, phases, strict=True):
                self.loop.add(self._make(spec), now + phase)

        self.loop.call(build, timeout_s=None)
        return self

    def _make(self, spec: DeviceSpec) -> VirtualDevice:
        o = self.options
        settings = LinkSettings(
            o.broker_url, o.site, spec.device, prefix=o.prefix,
            state_dir=str(Path(o.state_dir) / spec.device), ca_file=o.ca_file,
            insecure_no_tls=o.insecure_no_tls, keepalive_s=o.keepalive_s)
        return VirtualDevice(spec, settings, self.keys, self.policy,
                             random.Random(self._rng.getrandbits(64)), o.control_period_s)

    def stop(self) -> None:
        """Each live device says offline and disconnects; the loop ends."""
        if self._started:
            self._started = False
            self.loop.stop()
        self.loop.close()

    def __enter__(self) -> Fleet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_online(self, timeout_s: float = 60.0, count: int | None = None) -> int:
        """Wait until `count` (default: all live) devices are connected; returns how many are.
        FleetError on timeout."""
        deadline = time.monotonic() + timeout_s
        while True:
            figs = self.figures()
            want = figs["devices"] - figs["dead"] if count is None else count
            if figs["online"] >= want:
                return int(figs["online"])
            if time.monotonic() > deadline:
                raise FleetError(f"{figs['online']} of {want} devices online after {timeout_s} s")
            time.sleep(0.05)

    # ---- figures --------------------------------------------------------------------------
    @property
    def device_ids(self) -> list[str]:
        return [s.device for s in self.specs]

    def figures(self) -> dict[str, Any]:
        """Counts and the fleet's true power now."""
        def read() -> dict[str, Any]:
            devs = self.loop.devices.values()
            live = [d for d in devs if d.device not in self.loop.dead]
            return {
                "devices": len(self.specs),
                "online": sum(1 for d in live if d.link.connected),
                "dead": len(self.loop.dead),
                "cut": len(self.loop.cut),
                "tripped": len(self._faults["tripped"]),
                "lagging": len(self._faults["lagging"]),
                "power_w": round(sum(d.power_w for d in live), 1),
                "rating_w": round(sum(s.rating_w for s in self.specs), 1),
                "late_p99_ms": _p99_ms(self.loop.late_s),
                "connects": self.loop.counters["connects"],
                "loop_errors": self.loop.counters["loop_errors"],
                # the instant these figures hold for: a busy loop answers late
                "at_monotonic_s": round(time.monotonic(), 6),
            }
        return self.loop.call(read)

    def device(self, device_id: str) -> VirtualDevice:
        """The device object (read it on the loop thread: `fleet.loop.call(...)`)."""
        return self.loop.devices[device_id]

    # ---- faults ---------------------------------------------------------------------------
    def _pick(self, share: float | None, ids: Iterable[str] | None,
              exclude: set[str]) -> list[str]:
        known = set(self.device_ids)
        if ids is not None:
            chosen = list(dict.fromkeys(ids))
            unknown = [i for i in chosen if i not in self.all_ids]
            if unknown:
                raise FleetError(f"unknown device(s): {', '.join(unknown[:5])}")
            return [i for i in chosen if i in known]  # the others run in other shards
        if isinstance(share, bool) or not isinstance(share, int | float) \
                or not 0.0 <= share <= 1.0:
            raise FleetError(f"share {share!r}: give a share in [0, 1] or ids")
        pool = sorted(known - exclude - self.loop.dead)
        return self._rng.sample(pool, min(len(pool), round(share * len(known))))

    def kill(self, share: float | None = None, ids: Iterable[str] | None = None) -> list[str]:
        """Power cut: the TCP connection drops without a DISCONNECT (the broker publishes the
        Will: status offline), the device stops and draws nothing."""
        def run() -> list[str]:
            chosen = self._pick(share, ids, set())
            for i in chosen:
                if i in self.loop.dead:
                    continue
                dev = self.device(i)
                dev.link.abort()
                dev.plant.dead, dev.plant.power_w = True, 0.0
                self.loop.dead.add(i)
            log.info("killed %d device(s)", len(chosen))
            return chosen
        return self.loop.call(run)

    def revive(self, ids: Iterable[str]) -> list[str]:
        """Power back on killed devices: a fresh agent on the same state folder (cold start,
        restart spread, replay state and birth sequence kept)."""
        wanted = list(ids)
        unknown = [i for i in wanted if i not in self.all_ids]
        if unknown:
            raise FleetError(f"unknown device(s): {', '.join(unknown[:5])}")

        def run() -> list[str]:
            back = [i for i in wanted if i in self.loop.dead]
            now = time.monotonic()
            for i in back:
                old = self.device(i)
                self.loop.remove(old)
                self.loop.dead.discard(i)
                self._faults["tripped"].discard(i)
                self._faults["lagging"].discard(i)
                self.loop.add(self._make(old.spec), now + self._rng.uniform(0, 1.0))
            return back
        return self.loop.call(run)

    def trip(self, share: float | None = None, ids: Iterable[str] | None = None,
             reason: str = "chip_over_temp") -> list[str]:
        """The board's own protection cuts the chain (`reason` as the bridge reports it): the
        envelope trips, telemetry and status say mode tripped, the device draws its idle."""
        def run() -> list[str]:
            chosen = self._pick(share, ids, self._faults["tripped"])
            for i in chosen:
                self.device(i).plant.trip_reason = reason
                self.device(i).request_tick()
            self._faults["tripped"].update(chosen)
            return chosen
        return self.loop.call(run)

    def clear_trip(self, ids: Iterable[str] | None = None) -> list[str]:
        """The trip's cause is gone (the envelope releases after its hold time)."""
        def run() -> list[str]:
            chosen = [i for i in (self._faults["tripped"] if ids is None else ids)
                      if i in self._faults["tripped"]]
            for i in chosen:
                self.device(i).plant.trip_reason = None
            self._faults["tripped"].difference_update(chosen)
            return chosen
        return self.loop.call(run)

    def lag(self, share: float | None = None, ids: Iterable[str] | None = None,
            tau_s: float = 30.0) -> list[str]:
        """The load follows the chips' operating point with time constant `tau_s` (a sluggish
        unit: it lags its setpoint)."""
        if not tau_s > 0:
            raise FleetError(f"tau_s {tau_s!r} must be > 0")

        def run() -> list[str]:
            chosen = self._pick(share, ids, self._faults["lagging"])
            for i in chosen:
                self.device(i).plant.lag_s = tau_s
            self._faults["lagging"].update(chosen)
            return chosen
        return self.loop.call(run)

    def clear_lag(self, ids: Iterable[str] | None = None) -> list[str]:
        def run() -> list[str]:
            chosen = [i for i in (self._faults["lagging"] if ids is None else ids)
                      if i in self._faults["lagging"]]
            for i in chosen:
                self.device(i).plant.lag_s = 0.0
            self._faults["lagging"].difference_update(chosen)
            return chosen
        return self.loop.call(run)

    def cut(self, share: float | None = None, ids: Iterable[str] | None = None) -> list[str]:
        """Network cut: the device's TCP connection drops (the broker publishes its Will) and it
        cannot reconnect until `restore`; it keeps running on its own (fallback, buffered
        telemetry)."""
        def run() -> list[str]:
            chosen = [i for i in self._pick(share, ids, self.loop.cut) if i not in self.loop.dead]
            for i in chosen:
                self.loop.cut.add(i)
                sock = self.device(i).link.client.socket()
                if isinstance(sock, socket.socket):
                    try:  # paho reads the end of the stream, the broker sees the connection go
                        sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
            return chosen
        return self.loop.call(run)

    def restore(self, ids: Iterable[str] | None = None) -> list[str]:
        """The network is back for these devices (default: all cut ones)."""
        def run() -> list[str]:
            chosen = [i for i in (list(self.loop.cut) if ids is None else ids)
                      if i in self.loop.cut]
            self.loop.cut.difference_update(chosen)
            return chosen
        return self.loop.call(run)


def _p99_ms(values: Iterable[float]) -> float:
    """The 99th percentile of `values` (seconds) in ms; 0 for none."""
    ordered = sorted(values)
    return round(1000.0 * ordered[int(0.99 * (len(ordered) - 1))], 1) if ordered else 0.0
