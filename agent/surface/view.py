"""The device as the outward surfaces show it: a `DeviceView` the control thread builds from the
runtime's figures (`ViewPublisher.refresh`, a runtime tick hook) and any other thread reads
(`ViewPublisher.latest`).

A figure the agent does not have (no current board sample, no pool) is None, never a guess. The
totals (energy, hashes, shares, hardware errors, grid commands by result) only grow: a source
count that starts again from zero (a chip left the chain, a pool was replaced) is added to, not
subtracted from (`Tally`).
"""

from __future__ import annotations

import math
import socket
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agent import __version__
from agent.pool.endpoint import parse_url
from firmware_bridge.chips import profile

#: the hashes one valid nonce at difficulty 1 stands for
HASHES_PER_DIFF1 = 2**32
#: how often the control thread rebuilds the view (s)
VIEW_PERIOD_S = 0.5
#: grid command results counted (agent.grid.session's counters of the same names)
COMMAND_RESULTS = ("accepted", "rejected", "duplicate")


@dataclass(frozen=True)
class Identity:
    """What does not change while the agent runs: the chain, the controller, the first pool."""

    family: str
    chips: int
    small_cores: int  # per chip (the expected hashrate is freq x small cores x chips)
    version: str
    hostname: str
    mac: str  # AA:BB:CC:DD:EE:FF
    pool_host: str = ""  # the first [[pool]] entry ("" and 0: local work)
    pool_port: int = 0
    pool_user: str = ""

    @classmethod
    def from_config(cls, config: Any) -> Identity:
        """The identity of the chain `config` describes (after detection) on this machine."""
        host, port, user = "", 0, ""
        if config.pools:
            host, port, _tls = parse_url(config.pools[0].url, "pool[0].url")
            user = config.pools[0].user
        return cls(family=config.chain.family, chips=config.chain.chips,
                   small_cores=profile(config.chain.family).small_cores,
                   version=f"gridminer-{__version__}", hostname=socket.gethostname(),
                   mac=mac_address(), pool_host=host, pool_port=port, pool_user=user)


def mac_address() -> str:
    """This machine's hardware address as AA:BB:CC:DD:EE:FF (`uuid.getnode`)."""
    node = uuid.getnode()
    return ":".join(f"{(node >> shift) & 0xFF:02X}" for shift in range(40, -8, -8))


class Tally:
    """A total that only grows, fed from a source count that may start again from zero."""

    def __init__(self) -> None:
        self.total = 0.0
        self._last: float | None = None

    def advance(self, count: float | None, weight: float = 1.0) -> float:
        """Add what `count` rose by since the last call (all of it after a restart), times
        `weight`; None or a non-finite count adds nothing."""
        if count is None or not math.isfinite(count):
            return self.total
        rise = count if self._last is None or count < self._last else count - self._last
        self.total += rise * weight
        self._last = count
        return self.total


@dataclass(frozen=True)
class DeviceView:
    """The device at one moment, in the agent's own units (W, V, A, mV, MHz, degC, GH/s)."""

    identity: Identity
    uptime_s: float
    mode: str
    board_ok: bool  # the board sample is current (else the measured figures are None)
    target_w: float | None = None
    min_w: float | None = None
    max_w: float | None = None
    power_w: float | None = None
    input_v: float | None = None
    input_a: float | None = None
    vcore_mv: float | None = None
    freq_mhz: float | None = None
    chip_temp_c: float | None = None  # the hottest chip
    board_temp_c: float | None = None
    vr_temp_c: float | None = None
    fan_rpm: float | None = None
    fan_pct: float | None = None
    hashrate_ghs: float | None = None
    expected_hashrate_ghs: float | None = None
    pool_url: str | None = None  # the pool in use (None: local work)
    energy_j_total: float = 0.0
    hashes_total: float = 0.0
    shares_total: Mapping[str, float] = field(default_factory=dict)  # accepted/rejected/stale
    hw_errors_total: float = 0.0
    commands_total: Mapping[str, float] = field(default_factory=dict)  # COMMAND_RESULTS


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


class ViewPublisher:
    """Builds the `DeviceView` of a runtime (agent.control.runtime.Runtime) every `period_s` on
    the control thread (`refresh`, a tick hook) and hands the latest to any thread (`latest`)."""

    def __init__(self, runtime: Any, identity: Identity, period_s: float = VIEW_PERIOD_S) -> None:
        self.runtime = runtime
        self.identity = identity
        self.period_s = period_s
        self._lock = threading.Lock()
        self._view: DeviceView | None = None
        self._started_s: float | None = None
        self._due_s = -math.inf
        self._energy = Tally()
        self._hashes = Tally()
        self._hw = Tally()
        self._shares = {name: Tally() for name in ("accepted", "rejected", "stale")}
        self._commands = {name: Tally() for name in COMMAND_RESULTS}

    def latest(self) -> DeviceView | None:
        """The view last built (None before the first control tick)."""
        with self._lock:
            return self._view

    def refresh(self, now_s: float) -> None:
        """Build a new view when one is due (called on the control thread)."""
        if self._started_s is None:
            self._started_s = now_s
        if now_s < self._due_s:
            return
        self._due_s = now_s + self.period_s
        view = self.build(now_s)
        with self._lock:
            self._view = view

    def build(self, now_s: float) -> DeviceView:
        """The view of the runtime now."""
        rt = self.runtime
        snap = rt.snapshot()
        fresh = snap.get("board") == "ok"
        sample = rt.sample if fresh else None
        chain = rt.chain
        caps = rt.governor.caps()
        expected = None
        if chain is not None:
            self._hashes.advance(chain.valid, chain.ticket_difficulty * HASHES_PER_DIFF1)
            expected = chain.expected_hashrate_ghs
        self._energy.advance(_number(snap.get("energy_wh")), 3600.0)
        self._hw.advance(_number(snap.get("hw_err")))
        for name, key in (("accepted", "pool_accepted"), ("rejected", "pool_rejected"),
                          ("stale", "pool_stale")):
            self._shares[name].advance(_number(snap.get(key)))
        counts = getattr(rt.grid, "counters", None) or {}
        for name, tally in self._commands.items():
            tally.advance(_number(counts.get(name, 0)))
        started = self._started_s if self._started_s is not None else now_s

        def measured(name: str) -> float | None:
            return _number(getattr(sample, name, None)) if sample is not None else None

        return DeviceView(
            identity=self.identity, uptime_s=max(0.0, now_s - started),
            mode=str(snap.get("mode") or "starting"), board_ok=fresh,
            target_w=_number(snap.get("target_w")), min_w=_number(caps.get("min_w")),
            max_w=_number(caps.get("max_w")), power_w=_number(snap.get("power_w")),
            input_v=measured("vin_v"), input_a=measured("iin_a"),
            vcore_mv=_number(snap.get("vcore_mv")), freq_mhz=_number(snap.get("freq_mhz")),
            chip_temp_c=_number(snap.get("temp_c")),
            board_temp_c=_number(snap.get("board_temp_c")), vr_temp_c=measured("vr_temp_c"),
            fan_rpm=measured("fan_rpm"), fan_pct=_number(snap.get("fan_pct")),
            hashrate_ghs=_number(snap.get("hashrate_ghs")),
            expected_hashrate_ghs=_number(expected),
            pool_url=snap.get("pool") if isinstance(snap.get("pool"), str) else None,
            energy_j_total=self._energy.total, hashes_total=self._hashes.total,
            shares_total={k: t.total for k, t in self._shares.items()},
            hw_errors_total=self._hw.total,
            commands_total={k: t.total for k, t in self._commands.items()},
        )
