"""HIL scenarios: TOML files that combine grid events, ambient temperature, faults and the
outcome criteria a run must meet.

Times are *scenario seconds*: at `--speed 1` one scenario second is one wall second; `--speed X`
plays the schedule X times faster (the board's physics and the agent's ramp limit stay real time).
Power levels are given as `power_pct` of the device's rated power (its declared `caps.max_w`) or
as absolute `power_w`. Every bad value is reported as a `ScenarioError` naming the file and key.

```toml
[scenario]
name = "solar_surplus"
duration_s = 200

[device]              # emulated hash board (ignored with a real rig)
family = "BM1370"
chips = 4

[[grid]]              # a surplus day compressed into 120 s, setpoints every 4 s
at_s = 0
op = "surplus"
until_s = 120
clouds = [{ at_h = 11.0, depth_pct = 50, width_h = 0.6 }]

[[grid]]
at_s = 150
op = "curtail"

[[ambient]]
at_s = 0
temp_c = 25.0

[[fault]]
at_s = 90
kind = "broker_outage"
duration_s = 8

[pool]                # the agent mines to lab pools (hil.pool) the rig starts
count = 2             # the second one is the failover pool
refuse_version_rolling = [1]

[[pool.event]]        # cues: drop, down, blocks (a clean_jobs storm), reject
at_s = 60
kind = "down"
duration_s = 30

[criteria]            # upper bounds on figures of the summary
tracking_rms_pct = 2.0
cap_violations = 0
```
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar

from agent.errors import ConfigError
from agent.grid.contract import FALLBACKS
from agent.tomlschema import (
    REQUIRED,
    build,
    convert,
    fmt,
    key,
    read,
    read_toml,
    reject_unknown,
)

SCENARIO_DIR = Path(__file__).parent / "scenarios"
DEFAULT_SCENARIO = "solar_surplus"
T = TypeVar("T")  # what a scenario reader (a board's, a site's) returns

COMMAND_OPS = ("setpoint", "curtail", "resume", "standby", "ping")
GRID_OPS = (*COMMAND_OPS, "surplus", "reserve")
FAULT_KINDS = (
    "broker_outage",
    "serial_garbage",
    "chip_death",
    "stuck_sensor",
    "agent_kill",
)
LINKS = ("chain", "board")
DIRECTIONS = ("decrease", "increase")

# Japan's balancing market (需給調整市場) products: (full response within, hold at least), in
# market seconds. A scenario plays them time-scaled (`time_scale` market seconds per scenario s).
RESERVE_PRODUCTS: dict[str, tuple[float, float]] = {
    "primary": (10.0, 300.0),
    "secondary1": (300.0, 1800.0),
    "secondary2": (300.0, 1800.0),
    "tertiary1": (900.0, 10800.0),
    "tertiary2": (2700.0, 10800.0),
}

# Figures of the summary a scenario may bound (upper bounds), with the default bound if any.
CRITERIA: dict[str, float | None] = {
    "tracking_rms_pct": None,
    "tracking_max_pct": None,
    "response_p50_s": None,
    "response_p90_s": None,
    "response_max_s": None,
    "responses_late": 0,
    "cap_violations": 0,
    "ramp_violations": 0,
    "temp_violations": 0,
    "commands_unacked": 0,
    "commands_rejected": 0,
    "telemetry_gaps": 0,
    "reserve_failures": 0,
    "agent_crashes": 0,
    "faults_missed": 0,  # faults the agent must answer with a safety trip (a stuck sensor)
    # [pool] runs (hil.report.summary's pool figures); the first two are 0 by default there
    "pool_invalid_shares": None,  # shares the lab pool found invalid (hashlib, on its own)
    "pool_count_mismatch": None,  # |agent's accepted - pool's| + |agent's rejected - pool's|
    "pool_stale_pct": None,  # stale shares, % of those submitted
    "pool_failover_s": None,  # the longest a pool's death left the chips without pool work
    "pool_failback_s": None,  # the longest from the first pool's return to its work again
    "pool_hashrate_error_pct": None,  # |pool-credited - true hashrate|, % of true
    # [home] runs (hil.report.home)
    "home_grid_pct": None,  # the miner's energy taken from the grid, % of the miner's energy
    "home_silent_w": None,  # the miner's most true power in the last quarter of a silent meter
}
#: the bounds every scenario with a [pool] part gets unless it sets them
POOL_CRITERIA = {"pool_invalid_shares": 0.0, "pool_count_mismatch": 0.0}


class ScenarioError(ConfigError):
    """A scenario file is invalid; the message names the file, the key and what is allowed."""


# Each dataclass declares its TOML keys with their ranges (agent.tomlschema.key); ranges that
# depend on the scenario (an `at_s` within `duration_s`) are set while reading.


@dataclass(frozen=True)
class Cloud:
    """A dip of the solar output: centred at `at_h`, `depth_pct` of the output gone at its
    deepest, over `width_h` hours (smooth edges)."""

    at_h: float = key(lo=0.0, hi=24.0)
    depth_pct: float = key(50.0, lo=0.0, hi=100.0)
    width_h: float = key(0.5, lo=0.0, lo_open=True, hi=24.0)


@dataclass(frozen=True)
class SurplusSpec:
    """A renewable-surplus day from `day_start_h` to `day_end_h` played between `at_s` and
    `until_s`: a solar bell with cloud dips plus seeded wind, minus a demand share, as % of rated
    power; a setpoint goes out every `interval_s` (or when the curve moved by `deadband_pct`)."""

    day_start_h: float = key(5.0, lo=0.0, hi=24.0)
    day_end_h: float = key(19.0, lo=0.0, hi=48.0)
    sunrise_h: float = key(6.0, lo=0.0, hi=24.0)
    sunset_h: float = key(18.0, lo=0.0, hi=24.0)
    solar_pct: float = key(110.0, lo=0.0, hi=1000.0)
    wind_pct: float = key(25.0, lo=0.0, hi=1000.0)
    wind_period_h: float = key(5.0, lo=0.0, lo_open=True)
    demand_pct: float = key(30.0, lo=0.0, hi=1000.0)
    floor_pct: float = key(20.0, lo=0.0, hi=100.0)
    ceiling_pct: float = key(100.0, lo=0.0, hi=100.0)
    interval_s: float = key(5.0, lo=0.1)
    deadband_pct: float = key(2.0, lo=0.0, hi=100.0)
    clouds: tuple[Cloud, ...] = key(())


@dataclass(frozen=True)
class GridEvent:
    """One grid-operator action. `op` is a command op, `surplus` (a curve of setpoints until
    `until_s`) or `reserve` (a balancing-market product test)."""

    at_s: float = key(lo=0.0)
    op: str = key(choices=GRID_OPS)
    label: str = key("")
    power_pct: float | None = key(None, lo=0.0, hi=100.0)
    power_w: float | None = key(None, lo=0.0)
    ramp_w_s: int | None = key(None, lo=1)
    validity_s: float | None = key(None, lo=1.0)
    fallback: str | None = key(None, choices=FALLBACKS)
    until_s: float | None = key(None, lo=0.0)
    surplus: SurplusSpec | None = None  # the surplus keys, read from the same table
    product: str | None = key(None, choices=tuple(RESERVE_PRODUCTS))
    direction: str = key("decrease", choices=DIRECTIONS)
    amount_pct: float | None = key(None, lo=0.0, lo_open=True, hi=100.0)
    time_scale: float = key(60.0, lo=0.0, lo_open=True)
    response_s: float | None = key(None, lo=0.0, lo_open=True)
    hold_s: float | None = key(None, lo=0.0, lo_open=True)

    def reserve_window_s(self) -> tuple[float, float]:
        """(response, hold) of a reserve test in scenario seconds."""
        market_response_s, market_hold_s = RESERVE_PRODUCTS[self.product or "secondary1"]
        response_s = self.response_s if self.response_s is not None else (
            market_response_s / self.time_scale
        )
        hold_s = self.hold_s if self.hold_s is not None else market_hold_s / self.time_scale
        return response_s, hold_s

    def end_s(self) -> float:
        """Scenario time at which the event has finished."""
        if self.op == "surplus" and self.until_s is not None:
            return self.until_s
        if self.op == "reserve":
            response_s, hold_s = self.reserve_window_s()
            return self.at_s + response_s + hold_s
        return self.at_s


@dataclass(frozen=True)
class AmbientPoint:
    """Ambient temperature at `at_s`; the temperature moves linearly between points."""

    at_s: float = key(lo=0.0)
    temp_c: float = key(lo=-40.0, hi=80.0)


@dataclass(frozen=True)
class Fault:
    """A fault injected at `at_s` for `duration_s` (None: until the end of the run)."""

    at_s: float = key(lo=0.0)
    kind: str = key(choices=FAULT_KINDS)
    duration_s: float | None = key(None, lo=0.1)
    link: str = key("chain", choices=LINKS)
    rate_bps: int = key(200, lo=1, hi=100_000)
    chip: int = key(0, lo=0, hi=255)
    restart_after_s: float = key(2.0, lo=0.0, hi=3600.0)
    label: str = key("")

    def end_s(self) -> float | None:
        if self.kind == "agent_kill":
            return self.at_s + self.restart_after_s
        return None if self.duration_s is None else self.at_s + self.duration_s


@dataclass(frozen=True)
class Device:
    """The emulated board and agent settings for the scenario."""

    family: str = key("BM1370")
    chips: int = key(4, lo=1, hi=256)
    # emulation difficulty of the nonces (default: the emulator's)
    difficulty: float | None = key(None, lo=1e-12, hi=2.0**32)
    seed: int = key(1)
    ambient_c: float = key(25.0, lo=-40.0, hi=80.0)
    agent: dict[str, Any] = field(default_factory=dict)  # [device.agent.SECTION] config keys


@dataclass(frozen=True)
class Measure:
    """How the summary figures are measured."""

    settle_s: float = key(2.0, lo=0.0, hi=600.0)  # after |step| / ramp: delay and settling
    min_step_pct: float = key(5.0, lo=0.0, hi=100.0)
    ramp_window_s: float = key(1.0, lo=0.1, hi=60.0)
    ramp_tolerance_pct: float = key(3.0, lo=0.0)
    cap_tolerance_pct: float = key(1.0, lo=0.0)
    temp_max_c: float | None = key(None, lo=0.0, hi=150.0)
    exempt_after_fault_s: float = key(10.0, lo=0.0)


@dataclass(frozen=True)
class Short:
    """How tests/hil plays the short version: `speed` and optionally only events before `until_s`,
    with `criteria` overriding the full run's bounds."""

    speed: float = key(1.0, lo=0.01, hi=1000.0)
    until_s: float | None = key(None, lo=1.0)
    criteria: dict[str, float] = field(default_factory=dict)


