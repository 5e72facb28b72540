"""The site as one resource: what the grid operator asked of it, its caps (spec section 7), and
the site target moving toward the setpoint at the site's ramp limit. It is the `SetpointSink` the
site's `GridSession` applies accepted commands to, as a device's governor is.

`resume` (and the site's default: no command yet, a lapsed command, a `default_now` fallback) is
the site's configured default target, its max_w within its caps: a target like a setpoint's,
approached at the site's ramp, so the controller starts the fleet a batch at a time instead of
re-energising every device at once. `curtail` and `standby` have no target: they go to every
device at once (shedding at once is what the grid wants)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from agent.site.roster import DeviceRecord

CHIP_MODEL = "site"


@dataclass
class Decision:
    """The site's answer to a command (the ack's applied_w, limited_by, eta)."""

    applied_w: float
    limited_by: str | None = None
    eta_s: float | None = None


@dataclass(frozen=True)
class SiteCaps:
    """Status caps of the site: min_w the least the online devices draw together, every one in
    standby (the allocator may stand every device by): each device's standby draw as its own
    telemetry measured it in standby mode, 0 for a device not yet seen in standby (the contract's
    caps and telemetry carry no standby figure, and a device's min_w is its least load while
    hashing, not its standby draw; so min_w is a lower bound until every device has stood by
    once); max_w the online devices' maximums together, ramp_max_w_s the site's limit (never
    over the devices' together), chips and hashrate_max_ghs summed."""

    min_w: int
    max_w: int
    ramp_max_w_s: int
    chips: int
    hashrate_max_ghs: float
    chip_model: str = CHIP_MODEL
    curtail_w: int = 0  # the online devices' minimums together (not a caps field)

    @classmethod
    def of(cls, online: list[DeviceRecord], ramp_limit_w_s: float | None,
           standby_w: Mapping[str, float] | None = None) -> SiteCaps:
        """`standby_w`: the devices' measured standby draw, by device (absent: 0)."""
        ramp = sum(r.ramp_max_w_s for r in online)
        if ramp_limit_w_s is not None:
            ramp = min(ramp, ramp_limit_w_s)
        standby = standby_w or {}
        min_w = sum(min(standby.get(r.device, 0.0), r.max_w) for r in online)
        return cls(int(min_w), int(sum(r.max_w for r in online)), int(ramp),
                   sum(r.chips for r in online), round(sum(r.hashrate_max_ghs for r in online), 3),
                   curtail_w=int(sum(r.min_w for r in online)))


class SiteTarget:
    """The grid operator's active op and setpoint for the site, and the site target `target_w`
    moving toward it at the effective ramp (the command's `ramp_w_s`, else the site's)."""

    def __init__(self, ramp_limit_w_s: float | None = None) -> None:
        self.ramp_limit_w_s = ramp_limit_w_s
        self.current_caps = SiteCaps(0, 0, 0, 0, 0.0)
        self.op = "resume"  # until the first command: the site's default, max_w
        self.setpoint_w: float | None = None
        self.cmd_ramp_w_s: float | None = None
        self.target_w: float | None = None  # None until the fleet's power is known
        self._last_s: float | None = None

    # ---- SetpointSink ---------------------------------------------------------------------------
    def caps(self) -> SiteCaps:
        return self.current_caps

    def apply(self, op: str, power_w: float | None, ramp_w_s: float | None) -> Decision:
        self.op = op
        self.cmd_ramp_w_s = ramp_w_s
        caps = self.current_caps
        if op == "setpoint" and power_w is not None:
            self.setpoint_w = min(float(power_w), float(caps.max_w))
            limited = "caps" if power_w > caps.max_w else None
            return Decision(self.setpoint_w, limited, self._eta_s(self.setpoint_w))
        self.setpoint_w = None
        if op == "resume":
            return Decision(float(caps.max_w), None, self._eta_s(float(caps.max_w)))
        applied = {"standby": float(caps.min_w), "curtail": float(caps.curtail_w)}.get(op, 0.0)
        return Decision(applied, None, None)

    def _eta_s(self, goal_w: float) -> float | None:
        start = self.target_w if self.target_w is not None else goal_w
        ramp = self.ramp_w_s
        return abs(goal_w - start) / ramp if ramp > 0 else None

    @property
    def tracking(self) -> bool:
        """Whether the site moves toward a target (a setpoint, or its default: max_w)."""
        return self.op == "resume" or (self.op == "setpoint" and self.setpoint_w is not None)

    def goal_w(self) -> float | None:
        """What the target moves toward: the setpoint, or the default (max_w), within the caps."""
        if not self.tracking:
            return None
        max_w = float(self.current_caps.max_w)
        return max_w if self.setpoint_w is None else min(self.setpoint_w, max_w)

    # ---- the loop -------------------------------------------------------------------------------
    @property
    def ramp_w_s(self) -> float:
        """The ramp the site moves at now: the command's, within the site's limit."""
        ramp = float(self.current_caps.ramp_max_w_s)
        if self.cmd_ramp_w_s is not None:
            ramp = min(ramp, float(self.cmd_ramp_w_s))
        return ramp

    def update_caps(self, caps: SiteCaps) -> None:
        self.current_caps = caps

    def advance(self, now_s: float, measured_w: float | None) -> float | None:
        """Move `target_w` toward the goal (`goal_w`) by at most the ramp since the last call. It
        starts from the measured power (a restart continues from where the fleet is). Under
        curtail or standby the target follows the measured power, so what comes next starts
        from there."""
        dt_s = 0.0 if self._last_s is None else max(0.0, now_s - self._last_s)
        self._last_s = now_s
        goal_w = self.goal_w()
        if goal_w is None:
            self.target_w = measured_w if measured_w is not None else self.target_w
            return self.target_w
        if self.target_w is None:
            if measured_w is None:
                return None
            self.target_w = measured_w
        step_w = self.ramp_w_s * dt_s
        self.target_w += max(-step_w, min(step_w, goal_w - self.target_w))
        return self.target_w
