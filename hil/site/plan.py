"""A site scenario's schedule as the grid operator plays it: the `[[grid]]` events planned by
`hil.gridsim.plan` (the site rating stands for a device's rated power) and each `[[regulation]]`
segment as one setpoint a signal update (`hil.site.signal`)."""

from __future__ import annotations

from hil.gridsim import Caps, PlannedCommand, plan
from hil.scenario import Device, Scenario
from hil.site.scenario import Regulation, SiteScenario
from hil.site.signal import RegulationSignal


def site_caps(s: SiteScenario) -> Caps:
    """The site as the plan sees it: 0 .. its rating, its declared ramp."""
    return Caps(min_w=0.0, max_w=s.site.rating_w(), ramp_max_w_s=s.site.ramp_w_s())


def signal_of(reg: Regulation) -> RegulationSignal:
    return RegulationSignal.generate(reg.duration_s, period_s=reg.period_s, seed=reg.seed)


def regulation_commands(reg: Regulation, rating_w: float) -> list[PlannedCommand]:
    """One setpoint per update of the segment's signal (basepoint + band x signal)."""
    signal = signal_of(reg)
    base_w, band_w = rating_w * reg.basepoint_pct / 100.0, rating_w * reg.band_pct / 100.0
    return [PlannedCommand(at_s, "setpoint", round(base_w + band_w * value),
                           label=f"{reg.label} {value:+.2f}", kind="regulation")
            for at_s, value in signal.points(reg.at_s) if at_s < reg.end_s]


def site_plan(s: SiteScenario) -> list[PlannedCommand]:
    """Every command of the scenario, by scenario time."""
    single = Scenario(name=s.name, path=s.path, duration_s=s.duration_s, initial_pct=None,
                      validity_s=s.validity_s, device=Device(seed=s.site.seed), grid=s.grid)
    commands = plan(single, site_caps(s))
    for reg in s.regulation:
        commands += regulation_commands(reg, s.site.rating_w())
    return sorted(commands, key=lambda c: c.at_s)