POOL_EVENT_KINDS = ("drop", "down", "blocks", "reject")


@dataclass(frozen=True)
class PoolEvent:
    """A cue to lab pool `pool` (0: the first of the agent's list) at `at_s`: `drop` its
    connections (the agent reconnects), go `down` (connections refused) for `duration_s`, a
    `blocks` storm (a clean_jobs notify every `interval_s` for `duration_s`), or `reject`
    every share with error `code` for `duration_s`."""

    at_s: float = key(lo=0.0)
    kind: str = key(choices=POOL_EVENT_KINDS)
    pool: int = key(0, lo=0, hi=1)
    duration_s: float | None = key(None, lo=0.1)
    interval_s: float = key(2.0, lo=0.1, hi=3600.0)
    code: int = key(23, lo=20, hi=25)
    label: str = key("")

    def end_s(self) -> float:
        return self.at_s + (self.duration_s or 0.0)


@dataclass(frozen=True)
class PoolSpec:
    """[pool]: the lab pools (hil.pool) the rig starts and the agent mines to, in its priority
    order; their difficulty makes about `share_pct` % of the chips' nonces shares; a new job
    every `job_interval_s`, a new block (clean_jobs) every `block_interval_s`."""

    count: int = key(1, lo=1, hi=2)
    refuse_version_rolling: tuple[int, ...] = key(())  # pools (by index) answering "false"
    share_pct: float = key(25.0, lo=0.01, hi=100.0)
    job_interval_s: float = key(30.0, lo=0.1, hi=86400.0)
    block_interval_s: float = key(120.0, lo=0.1, hi=86400.0)
    events: tuple[PoolEvent, ...] = ()


