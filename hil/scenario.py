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

[criteria]            # upper bounds on figures of the summary
tracking_rms_pct = 2.0
cap_violations = 0
```
"""

from __future__ import annotations

import difflib
import itertools
import math
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from agent.errors import ConfigError

SCENARIO_DIR = Path(__file__).parent / "scenarios"
DEFAULT_SCENARIO = "solar_surplus"

COMMAND_OPS = ("setpoint", "curtail", "resume", "standby", "ping")
GRID_OPS = (*COMMAND_OPS, "surplus", "reserve")
FALLBACKS = ("hold_until_exp", "default_now")
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
}


class ScenarioError(ConfigError):
    """A scenario file is invalid; the message names the file, the key and what is allowed."""


@dataclass(frozen=True)
class Cloud:
    """A dip of the solar output: centred at `at_h`, `depth_pct` of the output gone at its
    deepest, over `width_h` hours (smooth edges)."""

    at_h: float
    depth_pct: float
    width_h: float


@dataclass(frozen=True)
class SurplusSpec:
    """A renewable-surplus day from `day_start_h` to `day_end_h` played between `at_s` and
    `until_s`: a solar bell with cloud dips plus seeded wind, minus a demand share, as % of rated
    power; a setpoint goes out every `interval_s` (or when the curve moved by `deadband_pct`)."""

    day_start_h: float = 5.0
    day_end_h: float = 19.0
    sunrise_h: float = 6.0
    sunset_h: float = 18.0
    solar_pct: float = 110.0
    wind_pct: float = 25.0
    wind_period_h: float = 5.0
    demand_pct: float = 30.0
    floor_pct: float = 20.0
    ceiling_pct: float = 100.0
    interval_s: float = 5.0
    deadband_pct: float = 2.0
    clouds: tuple[Cloud, ...] = ()


@dataclass(frozen=True)
class GridEvent:
    """One grid-operator action. `op` is a command op, `surplus` (a curve of setpoints until
    `until_s`) or `reserve` (a balancing-market product test)."""

    at_s: float
    op: str
    label: str = ""
    power_pct: float | None = None
    power_w: float | None = None
    ramp_w_s: int | None = None
    validity_s: float | None = None
    fallback: str | None = None
    until_s: float | None = None
    surplus: SurplusSpec | None = None
    product: str | None = None
    direction: str = "decrease"
    amount_pct: float | None = None
    time_scale: float = 60.0
    response_s: float | None = None
    hold_s: float | None = None

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

    at_s: float
    temp_c: float


@dataclass(frozen=True)
class Fault:
    """A fault injected at `at_s` for `duration_s` (None: until the end of the run)."""

    at_s: float
    kind: str
    duration_s: float | None = None
    link: str = "chain"
    rate_bps: int = 200
    chip: int = 0
    restart_after_s: float = 2.0
    label: str = ""

    def end_s(self) -> float | None:
        if self.kind == "agent_kill":
            return self.at_s + self.restart_after_s
        return None if self.duration_s is None else self.at_s + self.duration_s


@dataclass(frozen=True)
class Device:
    """The emulated board and agent settings for the scenario."""

    family: str = "BM1370"
    chips: int = 4
    difficulty: float | None = None  # emulation difficulty of the nonces (default: emulator's)
    seed: int = 1
    ambient_c: float = 25.0
    agent: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Measure:
    """How the summary figures are measured."""

    settle_s: float = 2.0  # after |step| / ramp: the governor's delay and settling
    min_step_pct: float = 5.0
    ramp_window_s: float = 1.0
    ramp_tolerance_pct: float = 3.0
    cap_tolerance_pct: float = 1.0
    temp_max_c: float | None = None
    exempt_after_fault_s: float = 10.0


@dataclass(frozen=True)
class Short:
    """How tests/hil plays the short version: `speed` and optionally only events before `until_s`,
    with `criteria` overriding the full run's bounds."""

    speed: float = 1.0
    until_s: float | None = None
    criteria: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Scenario:
    """A parsed, validated scenario. Lists are sorted by time."""

    name: str
    path: Path | None
    duration_s: float
    description: str = ""
    warmup_s: float = 60.0
    initial_pct: float | None = 50.0
    validity_s: float = 600.0
    device: Device = field(default_factory=Device)
    grid: tuple[GridEvent, ...] = ()
    ambient: tuple[AmbientPoint, ...] = ()
    faults: tuple[Fault, ...] = ()
    criteria: dict[str, float] = field(default_factory=dict)
    measure: Measure = field(default_factory=Measure)
    short: Short = field(default_factory=Short)

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
        return replace(
            self,
            duration_s=min(self.duration_s, until_s),
            grid=grid,
            faults=faults,
            ambient=ambient,
            criteria={**self.criteria, **self.short.criteria},
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


_ABSENT = object()  # a key the table does not have


class _Table:
    """One TOML table being read: every key must be consumed, leftovers are errors."""

    def __init__(self, where: str, data: Any, source: str) -> None:
        self.where = where
        self.source = source
        if not isinstance(data, dict):
            raise self.error(f"must be a table, got {type(data).__name__}")
        self.data = data
        self.used: set[str] = set()

    def error(self, message: str, key: str | None = None) -> ScenarioError:
        name = f"{self.where}.{key}" if key and self.where else (key or self.where or "top level")
        return ScenarioError(f"{self.source}: {name}: {message}")

    def has(self, key: str) -> bool:
        return key in self.data

    def raw(self, key: str) -> Any:
        self.used.add(key)
        return self.data.get(key)

    def _take(self, key: str, required: bool, hint: str = "") -> Any:
        """The value of `key` (marked used), or _ABSENT; a missing required key is an error."""
        self.used.add(key)
        if key in self.data:
            return self.data[key]
        if required:
            raise self.error("is required" + hint, key)
        return _ABSENT

    def number(
        self,
        key: str,
        default: float | None = None,
        *,
        required: bool = False,
        lo: float | None = None,
        hi: float | None = None,
        lo_open: bool = False,
    ) -> float | None:
        value = self._take(key, required)
        if value is _ABSENT:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(f"must be a number, got {value!r}", key)
        value = float(value)
        if not math.isfinite(value):
            raise self.error(f"must be finite, got {value!r}", key)
        below = lo is not None and (value < lo or (lo_open and value == lo))
        above = hi is not None and value > hi
        if below or above:
            if lo is not None and hi is not None:
                rng = f"in {'(' if lo_open else '['}{lo:g}, {hi:g}]"
            elif lo is not None:
                rng = f"> {lo:g}" if lo_open else f">= {lo:g}"
            else:
                rng = f"<= {hi:g}"
            raise self.error(f"must be {rng}, got {value:g}", key)
        return value

    def integer(
        self, key: str, default: int | None = None, *, lo: int | None = None,
        hi: int | None = None, required: bool = False,
    ) -> int | None:
        value = self._take(key, required)
        if value is _ABSENT:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(f"must be an integer, got {value!r}", key)
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            bounds = f"{lo if lo is not None else '-inf'}..{hi if hi is not None else 'inf'}"
            raise self.error(f"must be in {bounds}, got {value}", key)
        return value

    def text(
        self, key: str, default: str | None = None, *, choices: tuple[str, ...] | None = None,
        required: bool = False,
    ) -> str | None:
        value = self._take(key, required, f" (one of {', '.join(choices)})" if choices else "")
        if value is _ABSENT:
            return default
        if not isinstance(value, str):
            raise self.error(f"must be a string, got {value!r}", key)
        if choices is not None and value not in choices:
            hint = _did_you_mean(value, choices)
            raise self.error(f"must be one of {', '.join(choices)}, got {value!r}{hint}", key)
        return value

    def boolean(self, key: str, default: bool) -> bool:
        self.used.add(key)
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            raise self.error(f"must be true or false, got {value!r}", key)
        return value

    def allow(self, keys: tuple[str, ...] | set[str]) -> None:
        """Reject any key not in `keys` now, before the values are read."""
        for key in self.data:
            if key not in keys:
                hint = _did_you_mean(key, sorted(keys))
                raise self.error(f"unknown key{hint}", key)

    def finish(self) -> None:
        unknown = [k for k in self.data if k not in self.used]
        if unknown:
            key = unknown[0]
            hint = _did_you_mean(key, sorted(self.used))
            raise self.error(f"unknown key{hint}", key)


def _did_you_mean(value: str, choices: Any) -> str:
    close = difflib.get_close_matches(value, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _array_of_tables(top: _Table, key: str) -> list[_Table]:
    value = top.raw(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise top.error(f"must be an array of tables ([[{key}]]), got {type(value).__name__}", key)
    return [_Table(f"{key}[{i}]", item, top.source) for i, item in enumerate(value)]


def _sub_table(top: _Table, key: str) -> _Table:
    value = top.raw(key)
    return _Table(key, {} if value is None else value, top.source)


def _parse_clouds(t: _Table) -> tuple[Cloud, ...]:
    value = t.raw("clouds")
    if value is None:
        return ()
    if not isinstance(value, list):
        raise t.error("must be an array of tables like { at_h = 11.0, depth_pct = 50 }", "clouds")
    clouds = []
    for i, item in enumerate(value):
        c = _Table(f"{t.where}.clouds[{i}]", item, t.source)
        cloud = Cloud(
            at_h=float(c.number("at_h", required=True, lo=0.0, hi=24.0) or 0.0),
            depth_pct=float(c.number("depth_pct", 50.0, lo=0.0, hi=100.0) or 0.0),
            width_h=float(c.number("width_h", 0.5, lo=0.0, lo_open=True, hi=24.0) or 0.5),
        )
        c.finish()
        clouds.append(cloud)
    return tuple(sorted(clouds, key=lambda c: c.at_h))


def _parse_surplus(t: _Table) -> SurplusSpec:
    d = SurplusSpec()
    spec = SurplusSpec(
        day_start_h=_f(t.number("day_start_h", d.day_start_h, lo=0.0, hi=24.0)),
        day_end_h=_f(t.number("day_end_h", d.day_end_h, lo=0.0, hi=48.0)),
        sunrise_h=_f(t.number("sunrise_h", d.sunrise_h, lo=0.0, hi=24.0)),
        sunset_h=_f(t.number("sunset_h", d.sunset_h, lo=0.0, hi=24.0)),
        solar_pct=_f(t.number("solar_pct", d.solar_pct, lo=0.0, hi=1000.0)),
        wind_pct=_f(t.number("wind_pct", d.wind_pct, lo=0.0, hi=1000.0)),
        wind_period_h=_f(t.number("wind_period_h", d.wind_period_h, lo=0.0, lo_open=True)),
        demand_pct=_f(t.number("demand_pct", d.demand_pct, lo=0.0, hi=1000.0)),
        floor_pct=_f(t.number("floor_pct", d.floor_pct, lo=0.0, hi=100.0)),
        ceiling_pct=_f(t.number("ceiling_pct", d.ceiling_pct, lo=0.0, hi=100.0)),
        interval_s=_f(t.number("interval_s", d.interval_s, lo=0.1)),
        deadband_pct=_f(t.number("deadband_pct", d.deadband_pct, lo=0.0, hi=100.0)),
        clouds=_parse_clouds(t),
    )
    if spec.day_end_h <= spec.day_start_h:
        raise t.error(f"must be after day_start_h ({spec.day_start_h:g})", "day_end_h")
    if spec.sunset_h <= spec.sunrise_h:
        raise t.error(f"must be after sunrise_h ({spec.sunrise_h:g})", "sunset_h")
    if spec.ceiling_pct < spec.floor_pct:
        raise t.error(f"must be >= floor_pct ({spec.floor_pct:g})", "ceiling_pct")
    return spec


def _f(value: float | None) -> float:
    assert value is not None
    return float(value)


_GRID_KEYS = ("at_s", "op", "label", "ramp_w_s", "validity_s", "fallback")
_GRID_OP_KEYS: dict[str, tuple[str, ...]] = {
    "setpoint": ("power_pct", "power_w"),
    "surplus": ("until_s", "clouds", *(f.name for f in fields(SurplusSpec) if f.name != "clouds")),
    "reserve": ("product", "direction", "amount_pct", "time_scale", "response_s", "hold_s"),
}
_FAULT_KEYS: dict[str, tuple[str, ...]] = {
    "broker_outage": ("duration_s",),
    "serial_garbage": ("duration_s", "link", "rate_bps"),
    "chip_death": ("chip", "duration_s"),
    "stuck_sensor": ("chip", "duration_s"),
    "agent_kill": ("restart_after_s",),
}


def _parse_grid_event(t: _Table, duration_s: float) -> GridEvent:
    op_value = t.data.get("op")
    if isinstance(op_value, str) and op_value in GRID_OPS:
        t.allow((*_GRID_KEYS, *_GRID_OP_KEYS.get(op_value, ())))
    at_s = _f(t.number("at_s", required=True, lo=0.0, hi=duration_s))
    op = t.text("op", required=True, choices=GRID_OPS)
    label = t.text("label", "") or ""
    ramp = t.integer("ramp_w_s", None, lo=1)
    validity = t.number("validity_s", None, lo=1.0)
    fallback = t.text("fallback", None, choices=FALLBACKS)
    event = GridEvent(at_s=at_s, op=str(op), label=label, ramp_w_s=ramp, validity_s=validity,
                      fallback=fallback)
    if op == "setpoint":
        if t.has("power_pct") == t.has("power_w"):
            raise t.error("a setpoint needs exactly one of power_pct or power_w", "power_pct")
        event = replace(
            event,
            power_pct=t.number("power_pct", None, lo=0.0, hi=100.0),
            power_w=t.number("power_w", None, lo=0.0),
        )
    elif op == "surplus":
        until_s = _f(t.number("until_s", required=True, lo=0.0, hi=duration_s))
        if until_s <= at_s:
            raise t.error(f"must be after at_s ({at_s:g})", "until_s")
        event = replace(event, until_s=until_s, surplus=_parse_surplus(t))
    elif op == "reserve":
        product = t.text("product", "secondary1", choices=tuple(RESERVE_PRODUCTS))
        event = replace(
            event,
            product=product,
            direction=str(t.text("direction", "decrease", choices=DIRECTIONS)),
            amount_pct=_f(t.number("amount_pct", required=True, lo=0.0, lo_open=True, hi=100.0)),
            time_scale=_f(t.number("time_scale", 60.0, lo=0.0, lo_open=True)),
            response_s=t.number("response_s", None, lo=0.0, lo_open=True),
            hold_s=t.number("hold_s", None, lo=0.0, lo_open=True),
        )
        if event.end_s() > duration_s:
            raise t.error(
                f"the {product} test ends at {event.end_s():g} s, after scenario.duration_s "
                f"({duration_s:g}); move it earlier or raise time_scale", "at_s"
            )
    t.finish()
    return event


def _parse_fault(t: _Table, duration_s: float) -> Fault:
    kind = str(t.text("kind", required=True, choices=FAULT_KINDS))
    t.allow(("at_s", "kind", "label", *_FAULT_KEYS[kind]))
    fault = Fault(
        at_s=_f(t.number("at_s", required=True, lo=0.0, hi=duration_s)),
        kind=kind,
        label=t.text("label", "") or "",
    )
    if kind == "broker_outage":
        fault = replace(fault, duration_s=_f(t.number("duration_s", required=True, lo=0.1)))
    elif kind == "serial_garbage":
        fault = replace(
            fault,
            duration_s=_f(t.number("duration_s", required=True, lo=0.1)),
            link=str(t.text("link", "chain", choices=LINKS)),
            rate_bps=int(t.integer("rate_bps", 200, lo=1, hi=100_000) or 200),
        )
    elif kind in ("chip_death", "stuck_sensor"):
        fault = replace(
            fault,
            chip=int(t.integer("chip", 0, lo=0, hi=255) or 0),
            duration_s=t.number("duration_s", None, lo=0.1),
        )
    elif kind == "agent_kill":
        fault = replace(
            fault, restart_after_s=_f(t.number("restart_after_s", 2.0, lo=0.0, hi=3600.0))
        )
    t.finish()
    return fault


def _parse_criteria(t: _Table) -> dict[str, float]:
    criteria: dict[str, float] = {}
    for key in list(t.data):
        if key not in CRITERIA:
            hint = _did_you_mean(key, CRITERIA)
            raise t.error(f"unknown criterion{hint}; known: {', '.join(CRITERIA)}", key)
        criteria[key] = _f(t.number(key, lo=0.0))
    t.finish()
    return criteria


def parse(data: dict[str, Any], source: str = "<scenario>", path: Path | None = None) -> Scenario:
    """Validate a scenario from its TOML data; raises ScenarioError naming the bad key."""
    top = _Table("", data, source)
    head = _sub_table(top, "scenario")
    name = head.text("name", path.stem if path else None, required=path is None)
    duration_s = _f(head.number("duration_s", required=True, lo=1.0, hi=7 * 86400.0))
    description = head.text("description", "") or ""
    warmup_s = _f(head.number("warmup_s", 60.0, lo=0.0, hi=3600.0))
    initial = head.number("initial_pct", 50.0, lo=0.0, hi=100.0)
    validity_s = _f(head.number("validity_s", 600.0, lo=1.0, hi=86400.0))
    head.finish()

    dev = _sub_table(top, "device")
    agent_cfg = dev.raw("agent")
    if agent_cfg is not None and not isinstance(agent_cfg, dict):
        raise dev.error("must be a table of agent config keys", "agent")
    device = Device(
        family=str(dev.text("family", "BM1370")),
        chips=int(dev.integer("chips", 4, lo=1, hi=256) or 4),
        difficulty=dev.number("difficulty", None, lo=1e-12, lo_open=False, hi=2.0**32),
        seed=int(dev.integer("seed", 1) or 0),
        ambient_c=_f(dev.number("ambient_c", 25.0, lo=-40.0, hi=80.0)),
        agent=dict(agent_cfg or {}),
    )
    dev.finish()

    grid = [_parse_grid_event(t, duration_s) for t in _array_of_tables(top, "grid")]
    grid.sort(key=lambda e: e.at_s)
    for a, b in itertools.pairwise(grid):
        if a.op in ("surplus", "reserve") and b.at_s < a.end_s():
            raise ScenarioError(
                f"{source}: grid: the {b.op} event at {b.at_s:g} s starts inside the {a.op} "
                f"event at {a.at_s:g}..{a.end_s():g} s"
            )

    ambient = []
    for t in _array_of_tables(top, "ambient"):
        ambient.append(AmbientPoint(
            at_s=_f(t.number("at_s", required=True, lo=0.0, hi=duration_s)),
            temp_c=_f(t.number("temp_c", required=True, lo=-40.0, hi=80.0)),
        ))
        t.finish()
    ambient.sort(key=lambda a: a.at_s)

    faults = sorted(
        (_parse_fault(t, duration_s) for t in _array_of_tables(top, "fault")),
        key=lambda f: f.at_s,
    )

    criteria = {k: v for k, v in CRITERIA.items() if v is not None}
    criteria.update(_parse_criteria(_sub_table(top, "criteria")))

    m = _sub_table(top, "measure")
    dm = Measure()
    measure = Measure(
        settle_s=_f(m.number("settle_s", dm.settle_s, lo=0.0, hi=600.0)),
        min_step_pct=_f(m.number("min_step_pct", dm.min_step_pct, lo=0.0, hi=100.0)),
        ramp_window_s=_f(m.number("ramp_window_s", dm.ramp_window_s, lo=0.1, hi=60.0)),
        ramp_tolerance_pct=_f(m.number("ramp_tolerance_pct", dm.ramp_tolerance_pct, lo=0.0)),
        cap_tolerance_pct=_f(m.number("cap_tolerance_pct", dm.cap_tolerance_pct, lo=0.0)),
        temp_max_c=m.number("temp_max_c", None, lo=0.0, hi=150.0),
        exempt_after_fault_s=_f(m.number("exempt_after_fault_s", dm.exempt_after_fault_s,
                                         lo=0.0)),
    )
    m.finish()

    s = _sub_table(top, "short")
    short_criteria_raw = s.raw("criteria")
    short = Short(
        speed=_f(s.number("speed", 1.0, lo=0.01, lo_open=False, hi=1000.0)),
        until_s=s.number("until_s", None, lo=1.0, hi=duration_s),
        criteria=_parse_criteria(_Table("short.criteria", short_criteria_raw or {}, source)),
    )
    s.finish()
    top.finish()
    return Scenario(
        name=str(name),
        path=path,
        duration_s=duration_s,
        description=description,
        warmup_s=warmup_s,
        initial_pct=initial,
        validity_s=validity_s,
        device=device,
        grid=tuple(grid),
        ambient=tuple(ambient),
        faults=tuple(faults),
        criteria=criteria,
        measure=measure,
        short=short,
    )


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
    path = resolve(name_or_path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read: {exc.strerror}") from None
    return parse(data, source=str(path), path=path)


def available() -> list[Path]:
    """The scenario files shipped in hil/scenarios/."""
    return sorted(SCENARIO_DIR.glob("*.toml"))
