"""Splitting a site target across devices: a pure function of the devices' ranges, efficiencies
and on/off state (no MQTT, no clock), so the site controller, the demand-response bridge and the
tests use the same rule.

The rule, in merit order (lowest J/TH first):
* a device is either off (standby, 0 W) or on with a share inside its caps [min_w, max_w];
* devices already on stay on while they are needed; off devices are started, best first, while
  the on devices cannot cover the target, at most `max_starts` per call (start-ups are spread so
  a site never re-energises in one step);
* on devices are stopped, worst first, when the target is below their minimums, or when the rest
  still cover the target with `hysteresis_w` to spare (at most `max_stops` per call for the
  latter, and only devices `dwelt` since they were last switched, so a dip of the target does
  not switch the fleet off and on); a start or a stop the target needs is never held back by
  the dwell: the grid's step comes first;
* each on device gets its minimum, and the rest of the target fills the best devices up to their
  maximum: when there is less power than capacity, the efficient machines get it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Unit:
    """One dispatchable device as the allocator sees it (a fixed load has min_w == max_w)."""

    device: str
    min_w: float
    max_w: float
    j_th: float  # efficiency; lower is better
    on: bool  # drawing now (not in standby)
    can_start: bool = True  # an off device may be started now
    can_stop: bool = True  # an on device may be stopped now
    dwelt: bool = True  # switched long enough ago to be stopped only to spare capacity


@dataclass(frozen=True)
class Allocation:
    """Shares in W per device (0.0 for a device that is to be off)."""

    shares_w: dict[str, float]
    target_w: float
    started: tuple[str, ...] = ()
    stopped: tuple[str, ...] = ()

    @property
    def allocated_w(self) -> float:
        return sum(self.shares_w.values())

    @property
    def low_w(self) -> float:
        """How far the shares fall short of the target (negative when they exceed it)."""
        return self.target_w - self.allocated_w


@dataclass(frozen=True)
class Allocator:
    max_starts: int = 10
    max_stops: int = 10
    hysteresis_w: float = 0.0

    def allocate(self, units: Iterable[Unit], target_w: float) -> Allocation:
        order = sorted(units, key=lambda u: (u.j_th, u.device))
        target_w = max(0.0, target_w)
        on = [u for u in order if u.on]
        started: list[str] = []
        stopped: list[str] = []
        waiting = (u for u in order if not u.on and u.can_start and u.max_w > 0)
        capacity_w = _sum_max(on)
        for unit in waiting:
            if len(started) >= self.max_starts or capacity_w >= target_w:
                break
            on.append(unit)
            started.append(unit.device)
            capacity_w += unit.max_w
        on.sort(key=lambda u: (u.j_th, u.device))
        low_w, high_w = _sum_min(on), _sum_max(on)
        keep: list[Unit] = []
        optional = 0
        for unit in reversed(on):  # worst first
            must = low_w > target_w
            spare = (unit.dwelt and high_w - unit.max_w >= target_w + self.hysteresis_w
                     and low_w - unit.min_w <= target_w and optional < self.max_stops)
            if unit.can_stop and unit.device not in started and (must or spare):
                optional += 0 if must else 1
                low_w, high_w = low_w - unit.min_w, high_w - unit.max_w
                stopped.append(unit.device)
            else:
                keep.append(unit)
        on = keep[::-1]
        shares = {u.device: 0.0 for u in order}
        left = target_w - low_w
        for unit in on:  # merit order
            add = min(max(0.0, left), unit.max_w - unit.min_w)
            shares[unit.device] = unit.min_w + add
            left -= add
        return Allocation(shares, target_w, tuple(started), tuple(stopped))


def _sum_min(units: Iterable[Unit]) -> float:
    return sum(u.min_w for u in units)


def _sum_max(units: Iterable[Unit]) -> float:
    return sum(u.max_w for u in units)