@dataclass(frozen=True)
class HomeSpec:
    """[home]: a home with a roof and a meter at its grid connection, over the whole run (the
    day from `day_start_h` to `day_end_h`): the roof's solar bell with cloud dips (`solar_pct`
    of the miner's rated power at its peak, `clouds`), the house's own load (`demand_pct`), and
    the meter (house + miner - roof, import positive, as a Shelly Pro EM's `total_act_power`)
    published on the rig's broker every `meter_interval_s`, silent for `silent_s` from
    `silent_at_s`. The agent follows the surplus on its own; no grid command is sent."""

    meter_interval_s: float = key(2.0, lo=0.1, hi=600.0)
    silent_at_s: float | None = key(None, lo=0.0)
    silent_s: float = key(0.0, lo=0.0, hi=86400.0)
    day: SurplusSpec = field(default_factory=SurplusSpec)  # the roof and the house


@dataclass(frozen=True)
class Scenario:
    """A parsed, validated scenario. Lists are sorted by time."""

    name: str  # [scenario] keys from here to validity_s
    path: Path | None  # the file read
    duration_s: float = key(lo=1.0, hi=7 * 86400.0)
    description: str = key("")
    warmup_s: float = key(60.0, lo=0.0, hi=3600.0)
    initial_pct: float | None = key(50.0, lo=0.0, hi=100.0)
    validity_s: float = key(600.0, lo=1.0, hi=86400.0)
    device: Device = field(default_factory=Device)
    grid: tuple[GridEvent, ...] = ()
    ambient: tuple[AmbientPoint, ...] = ()
    faults: tuple[Fault, ...] = ()
    criteria: dict[str, float] = field(default_factory=dict)
    measure: Measure = field(default_factory=Measure)
    short: Short = field(default_factory=Short)
    pool: PoolSpec | None = None  # [pool]: mine to the rig's lab pools (None: local work)
    home: HomeSpec | None = None  # [home]: the agent follows a home's solar surplus

    def shortened(self) -> Scenario:
        """The short version tests/hil plays: events after `short.until_s` dropped, the short
        criteria applied."""
        until_s = self.short.until_s
        if until_s is None:
            return replace(self, criteria={**self.criteria, **self.short.criteria})
        grid = tuple(
            replace(e, until_s=min(e.until_s, until_s)) if e.op == "surplus" and e.until_s else e
            for e in self.grid
            if e.at_s < until_s
        )
        faults = tuple(f for f in self.faults if f.at_s < until_s)
        ambient = tuple(a for a in self.ambient if a.at_s <= until_s)
        pool = self.pool and replace(self.pool, events=tuple(
            e for e in self.pool.events if e.at_s < until_s))
        return replace(
            self,
            duration_s=min(self.duration_s, until_s),
            grid=grid,
            faults=faults,
            ambient=ambient,
            criteria={**self.criteria, **self.short.criteria},
            pool=pool,
        )

    def ambient_at(self, t_s: float) -> float:
        """Ambient temperature at scenario time `t_s` (linear between points)."""
        points = self.ambient
        if not points:
            return self.device.ambient_c
        if t_s <= points[0].at_s:
            return points[0].temp_c
        for a, b in itertools.pairwise(points):
            if a.at_s <= t_s <= b.at_s:
                if b.at_s == a.at_s:
                    return b.temp_c
                k = (t_s - a.at_s) / (b.at_s - a.at_s)
                return a.temp_c + k * (b.temp_c - a.temp_c)
        return points[-1].temp_c


