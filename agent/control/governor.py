"""The thermal/power governor: turns a power target into chain frequency, core voltage, fan duty
and chain power, tick by tick, with measured power as feedback.

Pure logic: the control thread calls `update(now_s, sample, chain_stats)` every control period
(~100 ms) and writes the returned `Actuation`; commands (`set_target`, `curtail`, `standby`,
`resume`) are called from the same thread. Nothing here blocks or sleeps.

Tracking: a ramped reference moves toward the applied target (requested, clamped by the caps, the
power cap and the thermal derate) at the command's ramp (never above the envelope's), and stays
1 % of max power under the power cap (a step's last model error and the sensor noise then stay
under the cap too). The frequency comes from the power model's inverse on the
V/f curve (feedforward); while the envelope still holds a higher voltage after a fall in
frequency, the frequency is taken for that voltage, so power follows the reference at once and
the voltage catches up. The model is corrected online from measured power
(`agent.control.correction`: a gain on the chips' power or an offset, split by steady points at
two loads). Every output then goes through `Envelope.enforce`, the one place that keeps the
hardware inside the configured envelope.

Declared range (`caps`): `max_w` is the envelope's power cap (by default the family's rating,
which a board drawing 15 % less than the model still reaches below the frequency ceiling);
`min_w` is the lowest load promised to be held: the minimum frequency's power for a board drawing
15 % more than the model, warm. Curtail and the thermal derate go deeper, to the corrected
model's power at the minimum frequency.

Modes (`agent.grid.contract.MODES`): ``starting`` (chain at minimum frequency until the chain
driver hashes and a chip temperature is known; entered again when the driver re-initialises the
chain, so the load climbs back at the ramp), ``mining``, ``curtailed`` (minimum frequency),
``standby`` (chain powered down after ramping to minimum), ``tripped`` (envelope trip: idle, fan
100 %). Each transition is logged on "gridminer.governor" with its reason. What limits the
load (`limited_by`) is one of `agent.grid.contract.LIMITS`.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

from agent.clock import Clock
from agent.config import AgentConfig, model_params
from agent.control.correction import ModelCorrection
from agent.control.envelope import Actuation, Envelope, SampleCheck
from agent.control.fan import FanController
from agent.control.power_model import PowerModel, VfCurve
from agent.control.sensors import BoardReading
from agent.grid.contract import LIMITS, MODES

log = logging.getLogger("gridminer.governor")

THERMAL_HYSTERESIS_C = 2.0
TOP_MARGIN = 0.05  # a target this far outside the corrected model's range is reported "caps"
BOTTOM_MARGIN = 0.02
TRIP_CAP_CUT = 0.2  # after a thermal trip, return capped this share of max power below the trip
RAMP_SHARE = 0.95  # the reference ramps a little under the limit: room for model error
CATCH_UP_PERIODS = 1.5  # a late tick moves the reference at most this many periods' ramp: a
# stalled control thread falls behind its ramp rather than making it up in one step
RAMP_WINDOW_S = 1.0  # nor by more than the ramp over any window this long (uneven ticks)
HELD_LATE_S = 0.5 * RAMP_WINDOW_S  # a clock that follows its voltage later than this (a stalled
# loop) counts its move again when it goes (`_count_late_held_move`)
CAP_MARGIN_SHARE = 0.01  # the reference stays this share of max power under the cap
# driver states (ChainStats.state) with the chips hashing; "winding": down to the reset clock
# before a reset (a chip fault, or a running chain found at start that cannot be taken over),
# the governor holding its floor (it starts over at the reset)
WINDING = "winding"
HASHING_STATES = ("ramping", "mining", WINDING)
EXPLORE_MARGIN_SHARE = 0.1  # above the highest steady load + this share of max power ...
EXPLORE_RAMP_SHARE_S = 0.4  # ... the reference rises at most this share of max power per second
CAP_APPROACH_SHARE_S = 0.15  # ... and this near the cap


class ChainFigures(Protocol):
    """What the governor reads of `agent.chain.stats.ChainStats` (all optional)."""

    state: str
    reset_pending: str | None


@dataclass(frozen=True)
class TargetDecision:
    """The answer to a command: what the governor will now move to, and how soon."""

    op: str  # setpoint, curtail, standby, resume
    requested_w: float | None
    applied_w: float  # after caps, power cap, thermal derate (0 while tripped / standby)
    limited_by: str | None  # None or one of LIMITS
    eta_s: float  # estimated time to reach applied_w (ramp and response)
    ramp_w_s: float  # the ramp the governor uses for it
    mode: str


class Governor:
    """Power/thermal governor of one hash board. See the module docstring."""

    def __init__(self, config: AgentConfig, clock: Clock, *, model: PowerModel | None = None):
        env, gov = config.envelope, config.governor
        assert env.max_power_w is not None and env.ramp_max_w_s is not None
        assert env.max_freq_mhz is not None and env.min_vcore_mv is not None
        assert env.max_vcore_mv is not None and gov.vf_points is not None
        assert gov.default_target_w is not None
        self.config = config
        self.clock = clock
        self.model = model or PowerModel(model_params(config))
        self.curve = VfCurve(gov.vf_points, env.min_vcore_mv, env.max_vcore_mv)
        self.envelope = Envelope(env, self.model, self.curve, fan_min_pct=gov.fan_min_pct,
                                 control_period_s=gov.control_period_s,
                                 freq_settle_s=gov.freq_settle_s)
        self.fan = FanController(gov.fan_target_temp_c, gov.fan_min_pct, gov.fan_kp_pct_c,
                                 gov.fan_ki_pct_c_s, gov.fan_startup_pct)
        self.gcfg = gov
        self.ecfg = env
        self.max_power_w: float = env.max_power_w
        self.ramp_max_w_s: float = env.ramp_max_w_s
        self.min_freq_mhz = env.min_freq_mhz
        self.max_freq_mhz: float = env.max_freq_mhz
        self.default_target_w: float = gov.default_target_w
        self.correction = ModelCorrection(self.model, gov, self.max_power_w)
        # the lowest load the board can be promised to hold (a board drawing 15 % more than the
        # model, warm); the deepest load it goes to (curtail, derate) is the corrected model's
        # power at the minimum frequency, usually lower
        self.min_w = min(self.model.rated_min_w(self.curve, self.min_freq_mhz,
                                                env.max_chip_temp_soft_c), self.max_power_w)
        self._caps = {
            "min_w": min(math.ceil(self.min_w), math.floor(self.max_power_w)),
            "max_w": math.floor(self.max_power_w),
            "ramp_max_w_s": math.floor(self.ramp_max_w_s) or 1,
            "chips": config.chain.chips,
            "chip_model": config.chain.family,
            "hashrate_max_ghs": round(self.model.hashrate_ghs(self.max_freq_mhz), 1),
        }
        # command state
        self._op = "setpoint"
        self._requested_w: float | None = self.default_target_w
        self._cmd_ramp_w_s = self.ramp_max_w_s
        # control state
        self._mode = "starting"
        self._mode_reason = "agent started"
        self._starting = True
        self._ref_w = 0.0
        self._thermal_cap_w: float | None = None
        self._last_now: float | None = None
        self._held_since_s: float | None = None  # a command that found the reference holding
        self._ref_history: deque[tuple[float, float]] = deque()  # (t, reference) of the window
        self._held: tuple[float, float] | None = None  # (t, W the chips had) of a vcore_first tick
        self._last_power_w: float | None = None
        self._applied_w = 0.0
        self._limited_by: str | None = None
        self._was_tripped = False
        log.info("governor mode starting: agent started")

    # ---- commands -------------------------------------------------------------------------
    def set_target(self, power_w: float, ramp_w_s: float | None = None) -> TargetDecision:
        """Track `power_w` (wall watts) moving at most `ramp_w_s` (default and ceiling: the
        envelope's ramp). Leaves curtailed/standby."""
        self._op = "setpoint"
        self._requested_w = float(power_w) if math.isfinite(power_w) else 0.0
        return self._decide("setpoint", ramp_w_s)

    def curtail(self, ramp_w_s: float | None = None) -> TargetDecision:
        """Deepest load while ready: chain at minimum frequency, fan cooling only."""
        self._op = "curtail"
        return self._decide("curtail", ramp_w_s)

    def standby(self, ramp_w_s: float | None = None) -> TargetDecision:
        """Ramp to minimum, then power the chain down."""
        self._op = "standby"
        return self._decide("standby", ramp_w_s)

    def resume(self, ramp_w_s: float | None = None) -> TargetDecision:
        """Back to the configured default target."""
        self._op = "setpoint"
        self._requested_w = self.default_target_w
        return self._decide("resume", ramp_w_s)

    def adopt(self, now_s: float, freq_mhz: float, vcore_mv: float, power_w: float,
              sample: BoardReading | None = None) -> Actuation:
        """Start from a chain found hashing (an agent restart) instead of from power-on: the
        ramped reference is the measured board power, the last output the chain's frequency at
        the measured core voltage, and the model is corrected to the measured power there; the
        next moves are ramp-limited from where the load is. `sample` (the board sample the
        power was read from) counts as the first sample."""
        if sample is not None:
            self.envelope.observe(now_s, sample)
        temp = self.envelope.check.hottest_c
        freq = min(max(float(freq_mhz), self.min_freq_mhz), self.max_freq_mhz)
        vcore = round(vcore_mv) if math.isfinite(vcore_mv) and vcore_mv > 0 else 0
        vcore = max(vcore, self.curve_vcore(freq))
        power = float(power_w) if math.isfinite(power_w) and power_w > 0 else \
            self.model.power_w(freq, vcore, temp)
        self.correction.adopt(now_s, freq, vcore, temp, power)
        fan = getattr(sample, "fan_pct", None)
        if isinstance(fan, int | float) and math.isfinite(fan):
            self.fan.reset(fan)
            fan_pct = int(fan)
        else:
            fan_pct = self.gcfg.fan_startup_pct
        self._starting = False
        self._ref_w = power
        self._ref_history = deque([(now_s, power)])
        self._held = None
        self._last_now = now_s
        self._set_mode("mining", f"took over the running chain at {freq:.1f} MHz, {power:.1f} W")
        out = Actuation(freq, vcore, fan_pct, True, self._mode, power, self._mode_reason)
        self.envelope.adopt(now_s, out)
        self._applied_w, self._limited_by = self._resolve(temp)
        log.info("governor: took over the running chain at %.2f MHz, %d mV, %.1f W", freq,
                 vcore, power)
        return out

    def _decide(self, op: str, ramp_w_s: float | None) -> TargetDecision:
        ramp_limited = False
        if ramp_w_s is None or not math.isfinite(ramp_w_s) or ramp_w_s <= 0:
            self._cmd_ramp_w_s = self.ramp_max_w_s
        elif ramp_w_s > self.ramp_max_w_s:
            self._cmd_ramp_w_s = self.ramp_max_w_s
            ramp_limited = True
        else:
            self._cmd_ramp_w_s = float(ramp_w_s)
        if abs(self._ref_w - self._applied_w) < 0.5:
            # the load held still until now: its ramp counts from this command, not from the
            # tick before it (else a fleet commanded at once would move a tick's ramp early)
            self._held_since_s = self.clock.monotonic()
        applied, limited = self._resolve(self.envelope.check.hottest_c)
        if limited is None and ramp_limited:
            limited = "ramp"
        assert limited is None or limited in LIMITS, limited
        self._applied_w, self._limited_by = applied, limited
        eta = abs(applied - self._ref_w) / (self._cmd_ramp_w_s * RAMP_SHARE)
        if abs(applied - self._ref_w) > 1e-6:
            eta += self.gcfg.response_delay_s + self.gcfg.response_tau_s
        requested = self._requested_w if op in ("setpoint", "resume") else None
        log.info("governor %s: %s", op, _decision_text(requested, applied, limited, eta))
        return TargetDecision(op, requested, applied, limited, eta, self._cmd_ramp_w_s, self._mode)

    def _resolve(self, temp_c: float | None) -> tuple[float, str | None]:
        """The target the governor moves to now, and what limited it."""
        if self.envelope.tripped:
            return 0.0, "thermal" if self.envelope.thermal_trip else "caps"
        if self._op == "standby":
            return 0.0, None
        if self._op == "curtail":
            return self._floor_w(temp_c), None
        want = self._requested_w if self._requested_w is not None else self.default_target_w
        applied, limited = want, None
        if applied > self.max_power_w:
            applied, limited = self.max_power_w, "power_cap"
        offset = self.correction.offset_w
        top = self.model.curve_power_w(self.max_freq_mhz, self.curve, temp_c) + offset
        if applied > top + TOP_MARGIN * self.max_power_w:
            applied, limited = top, "caps"
        bottom = self.model.curve_power_w(self.min_freq_mhz, self.curve, temp_c) + offset
        if applied < self.min_w:
            applied, limited = self.min_w, "caps"
        if applied < bottom - BOTTOM_MARGIN * self.max_power_w:  # the corrected model's minimum
            applied, limited = bottom, "caps"
        if self._thermal_cap_w is not None and applied > self._thermal_cap_w:
            applied, limited = max(self._floor_w(temp_c), self._thermal_cap_w), "thermal"
        return applied, limited

    def _floor_w(self, temp_c: float | None) -> float:
        """The corrected model's power at the minimum frequency: the deepest steady load now."""
        offset = self.correction.offset_w
        return self.model.curve_power_w(self.min_freq_mhz, self.curve, temp_c) + offset

    # ---- telemetry ------------------------------------------------------------------------
    @property
    def mode(self) -> str:
        return self._mode

    @property
    def mode_reason(self) -> str:
        return self._mode_reason

    @property
    def limited_by(self) -> str | None:
        """What keeps the load below the command now: None or one of LIMITS."""
        return self._limited_by

    @property
    def offset_w(self) -> float:
        """The model-error correction's additive part (its gain is `model.gain`)."""
        return self.correction.offset_w

    @property
    def thermal_cap_w(self) -> float | None:
        """The power ceiling of the thermal derate (None: not derating)."""
        return self._thermal_cap_w

    @property
    def sensor_stale_s(self) -> float:
        """A board sample older than this is no current measurement (the envelope trips)."""
        return self.ecfg.sensor_stale_s

    def caps(self) -> dict[str, Any]:
        """Declared capabilities for the MQTT status (spec section 5)."""
        return dict(self._caps)

    def freq_supported_mhz(self, vcore_mv: float) -> float:
        """The highest frequency a core voltage supports (V/f curve, envelope ceiling)."""
        return min(self.curve.max_freq_mhz(vcore_mv), self.max_freq_mhz)

    def applied(self, *, freq_mhz: float | None = None, vcore_mv: int | None = None,
                fan_pct: int | None = None, chain_power_on: bool | None = None) -> None:
        """What reached the hardware of the last output (`Envelope.applied`): the next ticks
        start from it."""
        self.envelope.applied(freq_mhz=freq_mhz, vcore_mv=vcore_mv, fan_pct=fan_pct,
                              chain_power_on=chain_power_on)

    def _set_mode(self, mode: str, reason: str) -> None:
        assert mode in MODES, mode
        if mode != self._mode:
            log.info("governor mode %s -> %s: %s", self._mode, mode, reason)
        self._mode, self._mode_reason = mode, reason

    # ---- the control tick -----------------------------------------------------------------
    def update(
        self, now_s: float, sample: BoardReading | None, chain_stats: ChainFigures | None = None
    ) -> Actuation:
        """One control tick: read the latest board sample (None when none arrived), return what
        to write to the hardware. Call every `control_period_s` with the agent clock's
        monotonic time. `chain_stats.state` (the driver's state), when given, holds the ramp
        until the chips hash and restarts it when the driver re-initialises the chain."""
        period = self.gcfg.control_period_s
        dt = period if self._last_now is None else now_s - self._last_now
        dt = min(max(dt, 0.0), 5.0 * period)
        ramp_dt = min(dt, CATCH_UP_PERIODS * period)
        if self._held_since_s is not None:
            if self._last_now is not None and self._last_now < self._held_since_s <= now_s:
                ramp_dt = min(ramp_dt, now_s - self._held_since_s)
            self._held_since_s = None
        self._last_now = now_s
        chk = self.envelope.observe(now_s, sample)
        if self.envelope.tripped:
            return self._tripped_tick(now_s, chk)
        if self._was_tripped:  # the trip released: start over, the fan from full
            self._was_tripped = False
            self._starting = True
            self.fan.reset(100)
        temp = chk.hottest_c
        state = getattr(chain_stats, "state", None)
        reset_pending = getattr(chain_stats, "reset_pending", None)
        hashing = state is None or state in HASHING_STATES
        if not hashing:
            self._restart_if_reinitialised(state)
        self._derate(dt, temp, chk)
        self._update_limit(temp)
        self.correction.observe(now_s, dt, chk, self.envelope.last, ref_w=self._ref_w,
                                starting=self._starting, hold=state == WINDING)
        goal, on = self._goal(temp, chk, hashing, reset_pending, state == WINDING)
        self._count_late_held_move(now_s)
        ref = self._ramp(now_s, goal, ramp_dt)
        freq = self._feedforward_mhz(now_s, ref, temp, reset_pending)
        fan = self.fan.update(dt, temp) if on or temp is not None else self.gcfg.fan_min_pct
        proposed = Actuation(freq, self.curve_vcore(freq), fan, on, self._mode, ref,
                             self._mode_reason)
        out = self.envelope.enforce(now_s, proposed)
        self._ref_w = out.target_w
        self._ref_history.append((now_s, out.target_w))
        self._held = (now_s, self._held_w(out, temp)) if "vcore_first" in out.limits else None
        self.correction.record(now_s, out, temp)
        return out

    def _held_w(self, out: Actuation, temp: float | None) -> float:
        """The (corrected) load of `out`, whose frequency waits for the voltage: the rest of the
        move to its reference reaches the chips at the next tick."""
        held_w = self.model.power_w(out.freq_mhz, out.vcore_mv, temp) + self.correction.offset_w
        return min(out.target_w, held_w)

    def _count_late_held_move(self, now_s: float) -> None:
        """The ramp window counted a voltage-first move when the voltage went; if this tick,
        which brings its clock, comes late (a stalled loop), the chips held the lower load until
        now: the window counts from that load too, so the held move and the next ones do not
        land within one window."""
        held, self._held = self._held, None
        if held is not None and now_s - held[0] > HELD_LATE_S:
            self._ref_history.append((now_s, held[1]))

    def _restart_if_reinitialised(self, state: str | None) -> None:
        """The driver re-initialises a chain that was on (a hang, a dead chip, a power cut by the
        board): the chips are back at their reset clock, so start over from the minimum."""
        last = self.envelope.last
        if self._starting or last is None or not last.chain_power_on:
            return
        log.warning("governor: the chain is %s; ramping up again from the minimum", state)
        self.envelope.chain_restarted()
        self._starting = True
        self._ref_w = 0.0

    def _update_limit(self, temp: float | None) -> None:
        """The target to move to now and what limits it; a command's "ramp" limit stays
        reported until another limit takes over."""
        self._applied_w, limited = self._resolve(temp)
        if self._limited_by != "ramp" or limited is not None:
            self._limited_by = limited

    def _goal(self, temp: float | None, chk: SampleCheck, hashing: bool,
              reset_pending: str | None, winding: bool) -> tuple[float, bool]:
        """Set the mode; return the load the reference moves to and whether the chain stays
        powered."""
        prev = self.envelope.last
        chain_on = prev is not None and prev.chain_power_on
        if self._op == "standby":
            return 0.0, self._standby_keeps_power(temp, prev, winding)
        if self._starting or not chain_on:
            self._starting = not self._ready_to_mine(chk, hashing, chain_on)
            if self._starting:
                return min(self._floor_w(temp), self._applied_w), True
        return self._mining_goal_w(temp, reset_pending), True

    def _standby_keeps_power(self, temp: float | None, prev: Actuation | None,
                             winding: bool) -> bool:
        """Standby: down to the minimum at the ramp (and, while the driver winds the chips
        down, to their reset clock), then the chain powered down (False)."""
        self._starting = True
        chain_on = prev is not None and prev.chain_power_on
        at_min = prev is not None and prev.freq_mhz <= self.min_freq_mhz + 1e-6
        if not chain_on or (at_min and not winding and self._ref_w <= self._floor_w(temp) + 1e-6):
            self._set_mode("standby", "chain powered down")
            return False
        self._set_mode("standby", "ramping down to power the chain off")
        return True

    def _ready_to_mine(self, chk: SampleCheck, hashing: bool, chain_on: bool) -> bool:
        """Whether starting is over; if not, the starting mode says what it waits for."""
        if not self.envelope.has_sample:
            self._set_mode("starting", "waiting for the first board sample")
        elif not chk.temps_valid or not chain_on:
            self._set_mode("starting", "waiting for a chip temperature")
        elif not hashing:
            self._set_mode("starting", "waiting for the chain to hash")
        else:
            return True
        return False

    def _mining_goal_w(self, temp: float | None, reset_pending: str | None) -> float:
        """Mining or curtailed: the applied target, and the mode that says why."""
        # at the cap, aim a little under it: measurement noise and the last model error then
        # average out below the cap, not on it
        goal = min(self._applied_w, (1.0 - CAP_MARGIN_SHARE) * self.max_power_w)
        if self._op == "curtail":
            self._set_mode("curtailed", "curtail: chain at minimum frequency")
        elif self._limited_by == "thermal":
            self._set_mode("mining", "derated: chip temperature above the soft limit")
        else:
            self._set_mode("mining", f"tracking {self._applied_w:.1f} W")
        if reset_pending:
            # the driver resets the chain once it runs at the floor: down at the ramp
            goal = min(goal, self._floor_w(temp))
            self._set_mode(self._mode, f"down to the minimum for a chain reset ({reset_pending})")
        return goal

    def _ramp(self, now_s: float, goal_w: float, dt: float) -> float:
        """The ramped reference one tick closer to `goal_w`: by at most the rate times `dt`,
        and by at most the rate times `RAMP_WINDOW_S` from any reference that held within the
        last `RAMP_WINDOW_S` (ticks that come unevenly must not add up to more)."""
        ref = self._ref_w
        history = self._ref_history
        while len(history) > 1 and history[1][0] <= now_s - RAMP_WINDOW_S:
            history.popleft()  # history[0] is the reference that held RAMP_WINDOW_S ago
        if goal_w > ref:
            up_rate = self._cmd_ramp_w_s * RAMP_SHARE
            if ref > self.correction.validated_w + EXPLORE_MARGIN_SHARE * self.max_power_w:
                # above any load the model has been checked at: slow enough to correct on the way
                up_rate = min(up_rate, EXPLORE_RAMP_SHARE_S * self.max_power_w)
                if ref > (1.0 - EXPLORE_MARGIN_SHARE) * self.max_power_w:
                    # the last stretch to an unchecked cap: slower still, so that a model error
                    # the measurement cannot yet tell from its timing is small at the cap
                    up_rate = min(up_rate, CAP_APPROACH_SHARE_S * self.max_power_w)
            top = min(goal_w, ref + up_rate * dt)
            if history:
                top = min(top, max(ref, min(r for _, r in history) + up_rate * RAMP_WINDOW_S))
            return top
        down_rate = RAMP_SHARE * (
            self.ramp_max_w_s if self._limited_by == "thermal" else self._cmd_ramp_w_s)
        bottom = max(goal_w, ref - down_rate * dt)
        if history:
            bottom = max(bottom, min(ref, max(r for _, r in history) - down_rate * RAMP_WINDOW_S))
        return bottom

    def _feedforward_mhz(self, now_s: float, ref_w: float, temp: float | None,
                         reset_pending: str | None) -> float:
        """The frequency for the reference through the model, corrected by the model-error
        estimate."""
        if self._starting or ((self._op in ("curtail", "standby") or reset_pending)
                              and ref_w <= self._floor_w(temp) + 1e-6):
            return self.min_freq_mhz
        offset = self.correction.offset_w
        freq = self.model.freq_for_power(ref_w - offset, self.curve, self.min_freq_mhz,
                                         self.max_freq_mhz, temp)
        held = self.envelope.held_vcore_mv(now_s)
        if held is not None and held > self.curve.vcore_mv(freq) + 0.5:
            # the voltage comes down only after the frequency has settled: until then the power
            # is the one at the held voltage, so the frequency goes lower meanwhile
            f_held = self.model.freq_for_power_at_vcore(ref_w - offset, held, temp)
            freq = max(self.min_freq_mhz, min(freq, f_held))
        return freq

    def power_at(self, freq_mhz: float) -> float:
        """The (corrected) model's power at `freq_mhz` on the V/f curve, at the chips' latest
        temperature: how the driver paces a wind-down."""
        return self.model.power_w(freq_mhz, self.curve_vcore(freq_mhz),
                                  self.envelope.check.hottest_c)

    def curve_vcore(self, freq_mhz: float) -> int:
        return math.ceil(self.curve.vcore_mv(freq_mhz) - 1e-6)

    def _tripped_tick(self, now_s: float, chk: SampleCheck) -> Actuation:
        """A tick while the envelope holds a trip: the safe idle; entering a thermal trip
        caps the return below the power at the trip."""
        reason = self.envelope.trip_reason or "tripped"
        if not self._was_tripped:
            self._was_tripped = True
            if self.envelope.thermal_trip:
                base = self._last_power_w if self._last_power_w is not None else self.max_power_w
                self._thermal_cap_w = max(self._floor_w(chk.hottest_c),
                                          base - TRIP_CAP_CUT * self.max_power_w)
        left = self.envelope.clear_remaining_s(now_s)
        shown = reason if left is None else f"{reason} (clear, release in {left:.0f} s)"
        self._set_mode("tripped", shown)
        self._applied_w, self._limited_by = self._resolve(chk.hottest_c)
        self._starting = True
        out = self.envelope.enforce(now_s, self.envelope.idle(shown))
        self._ref_w = out.target_w
        self._ref_history.append((now_s, out.target_w))
        self._held = None
        self.correction.record(now_s, out, chk.hottest_c)
        return out

    def _derate(self, dt: float, temp: float | None, chk: SampleCheck) -> None:
        """Soft thermal limit: lower a power ceiling while the hottest chip is above it."""
        soft = self.ecfg.max_chip_temp_soft_c
        if chk.power_w is not None:
            self._last_power_w = chk.power_w
        if temp is not None and temp > soft:
            if self._thermal_cap_w is None:
                start = min(self._ref_w, self._last_power_w or self._ref_w)
                self._thermal_cap_w = max(self._floor_w(temp), start)
                log.info("governor: derating, chip %.1f C above soft limit %g C", temp, soft)
            rate = self.gcfg.thermal_derate_pct_c_s / 100.0 * self.max_power_w
            self._thermal_cap_w = max(self._floor_w(temp),
                                      self._thermal_cap_w - rate * (temp - soft) * dt)
        elif self._thermal_cap_w is not None and (
            temp is None or temp < soft - THERMAL_HYSTERESIS_C
        ):
            rate = self.gcfg.thermal_release_pct_s / 100.0 * self.max_power_w
            self._thermal_cap_w += rate * dt
            if self._thermal_cap_w >= self.max_power_w:
                self._thermal_cap_w = None
                log.info("governor: thermal derate lifted")


def _decision_text(requested_w: float | None, applied_w: float, limited_by: str | None,
                   eta_s: float) -> str:
    """A decision as the log says it: `40.0 W requested, applying 35.0 W (limited by thermal),
    eta 1.3 s`; what did not happen (no request, no limit) is left out."""
    text = f"applying {applied_w:.1f} W"
    if requested_w is not None:
        text = f"{requested_w:.1f} W requested, {text}"
    if limited_by:
        text += f" (limited by {limited_by})"
    return text + f", eta {eta_s:.1f} s"
