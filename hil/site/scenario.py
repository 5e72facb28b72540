"""Site scenarios: a whole site (a fleet of virtual devices behind `gridminer site`) following a
grid operator, side by side with today's fleet tools (`hil.site.baseline`).

A site scenario is a TOML file in hil/scenarios/site/ with a `[site]` table; the other tables
are those of the single-board scenarios where they mean the same (`[[grid]]` events are read by
`hil.scenario`, so a surplus day, a setpoint, `curtail` and `resume` are written alike; power
levels are % of the site rating: the fleet's, 1,154 W a device). Times are scenario seconds;
`--speed X` plays the whole schedule X times faster, the regulation signal included (the
fleet's physics stay real time).

```toml
[scenario]
name = "site_surplus"
duration_s = 2200

[site]
devices = 1300                 # virtual devices (hil.fleet's mix): 1.5 MW together
ramp_pct_s = 50                # the site's declared ramp limit, % of its rating per second
side_by_side = "parallel"      # the baseline on a second, equal fleet (or "sequential", "none")

[[grid]]                       # as in hil.scenario: surplus, setpoint, curtail, resume
at_s = 0
op = "setpoint"
power_pct = 20

[[regulation]]                 # a regulation signal (hil.site.signal) updated every period_s
at_s = 1560
duration_s = 600
basepoint_pct = 55
band_pct = 30

[[fault]]
at_s = 500
kind = "kill_devices"          # a power cut on `share` of the devices
share = 0.1

[[fault]]
at_s = 800
kind = "site_kill"             # the site controller SIGKILLed, started again after restart_after_s

[criteria]                     # bounds on summary figures (lower bounds for scores, see CRITERIA)
tracking_rms_pct = 1.0

[short]                        # what `--short`, `make demo-site` and tests/hil play
speed = 10
devices = 1300
```
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from agent.errors import ConfigError
from agent.tomlschema import build, convert, fmt, key, read_toml, reject_unknown
from hil.scenario import (
    GridEvent,
    ScenarioError,
    checked,
    parse,
    read_criteria,
    read_file,
    read_short,
)

SITE_SCENARIO_DIR = Path(__file__).parents[1] / "scenarios" / "site"
SIDE_BY_SIDE = ("parallel", "sequential", "none")
FAULT_KINDS = ("kill_devices", "site_kill")
SITE_OPS = ("setpoint", "surplus", "curtail", "resume")

#: The summary figures a scenario may bound: "max" (the figure must be <= the bound) or "min"
#: (>=), with the bound every scenario gets unless it sets one.
CRITERIA: dict[str, tuple[str, float | None]] = {
    "tracking_rms_pct": ("max", None),  # gridminer's, % of the site rating
    "tracking_max_pct": ("max", None),
    "step_p90_s": ("max", None),  # 90 % of each step of min_step_pct or more
    "ramp_violations": ("max", 0.0),  # site power moving faster than the declared ramp
    "regulation_score": ("min", 0.75),  # PJM's RegD performance score (pass 0.75)
    "commands_per_s": ("max", None),  # the site's commands to its devices, mean over the run
    "commands_unacked": ("max", None),  # the grid operator's commands the site never acked
    "tracking_rms_ratio": ("max", None),  # gridminer / baseline
    "step_p90_ratio": ("max", None),
    "energy_off_target_ratio": ("max", None),
}


@dataclass(frozen=True)
class SiteSpec:
    """[site]: the fleet (devices, seed of its mix), the site's declared ramp limit, how
    the baseline runs beside it, and the meter at the point of connection (the fleet's true
    power published every `meter_period_s`; 0: the site sums its devices' telemetry)."""

    devices: int = key(1300, lo=1, hi=20_000)
    seed: int = key(1)
    ramp_pct_s: float = key(50.0, lo=0.1, hi=1000.0)
    side_by_side: str = key("parallel", choices=SIDE_BY_SIDE)
    meter_period_s: float = key(0.25, lo=0.0, hi=10.0)
    restart_spread_s: float = key(5.0, lo=0.0, hi=600.0)  # the devices' cold-start spread
    fleet_processes: int = key(1, lo=1, hi=64)  # each fleet split over this many processes
    device_control_period_s: float = key(1.0, lo=0.05, hi=10.0)  # each device's control tick
    baseline_confirm_s: float = key(5.0, lo=0.1, hi=600.0)

    def rating_w(self) -> float:
        """The fleet's rating: its mix's (hil.fleet.mix: 1,154 W a device, 1.5 MW for 1,300)."""
        from hil.fleet.mix import DEFAULT_MIX, specs

        return sum(d.rating_w for d in specs(DEFAULT_MIX, self.devices, self.seed))

    def ramp_w_s(self) -> float:
        """The declared site ramp limit (W/s)."""
        return self.rating_w() * self.ramp_pct_s / 100.0


@dataclass(frozen=True)
class Regulation:
    """[[regulation]]: from `at_s` for `duration_s`, the site target is basepoint + band x a
    regulation signal (`hil.site.signal`) updated every `period_s`; % of the site rating."""

    at_s: float = key(lo=0.0)
    duration_s: float = key(600.0, lo=60.0)
    basepoint_pct: float = key(55.0, lo=0.0, hi=100.0)
    band_pct: float = key(30.0, lo=0.0, lo_open=True, hi=100.0)
    period_s: float = key(4.0, lo=0.5, hi=60.0)
    seed: int = key(1)
    label: str = key("regulation")

    @property
    def end_s(self) -> float:
        return self.at_s + self.duration_s


@dataclass(frozen=True)
class SiteFault:
    """[[fault]]: `kill_devices` cuts the power of `share` of the devices (seeded, the same on
    both fleets); `site_kill` SIGKILLs the site controller and starts it again after
    `restart_after_s`."""

    at_s: float = key(lo=0.0)
    kind: str = key(choices=FAULT_KINDS)
    share: float = key(0.1, lo=0.0, lo_open=True, hi=1.0)
    restart_after_s: float = key(10.0, lo=0.0, hi=3600.0)
    label: str = key("")


@dataclass(frozen=True)
class SiteMeasure:
    """How the figures are measured (see `hil.site.report`)."""

    settle_s: float = key(2.0, lo=0.0, hi=600.0)  # after |step| / ramp: delay and settling
    min_step_pct: float = key(5.0, lo=0.0, hi=100.0)  # smaller steps have no response time
    ramp_window_s: float = key(1.0, lo=0.1, hi=60.0)
    ramp_tolerance_pct: float = key(3.0, lo=0.0)
    exempt_after_fault_s: float = key(10.0, lo=0.0)  # tracking not judged after a fault


@dataclass(frozen=True)
class SiteShort:
    """[short]: the short version's speed, fleet size and criteria overrides."""

    speed: float = key(10.0, lo=0.01, hi=1000.0)
    devices: int | None = key(None, lo=1, hi=20_000)
    criteria: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class SiteScenario:
    """A parsed, validated site scenario; lists by time."""

    name: str
    path: Path | None
    duration_s: float
    description: str
    warmup_s: float
    validity_s: float
    site: SiteSpec
    grid: tuple[GridEvent, ...]
    regulation: tuple[Regulation, ...]
    faults: tuple[SiteFault, ...]
    measure: SiteMeasure
    criteria: dict[str, float]
    short: SiteShort

    def shortened(self) -> SiteScenario:
        """The short version: its fleet size and criteria (its speed is the caller's default)."""
        site = self.site if self.short.devices is None else replace(
            self.site, devices=self.short.devices)
        return replace(self, site=site, criteria={**self.criteria, **self.short.criteria})


# --------------------------------------------------------------------------- parsing

SECTIONS = ("scenario", "site", "grid", "regulation", "fault", "measure", "criteria", "short")


@dataclass(frozen=True)
class Head:
    """[scenario]: its name (default: the file's), length, warm-up bound (the fleets' start-up)
    and the validity of the operator's commands (scenario seconds)."""

    duration_s: float = key(lo=1.0, hi=7 * 86400.0)
    name: str = key("")
    description: str = key("")
    warmup_s: float = key(120.0, lo=0.0, hi=3600.0)
    validity_s: float = key(600.0, lo=1.0, hi=86400.0)


def _head(raw: Any, path: Path | None) -> Head:
    head = build(Head, "scenario", raw)
    if not head.name:
        if path is None:
            raise ConfigError("scenario.name: required (no file to name it after)")
        head = replace(head, name=path.stem)
    return head


def _grid(raw: Any, head: Head) -> tuple[GridEvent, ...]:
    """The [[grid]] events, read and checked by hil.scenario (power as % of the site rating)."""
    items = convert(tuple[dict[str, Any], ...], raw, "grid")
    for i, t in enumerate(items):
        if t.get("op") not in SITE_OPS:
            raise ConfigError(f"grid[{i}].op: {fmt(t.get('op'))} is not one of "
                              f"{', '.join(SITE_OPS)} (a site scenario)")
    data = {"scenario": {"name": head.name, "duration_s": head.duration_s,
                         "initial_pct": None}, "grid": list(items)}
    try:
        return parse(data, source="").grid
    except ScenarioError as exc:
        raise ConfigError(str(exc).removeprefix(": ")) from None


def _regulation(raw: Any, duration_s: float,
                grid: tuple[GridEvent, ...]) -> tuple[Regulation, ...]:
    items = convert(tuple[dict[str, Any], ...], raw, "regulation")
    out = []
    for i, t in enumerate(items):
        where = f"regulation[{i}]"
        reg = build(Regulation, where, t, overrides={"at_s": {"hi": duration_s}})
        if reg.end_s > duration_s:
            raise ConfigError(f"{where}.duration_s: the signal ends at {reg.end_s:g} s, after "
                              f"scenario.duration_s ({duration_s:g})")
        if reg.basepoint_pct + reg.band_pct > 100.0 or reg.basepoint_pct < reg.band_pct:
            raise ConfigError(f"{where}.band_pct: basepoint {reg.basepoint_pct:g} % +- band "
                              f"{reg.band_pct:g} % leaves 0..100 % of the site rating")
        for e in grid:
            if reg.at_s <= e.at_s < reg.end_s or e.at_s <= reg.at_s < e.end_s():
                raise ConfigError(f"{where}.at_s: the signal ({reg.at_s:g}..{reg.end_s:g} s) "
                                  f"overlaps the grid's {e.op} at {e.at_s:g} s")
        out.append(reg)
    out.sort(key=lambda r: r.at_s)
    for a, b in itertools.pairwise(out):
        if b.at_s < a.end_s:
            raise ConfigError(f"regulation: the signal at {b.at_s:g} s starts inside the one at "
                              f"{a.at_s:g}..{a.end_s:g} s")
    return tuple(out)


def _faults(raw: Any, duration_s: float) -> tuple[SiteFault, ...]:
    items = convert(tuple[dict[str, Any], ...], raw, "fault")
    own = {"kill_devices": ("share",), "site_kill": ("restart_after_s",)}
    out = []
    for i, t in enumerate(items):
        kind = t.get("kind")
        allow = ("at_s", "kind", "label", *own.get(kind, ("share", "restart_after_s")))
        keys = allow if kind in own else ("at_s", "kind")  # a bad kind: its error first
        out.append(build(SiteFault, f"fault[{i}]", t, keys=keys, allow=allow,
                         overrides={"at_s": {"hi": duration_s}}))
    return tuple(sorted(out, key=lambda f: f.at_s))


def _scenario(data: Any, path: Path | None) -> SiteScenario:
    if not isinstance(data, Mapping):
        raise ConfigError(f"top level: expected a table, got {fmt(data)}")
    reject_unknown("", data, SECTIONS, noun="section")
    if "site" not in data:
        raise ConfigError("site: required (a site scenario has a [site] table)")
    head = _head(data.get("scenario", {}), path)
    duration_s = head.duration_s
    site = build(SiteSpec, "site", data["site"])
    grid = _grid(data.get("grid", ()), head)
    regulation = _regulation(data.get("regulation", ()), duration_s, grid)
    if not grid and not regulation:
        raise ConfigError("grid: a site scenario needs [[grid]] events or a [[regulation]]")
    criteria = {k: bound for k, (_, bound) in CRITERIA.items() if bound is not None}
    criteria.update(read_criteria("criteria", data.get("criteria", {}), CRITERIA))
    short = read_short(SiteShort, data.get("short", {}), ("speed", "devices"), CRITERIA)
    return SiteScenario(
        name=head.name, path=path, duration_s=duration_s, description=head.description,
        warmup_s=head.warmup_s, validity_s=head.validity_s, site=site, grid=grid,
        regulation=regulation, faults=_faults(data.get("fault", ()), duration_s),
        measure=build(SiteMeasure, "measure", data.get("measure", {})), criteria=criteria,
        short=short)


def parse_site(data: dict[str, Any], source: str = "<site scenario>",
               path: Path | None = None) -> SiteScenario:
    """Validate a site scenario from its TOML data; ScenarioError names the file and the key."""
    return checked(_scenario, data, source, path)


def resolve_site(name_or_path: str | Path) -> Path | None:
    """The site scenario a name or path means: a file with a [site] table, or a name in
    hil/scenarios/site/; None when it is no site scenario."""
    path = Path(name_or_path)
    if not path.is_file():
        stem = path.name if path.suffix != ".toml" else path.stem
        candidate = SITE_SCENARIO_DIR / f"{stem}.toml"
        return candidate if candidate.is_file() else None
    try:
        return path if "site" in read_toml(path) else None
    except ConfigError:
        return None


def load_site(name_or_path: str | Path) -> SiteScenario:
    """Read and validate a site scenario (a path, or a name from hil/scenarios/site/)."""
    path = resolve_site(name_or_path)
    if path is None:
        known = ", ".join(p.stem for p in available_sites())
        raise ScenarioError(f"{name_or_path}: no such site scenario (built in: {known})")
    return read_file(_scenario, path)


def available_sites() -> list[Path]:
    """The site scenarios shipped in hil/scenarios/site/."""
    return sorted(SITE_SCENARIO_DIR.glob("*.toml"))