# --------------------------------------------------------------------------- parsing

SECTIONS = ("scenario", "device", "grid", "ambient", "fault", "criteria", "measure", "short",
            "pool", "home")
_HEAD_KEYS = ("name", "duration_s", "description", "warmup_s", "initial_pct", "validity_s")
_GRID_KEYS = ("at_s", "op", "label", "ramp_w_s", "validity_s", "fallback")
_SURPLUS_KEYS = tuple(f.name for f in fields(SurplusSpec))
_GRID_OP_KEYS: dict[str, tuple[str, ...]] = {  # GridEvent fields each op reads
    "setpoint": ("power_pct", "power_w"),
    "surplus": ("until_s",),
    "reserve": ("product", "direction", "amount_pct", "time_scale", "response_s", "hold_s"),
}
_FAULT_KEYS: dict[str, tuple[str, ...]] = {
    "broker_outage": ("duration_s",),
    "serial_garbage": ("duration_s", "link", "rate_bps"),
    "chip_death": ("chip", "duration_s"),
    "stuck_sensor": ("chip", "duration_s"),
    "agent_kill": ("restart_after_s",),
}
_FAULT_NEEDS_DURATION = ("broker_outage", "serial_garbage")


def _variant(table: Mapping[str, Any], name: str, keys: Mapping[str, tuple[str, ...]],
             choices: tuple[str, ...]) -> tuple[str | None, tuple[str, ...]]:
    """The table's `name` (op, kind) when it is valid, and the keys that choice takes (every
    key of every choice when it is not: then reading `name` reports the error)."""
    value = table.get(name)
    if isinstance(value, str) and value in choices:
        return value, keys.get(value, ())
    return None, tuple(dict.fromkeys(k for ks in keys.values() for k in ks))


