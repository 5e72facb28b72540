"""Grid-operator simulator: turns a scenario's grid events into a timed plan of signed commands
and sends them through a `CommandSender` (the operator's signer on a real broker in the rig).

* `SurplusCurve` is a renewable-surplus day: a solar bell with cloud dips plus seeded wind, minus
  the site's demand, as % of the device's rated power, clamped to [floor, ceiling].
* `plan(scenario, caps, speed)` expands surplus curves into setpoints, balancing-market reserve
  tests into a step and a release, and resolves % of rated power into watts.
* `GridSimulator.poll(t_s)` sends every planned command that is due at scenario time `t_s` and
  records what was sent; acks are matched later by command id.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from hil.scenario import GridEvent, Scenario, SurplusSpec


@dataclass(frozen=True)
class Caps:
    """What the device declared in its status `caps` (spec section 5)."""

    min_w: float
    max_w: float
    ramp_max_w_s: float
    chips: int = 0
    chip_model: str = ""
    hashrate_max_ghs: float = 0.0

    @classmethod
    def from_status(cls, caps: dict[str, Any]) -> Caps:
        return cls(
            min_w=float(caps.get("min_w", 0.0)),
            max_w=float(caps["max_w"]),
            ramp_max_w_s=float(caps["ramp_max_w_s"]),
            chips=int(caps.get("chips", 0)),
            chip_model=str(caps.get("chip_model", "")),
            hashrate_max_ghs=float(caps.get("hashrate_max_ghs", 0.0)),
        )

    def watts(self, pct: float) -> float:
        """`pct` of rated power (max_w), clamped into [min_w, max_w]."""
        return self.clamp(self.max_w * pct / 100.0)

    def clamp(self, power_w: float) -> float:
        return min(self.max_w, max(self.min_w, power_w))


class SurplusCurve:
    """Renewable surplus over a day, in % of rated power, as a function of the hour of day."""

    def __init__(self, spec: SurplusSpec, seed: int = 1) -> None:
        self.spec = spec
        rng = random.Random(seed)
        # three wind components with seeded phases; periods in hours
        self._wind = [
            (spec.wind_period_h * k, rng.uniform(0.0, 2 * math.pi), amp)
            for k, amp in ((1.0, 1.0), (0.53, 0.5), (0.29, 0.3))
        ]

    def solar(self, hour: float) -> float:
        """Clear-sky solar output, 0..1 (a sine bell between sunrise and sunset)."""
        s = self.spec
        if not s.sunrise_h < hour < s.sunset_h:
            return 0.0
        x = (hour - s.sunrise_h) / (s.sunset_h - s.sunrise_h)
        return math.sin(math.pi * x) ** 1.5

    def cloud_factor(self, hour: float) -> float:
        """Share of the solar output left by the clouds at `hour` (1 = no cloud)."""
        factor = 1.0
        for c in self.spec.clouds:
            z = 2.0 * (hour - c.at_h) / c.width_h
            factor *= 1.0 - (c.depth_pct / 100.0) * math.exp(-(z**4))  # flat top, quick edges
        return factor

    def wind(self, hour: float) -> float:
        """Wind output, 0..1 (smooth, seeded)."""
        total = sum(a for _, _, a in self._wind)
        value = sum(a * math.sin(2 * math.pi * hour / p + ph) for p, ph, a in self._wind)
        return 0.5 + 0.5 * value / total

    def raw_pct(self, hour: float) -> float:
        """Surplus before clamping: solar with clouds plus wind minus demand (% of rated)."""
        s = self.spec
        return (s.solar_pct * self.solar(hour) * self.cloud_factor(hour)
                + s.wind_pct * self.wind(hour) - s.demand_pct)

    def pct(self, hour: float) -> float:
        """The setpoint the operator wants at `hour`, % of rated, in [floor_pct, ceiling_pct]."""
        s = self.spec
        return min(s.ceiling_pct, max(s.floor_pct, self.raw_pct(hour)))

    def hour_at(self, t_s: float, start_s: float, end_s: float) -> float:
        """Hour of the compressed day at scenario time `t_s` of a segment start_s..end_s."""
        s = self.spec
        k = (t_s - start_s) / (end_s - start_s)
        return s.day_start_h + min(1.0, max(0.0, k)) * (s.day_end_h - s.day_start_h)


@dataclass(frozen=True)
class PlannedCommand:
    """A command of the plan, at scenario time `at_s`, power resolved to watts."""

    at_s: float
    op: str
    power_w: int | None = None
    ramp_w_s: int | None = None
    validity_s: float | None = None
    fallback: str | None = None
    label: str = ""
    kind: str = "command"  # command | surplus | reserve | release | initial
    reserve: ReserveTest | None = None


@dataclass(frozen=True)
class ReserveTest:
    """A balancing-market product test: from `baseline_w` to `target_w` within `response_s`
    (scenario seconds), held for `hold_s`."""

    product: str
    direction: str
    at_s: float
    baseline_w: float
    target_w: float
    requested_w: float
    offered_w: float
    response_s: float
    hold_s: float


def _pct_label(pct: float) -> str:
    return f"{pct:.0f}%"


def plan(scenario: Scenario, caps: Caps, speed: float = 1.0,
         latency_s: float = 1.0) -> list[PlannedCommand]:
    """The scenario's grid events as a time-ordered list of commands (scenario time).

    A reserve test offers what the device can deliver within the product's response time at
    this `speed`: at most its declared ramp times (response time - `latency_s`)."""
    out: list[PlannedCommand] = []
    level_w = caps.watts(scenario.initial_pct) if scenario.initial_pct is not None else caps.max_w
    seed = scenario.device.seed
    events = list(scenario.grid)
    for index, event in enumerate(events):
        next_at = events[index + 1].at_s if index + 1 < len(events) else scenario.duration_s
        common: dict[str, Any] = {
            "ramp_w_s": event.ramp_w_s, "validity_s": event.validity_s, "fallback": event.fallback,
        }
        if event.op == "surplus":
            cmds = _surplus_commands(event, caps, seed, common)  # one wind for the whole day
            out.extend(cmds)
            if cmds:
                level_w = float(cmds[-1].power_w or level_w)
        elif event.op == "reserve":
            deliverable_w = caps.ramp_max_w_s * max(
                0.0, event.reserve_window_s()[0] / speed - latency_s)
            cmds = _reserve_commands(event, caps, level_w, next_at, deliverable_w, common)
            out.extend(cmds)
        elif event.op == "setpoint":
            watts = (caps.watts(event.power_pct) if event.power_pct is not None
                     else caps.clamp(float(event.power_w or 0.0)))
            label = event.label or (f"setpoint {_pct_label(event.power_pct)}"
                                    if event.power_pct is not None else f"setpoint {watts:.0f} W")
            out.append(PlannedCommand(event.at_s, "setpoint", round(watts), label=label, **common))
            level_w = watts
        else:
            out.append(PlannedCommand(event.at_s, event.op, label=event.label or event.op,
                                      **common))
            if event.op == "resume":
                level_w = caps.max_w
    out.sort(key=lambda c: c.at_s)
    return out


def _surplus_commands(
    event: GridEvent, caps: Caps, seed: int, common: dict[str, Any]
) -> list[PlannedCommand]:
    spec = event.surplus
    assert spec is not None and event.until_s is not None
    curve = SurplusCurve(spec, seed)
    cmds: list[PlannedCommand] = []
    last_pct: float | None = None
    last_at = -math.inf
    # sample the curve finely; send on the interval grid, or early on a move past the deadband
    # (a cloud edge), never more often than every interval/4
    step_s = spec.interval_s / 4.0
    t = event.at_s
    while t < event.until_s - 1e-9:
        hour = curve.hour_at(t, event.at_s, event.until_s)
        pct = curve.pct(hour)
        due = t - last_at >= spec.interval_s - 1e-9
        moved = last_pct is None or abs(pct - last_pct) >= max(spec.deadband_pct, 1e-9)
        early = last_pct is not None and abs(pct - last_pct) >= 3 * max(spec.deadband_pct, 1.0)
        if (due and moved) or early or last_pct is None:
            label = f"surplus {_hhmm(hour)} {_pct_label(pct)}"
            cmds.append(PlannedCommand(t, "setpoint", round(caps.watts(pct)), label=label,
                                       kind="surplus", **common))
            last_pct, last_at = pct, t
        t += step_s
    return cmds


def _hhmm(hour: float) -> str:
    h = int(hour) % 24
    m = round((hour - int(hour)) * 60)
    if m == 60:
        h, m = (h + 1) % 24, 0
    return f"{h:02d}:{m:02d}"


def _reserve_commands(
    event: GridEvent, caps: Caps, baseline_w: float, next_at_s: float, deliverable_w: float,
    common: dict[str, Any],
) -> list[PlannedCommand]:
    assert event.amount_pct is not None and event.product is not None
    response_s, hold_s = event.reserve_window_s()
    requested_w = caps.max_w * event.amount_pct / 100.0
    offered_w = min(requested_w, deliverable_w)
    sign = -1.0 if event.direction == "decrease" else 1.0
    target_w = caps.clamp(baseline_w + sign * offered_w)
    test = ReserveTest(
        product=event.product, direction=event.direction, at_s=event.at_s, baseline_w=baseline_w,
        target_w=target_w, requested_w=requested_w, offered_w=abs(target_w - baseline_w),
        response_s=response_s, hold_s=hold_s,
    )
    if test.offered_w < 0.02 * caps.max_w:
        label = f"{event.product}: not deliverable at this speed"
    else:
        label = event.label or f"{event.product} {sign * test.offered_w:+.0f} W"
    cmds = [PlannedCommand(event.at_s, "setpoint", round(target_w), label=label, kind="reserve",
                           reserve=test, **common)]
    end_s = event.end_s()
    if next_at_s - end_s > 1.0:
        cmds.append(PlannedCommand(end_s, "setpoint", round(baseline_w),
                                   label=f"{event.product} released", kind="release", **common))
    return cmds


# --------------------------------------------------------------------------- sending


def finite_number(x: Any) -> float | None:
    """`x` as a float when it is a finite number (not a bool), else None: how the rig reads
    numbers from maps others wrote."""
    if isinstance(x, bool) or not isinstance(x, int | float):
        return None
    return float(x) if math.isfinite(x) else None


@dataclass
class SentCommand:
    """A command the simulator sent: when (rig seconds), what, and its ack once it came."""

    t_s: float
    op: str
    id: str
    power_w: int | None
    ramp_w_s: int | None
    label: str
    kind: str
    seq: int | None = None
    exp_ms: int | None = None
    reserve: ReserveTest | None = None
    error: str | None = None  # the sender could not publish it
    ack_t_s: float | None = None
    result: str | None = None
    reason: str | None = None
    detail: str | None = None
    applied_w: float | None = None
    limited_by: str | None = None
    eta_ms: int | None = None

    def take_ack(self, got: tuple[float, dict[str, Any]] | None) -> None:
        """Its ack (rig seconds, the ack map) when one came; fields of the wrong type are left
        out."""
        if got is None:
            return
        t, ack = got
        self.ack_t_s = round(t, 3)
        self.result = ack.get("result")
        self.reason = ack.get("reason")
        self.detail = ack.get("detail")
        self.applied_w = finite_number(ack.get("applied_w"))
        self.limited_by = ack.get("limited_by")
        eta = ack.get("eta_ms")
        self.eta_ms = eta if isinstance(eta, int) and not isinstance(eta, bool) else None

    def as_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "reserve"}
        if self.reserve is not None:
            d["reserve"] = dict(self.reserve.__dict__)
        return d


class CommandSender(Protocol):
    """Signs and publishes one command; returns its id (hex) and seq, without waiting for the
    ack. Raises on a local failure (the simulator records it as not sent)."""

    def send(self, op: str, *, power_w: int | None, ramp_w_s: int | None, validity_s: float,
             fallback: str | None) -> tuple[str, int | None, int | None]: ...


@dataclass
class GridSimulator:
    """Plays a plan: `poll(t_s)` sends what is due by scenario time `t_s`."""

    commands: list[PlannedCommand]
    sender: CommandSender
    speed: float = 1.0
    default_validity_s: float = 600.0
    wall_offset_s: float = 0.0  # rig time of scenario time 0
    on_sent: Callable[[SentCommand], None] | None = None
    sent: list[SentCommand] = field(default_factory=list)
    _next: int = 0

    def pending(self) -> int:
        return len(self.commands) - self._next

    def next_at_s(self) -> float | None:
        return self.commands[self._next].at_s if self._next < len(self.commands) else None

    def poll(self, t_s: float, rig_t_s: float | None = None) -> list[SentCommand]:
        """Send every command due at or before scenario time `t_s`; returns what was sent.
        `rig_t_s` is the rig time recorded as the send time (default: the planned time)."""
        out: list[SentCommand] = []
        while self._next < len(self.commands) and self.commands[self._next].at_s <= t_s + 1e-9:
            cmd = self.commands[self._next]
            self._next += 1
            out.append(self._send(cmd, rig_t_s))
        return out

    def send_now(self, cmd: PlannedCommand, rig_t_s: float) -> SentCommand:
        """Send one command outside the plan (the rig's initial setpoint)."""
        return self._send(cmd, rig_t_s)

    def _send(self, cmd: PlannedCommand, rig_t_s: float | None) -> SentCommand:
        validity_s = (cmd.validity_s or self.default_validity_s) / self.speed
        if rig_t_s is None:
            rig_t_s = self.wall_offset_s + cmd.at_s / self.speed
        record = SentCommand(
            t_s=rig_t_s, op=cmd.op, id="", power_w=cmd.power_w, ramp_w_s=cmd.ramp_w_s,
            label=cmd.label, kind=cmd.kind, reserve=cmd.reserve,
        )
        try:
            cid, seq, exp_ms = self.sender.send(
                cmd.op, power_w=cmd.power_w, ramp_w_s=cmd.ramp_w_s,
                validity_s=max(1.0, validity_s), fallback=cmd.fallback,
            )
            record.id, record.seq, record.exp_ms = cid, seq, exp_ms
        except Exception as exc:  # a local publish failure is a result of the run, not a crash
            record.error = f"{type(exc).__name__}: {exc}"
        self.sent.append(record)
        if self.on_sent is not None:
            self.on_sent(record)
        return record
