"""The site as one resource: what the grid operator asked of it, its caps (spec section 7), and
the site target moving toward the setpoint at the site's ramp limit. It is the `SetpointSink` the
site's `GridSession` applies accepted commands to, as a device's governor is."""

from __future__ import annotations

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
    """Status caps of the site: min_w is 0 (the allocator may put every device in standby),
    max_w the online devices' maximums together, ramp_max_w_s the site's limit (never over the
    devices' together), chips and hashrate_max_ghs summed."""

    min_w: int
    max_w: int
    ramp_max_w_s: int
    chips: int
    hashrate_max_ghs: float
    chip_model: str = CHIP_MODEL
    curtail_w: int = 0  # the online devices' minimums together (not a caps field)

    @classmethod
    def of(cls, online: list[DeviceRecord], ramp_limit_w_s: float | None) -> SiteCaps:
        ramp = sum(r.ramp_max_w_s for r in online)
        if ramp_limit_w_s is not None:
            ramp = min(ramp, ramp_limit_w_s)
        return cls(0, int(sum(r.max_w for r in online)), int(ramp),
                   sum(r.chips for r in online), round(sum(r.hashrate_max_ghs for r in online), 3),
                   curtail_w=int(sum(r.min_w for r in online)))


class SiteTarget:
    """The grid operator's active op and setpoint for the site, and the site target `target_w`
    moving toward it at the effective ramp (the command's `ramp_w_s`, else the site's)."""

    def __init__(self, ramp_limit_w_s: float | None = None) -> None:
        self.ramp_limit_w_s = ramp_limit_w_s
        self.current_caps = SiteCaps(0, 0, 0, 0, 0.0)
        self.op = "resume"  # until the first command: the devices follow their own defaults
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
            start = self.target_w if self.target_w is not None else self.setpoint_w
            ramp = self.ramp_w_s
            eta = abs(self.setpoint_w - start) / ramp if ramp > 0 else None
            return Decision(self.setpoint_w, limited, eta)
        self.setpoint_w = None
        applied = {"standby": 0.0, "curtail": float(caps.curtail_w)}.get(op, float(caps.max_w))
        return Decision(applied, None, None)

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
        """Move `target_w` toward the setpoint by at most the ramp since the last call. It starts
        from the measured power (a restart continues from where the fleet is). Outside a
        setpoint the target follows the measured power, so a later setpoint starts from there."""
        dt_s = 0.0 if self._last_s is None else max(0.0, now_s - self._last_s)
        self._last_s = now_s
        if self.setpoint_w is None or self.op != "setpoint":
            self.target_w = measured_w if measured_w is not None else self.target_w
            return self.target_w
        if self.target_w is None:
            if measured_w is None:
                return None
            self.target_w = measured_w
        step_w = self.ramp_w_s * dt_s
        goal_w = min(self.setpoint_w, float(self.current_caps.max_w))
        self.target_w += max(-step_w, min(step_w, goal_w - self.target_w))
        return self.target_w