def _tables(data: Mapping[str, Any], name: str) -> list[tuple[str, dict[str, Any]]]:
    """An array of tables ([[name]]) as (its dotted path, table) pairs."""
    items = convert(tuple[dict[str, Any], ...], data.get(name, ()), name)
    return [(f"{name}[{i}]", t) for i, t in enumerate(items)]


def _surplus(where: str, table: Mapping[str, Any], allow: tuple[str, ...]) -> SurplusSpec:
    spec = build(SurplusSpec, where, table, allow=allow)
    if spec.day_end_h <= spec.day_start_h:
        raise ConfigError(f"{where}.day_end_h: must be after day_start_h ({spec.day_start_h:g})")
    if spec.sunset_h <= spec.sunrise_h:
        raise ConfigError(f"{where}.sunset_h: must be after sunrise_h ({spec.sunrise_h:g})")
    if spec.ceiling_pct < spec.floor_pct:
        raise ConfigError(f"{where}.ceiling_pct: must be >= floor_pct ({spec.floor_pct:g})")
    return replace(spec, clouds=tuple(sorted(spec.clouds, key=lambda c: c.at_h)))


def _grid_event(where: str, table: Mapping[str, Any], duration_s: float) -> GridEvent:
    op, own = _variant(table, "op", _GRID_OP_KEYS, GRID_OPS)
    allow = (*_GRID_KEYS, *own, *(_SURPLUS_KEYS if op in ("surplus", None) else ()))
    overrides: dict[str, dict[str, Any]] = {
        "at_s": {"hi": duration_s},
        "until_s": {"hi": duration_s, "default": REQUIRED},
        "amount_pct": {"default": REQUIRED},
        "product": {"default": "secondary1"},
    }
    event = build(GridEvent, where, table, keys=(*_GRID_KEYS, *own), allow=allow,
                  overrides=overrides)
    if op == "setpoint" and ("power_pct" in table) == ("power_w" in table):
        raise ConfigError(
            f"{where}.power_pct: a setpoint needs exactly one of power_pct or power_w")
    if op == "surplus":
        if event.until_s <= event.at_s:
            raise ConfigError(f"{where}.until_s: must be after at_s ({event.at_s:g})")
        event = replace(event, surplus=_surplus(where, table, allow))
    if op == "reserve" and event.end_s() > duration_s:
        raise ConfigError(
            f"{where}.at_s: the {event.product} test ends at {event.end_s():g} s, after "
            f"scenario.duration_s ({duration_s:g}); move it earlier or raise time_scale")
    return event


