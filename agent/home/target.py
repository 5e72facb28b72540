"""What the governor is asked while no signed grid command is in charge.

In order: the owner's mining switch (off: standby), the surplus follower's load (None:
standby), capped by the owner's power limit; without a follower the limit, else the configured
default. The owner's settings exist only with local control enabled; they are clamped to the
envelope's [min_w, max_w] here, and the governor clamps again. While a grid command (or the grid
session's restart hold) is in charge nothing is written, and control coming back is re-applied
at once. The governor is written only when the decision changes by more than a dead band, so a
follower's small moves do not flood it. Standby from a mining load goes through curtail: down
to the floor at the ramp, held there FLOOR_HOLD_S, then the chain is powered off.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agent.home.surplus import SurplusFollower

DEADBAND_SHARE = 0.01  # of max_w
DEADBAND_MIN_W = 0.5
#: on the way to standby, the load is held at the floor this long before the chain is powered
#: off, so that the power-off step does not add to the last second of the ramp down
FLOOR_HOLD_S = 2.0


class LocalTarget:
    """The local decision and its one writer to the governor (`service`, control thread)."""

    def __init__(self, governor: Any, default_w: float, follower: SurplusFollower | None,
                 grid_in_charge: Callable[[float], bool]) -> None:
        caps = governor.caps()
        self.governor = governor
        self.min_w, self.max_w = float(caps["min_w"]), float(caps["max_w"])
        self.default_w = min(max(default_w, self.min_w), self.max_w)
        self.follower = follower
        self.grid_in_charge = grid_in_charge
        self.mining = True  # the owner's switch
        self.limit_w: float | None = None  # the owner's power limit
        self.controller = "default"  # who sets the target: grid, local, surplus, default
        self.deadband_w = max(DEADBAND_MIN_W, DEADBAND_SHARE * self.max_w)
        self._applied: tuple[str, float | None] | None = None
        self._floor_until_s: float | None = None  # curtailed on the way to standby until then

    def set_limit(self, power_w: float) -> float:
        """The owner's power limit, clamped to the envelope; returns what was kept."""
        self.limit_w = min(max(float(power_w), self.min_w), self.max_w)
        return self.limit_w

    def decide(self, now_s: float) -> tuple[str, float | None, str]:
        """(op, power_w, controller): "setpoint" with watts, or "standby"."""
        if not self.mining:
            return "standby", None, "local"
        if self.follower is not None:
            want = self.follower.want_w(now_s)
            if want is None:
                return "standby", None, "surplus"
            if self.limit_w is not None and self.limit_w < want:
                return "setpoint", self.limit_w, "local"
            return "setpoint", want, "surplus"
        if self.limit_w is not None:
            return "setpoint", self.limit_w, "local"
        return "setpoint", self.default_w, "default"

    def service(self, now_s: float, load_w: float | None = None) -> None:
        """Ask the governor for the local decision, unless the grid is in charge; `load_w` is
        the measured load (None: unknown), where a way down to standby starts from."""
        if self.grid_in_charge(now_s):
            self.controller = "grid"
            self._applied = ("grid", None)  # re-applied when the grid lets go
            if self.follower is not None:
                self.follower.want_w(now_s)  # the follower keeps its state current
            return
        op, power_w, self.controller = self.decide(now_s)
        if op == "standby":
            op = self._towards_standby(now_s, load_w)
        else:
            self._floor_until_s = None
        last = self._applied
        if last is not None and last[0] == op and (
                power_w is None or last[1] is None or abs(power_w - last[1]) < self.deadband_w):
            return
        if op == "standby":
            self.governor.standby()
        elif op == "curtail":
            self.governor.curtail()
        else:
            assert power_w is not None
            self.governor.set_target(power_w)
        self._applied = (op, power_w)


    def _towards_standby(self, now_s: float, load_w: float | None) -> str:
        """"curtail" while the load comes down to the floor and rests there, then "standby"."""
        last = self._applied
        if last is None or last[0] == "standby":
            return "standby"  # nothing is mining (a start, or already off)
        if self._floor_until_s is None:
            from_w = load_w if load_w is not None else \
                last[1] if last[1] is not None else self.max_w
            ramp_w_s = float(getattr(self.governor, "ramp_max_w_s", 0.0) or 0.0)
            down_s = max(0.0, from_w - self.min_w) / ramp_w_s if ramp_w_s > 0 else 0.0
            self._floor_until_s = now_s + down_s + FLOOR_HOLD_S
        return "standby" if now_s >= self._floor_until_s else "curtail"


def grid_in_charge(runtime: Any) -> Callable[[float], bool]:
    """Whether the runtime's grid session (`agent.grid.session.GridSession`; none: no grid
    link) is in charge: a signed command is active, or its restart hold runs."""

    def check(_now_s: float) -> bool:
        grid = getattr(runtime, "grid", None)
        if grid is None:
            return False
        return getattr(grid, "active", None) is not None \
            or getattr(grid, "hold_until_s", None) is not None

    return check