def _grid(data: Mapping[str, Any], duration_s: float) -> tuple[GridEvent, ...]:
    """The [[grid]] events by time; a curve or a reserve test has the grid to itself."""
    events = sorted((_grid_event(where, t, duration_s) for where, t in _tables(data, "grid")),
                    key=lambda e: e.at_s)
    for a, b in itertools.pairwise(events):
        if a.op in ("surplus", "reserve") and b.at_s < a.end_s():
            raise ConfigError(f"grid: the {b.op} event at {b.at_s:g} s starts inside the {a.op} "
                              f"event at {a.at_s:g}..{a.end_s():g} s")
    return tuple(events)


def _fault(where: str, table: Mapping[str, Any], duration_s: float) -> Fault:
    kind, own = _variant(table, "kind", _FAULT_KEYS, FAULT_KINDS)
    overrides: dict[str, dict[str, Any]] = {"at_s": {"hi": duration_s}}
    if kind in _FAULT_NEEDS_DURATION:
        overrides["duration_s"] = {"default": REQUIRED}
    allow = ("kind", "at_s", "label", *own)
    keys = allow if kind is not None else allow[:3]
    return build(Fault, where, table, keys=keys, allow=allow, overrides=overrides)


_POOL_EVENT_KEYS: dict[str, tuple[str, ...]] = {
    "drop": (),
    "down": ("duration_s",),
    "blocks": ("duration_s", "interval_s"),
    "reject": ("duration_s", "code"),
}


def _pool(raw: Any, duration_s: float) -> PoolSpec:
    """[pool] and its [[pool.event]] cues, by time; a cue names a pool of `count`."""
    table = convert(dict[str, Any], raw, "pool")
    keys = tuple(f.name for f in fields(PoolSpec) if f.name != "events")
    spec = build(PoolSpec, "pool", table, keys=keys, allow=(*keys, "event"))
    for i, index in enumerate(spec.refuse_version_rolling):
        if not 0 <= index < spec.count:
            raise ConfigError(f"pool.refuse_version_rolling[{i}]: {index} is not a pool "
                              f"(0..{spec.count - 1})")
    events = []
    items = convert(tuple[dict[str, Any], ...], table.get("event", ()), "pool.event")
    for i, t in enumerate(items):
        where = f"pool.event[{i}]"
        kind, own = _variant(t, "kind", _POOL_EVENT_KEYS, POOL_EVENT_KINDS)
        allow = ("at_s", "kind", "pool", "label", *own)
        needs = {"duration_s": {"default": REQUIRED}} if kind not in (None, "drop") else {}
        event = build(PoolEvent, where, t, keys=allow if kind is not None else allow[:4],
                      allow=allow, overrides={"at_s": {"hi": duration_s}, **needs})
        if event.pool >= spec.count:
            raise ConfigError(f"{where}.pool: {event.pool} is not a pool (0..{spec.count - 1})")
        events.append(event)
    return replace(spec, events=tuple(sorted(events, key=lambda e: e.at_s)))


_HOME_KEYS = ("meter_interval_s", "silent_at_s", "silent_s")
_HOME_DAY_KEYS = ("day_start_h", "day_end_h", "sunrise_h", "sunset_h", "solar_pct", "demand_pct",
                  "clouds")


def _home(raw: Any, duration_s: float) -> HomeSpec:
    """[home]: the meter's keys and the day's (a `surplus` curve's, without wind)."""
    table = convert(dict[str, Any], raw, "home")
    allow = (*_HOME_KEYS, *_HOME_DAY_KEYS)
    spec = build(HomeSpec, "home", table, keys=_HOME_KEYS, allow=allow,
                 overrides={"silent_at_s": {"hi": duration_s}})
    return replace(spec, day=replace(_surplus("home", table, allow), wind_pct=0.0))


def read_criteria(where: str, raw: Any, names: Collection[str]) -> dict[str, float]:
    """A criteria table: bounds (>= 0) on figures of the summary, each one of `names`."""
    table = convert(dict[str, Any], raw, where)
    reject_unknown(where, table, tuple(names), noun="criterion")
    return {name: convert(float, value, f"{where}.{name}", meta={"lo": 0.0})
            for name, value in table.items()}


def read_short(cls: type[T], raw: Any, keys: tuple[str, ...], criteria: Collection[str],
               overrides: Mapping[str, Mapping[str, Any]] | None = None) -> T:
    """[short]: the dataclass `cls` from its `keys` and its `criteria` table (bounds on the
    figures named in `criteria`)."""
    short = build(cls, "short", raw, keys=keys, allow=(*keys, "criteria"), overrides=overrides)
    return replace(short, criteria=read_criteria("short.criteria", raw.get("criteria", {}),
                                                 criteria))


def _scenario(data: Any, path: Path | None) -> Scenario:
    if not isinstance(data, Mapping):
        raise ConfigError(f"top level: expected a table, got {fmt(data)}")
    reject_unknown("", data, SECTIONS, noun="section")
    name = {"name": {"default": path.stem}} if path is not None else None
    head = read(Scenario, "scenario", data.get("scenario", {}), keys=_HEAD_KEYS, overrides=name)
    duration_s = head["duration_s"]
    device = build(Device, "device", data.get("device", {}))
    grid = _grid(data, duration_s)
    at_s = {"at_s": {"hi": duration_s}}
    ambient = sorted((build(AmbientPoint, where, t, overrides=at_s)
                      for where, t in _tables(data, "ambient")), key=lambda a: a.at_s)
    faults = sorted((_fault(where, t, duration_s) for where, t in _tables(data, "fault")),
                    key=lambda f: f.at_s)
    criteria = {k: v for k, v in CRITERIA.items() if v is not None}
    pool = _pool(data["pool"], duration_s) if "pool" in data else None
    home = _home(data["home"], duration_s) if "home" in data else None
    if pool is not None:
        criteria.update(POOL_CRITERIA)
    criteria.update(read_criteria("criteria", data.get("criteria", {}), CRITERIA))
    measure = build(Measure, "measure", data.get("measure", {}))
    short = read_short(Short, data.get("short", {}), ("speed", "until_s"), CRITERIA,
                       overrides={"until_s": {"hi": duration_s}})
    return Scenario(**head, path=path, device=device, grid=grid, ambient=tuple(ambient),
                    faults=tuple(faults), criteria=criteria, measure=measure, short=short,
                    pool=pool, home=home)


def checked(reader: Callable[[Any, Path | None], T], data: Any, source: str,
            path: Path | None = None) -> T:
    """`reader`'s scenario from TOML data; its ConfigError as a ScenarioError naming `source`."""
    try:
        return reader(data, path)
    except ConfigError as exc:
        raise ScenarioError(f"{source}: {exc}") from None


def read_file(reader: Callable[[Any, Path | None], T], path: Path) -> T:
    """`reader`'s scenario from the file at `path`; every error a ScenarioError naming it."""
    try:
        data = read_toml(path)
    except ConfigError as exc:
        raise ScenarioError(str(exc)) from None
    return checked(reader, data, str(path), path)


def parse(data: dict[str, Any], source: str = "<scenario>", path: Path | None = None) -> Scenario:
    """Validate a scenario from its TOML data; raises ScenarioError naming the file and the bad
    key."""
    return checked(_scenario, data, source, path)


def resolve(name_or_path: str | Path) -> Path:
    """A scenario path from a path or a bare name of a file in hil/scenarios/."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    candidate = SCENARIO_DIR / (path.name if path.suffix == ".toml" else f"{path.name}.toml")
    if candidate.is_file():
        return candidate
    known = ", ".join(p.stem for p in available())
    raise ScenarioError(f"{name_or_path}: no such scenario file (built in: {known})")


def load(name_or_path: str | Path) -> Scenario:
    """Read and validate a scenario file (a path, or a name from hil/scenarios/)."""
    return read_file(_scenario, resolve(name_or_path))


def available() -> list[Path]:
    """The scenario files shipped in hil/scenarios/."""
    return sorted(SCENARIO_DIR.glob("*.toml"))
