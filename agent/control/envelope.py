"""The hard safety envelope: the one place that decides what may reach the hardware.

`Envelope.observe(now_s, sample)` judges each board sample (stale, NaN, out of range, frozen, too
hot, regulator too hot, over power, bridge trip) and latches a trip; the sensors' part of that
judgement (NaN, range, frozen, stuck or missing chip channels, and how many sensor trips may be
retried) is `agent.control.sensors`. A sensor trip that used up the retries latches for good (the
board stays idle until the agent restarts, and the trip reason says so).
`Envelope.applied(...)` takes what reached the hardware (the bridge's answers: core voltage, fan,
chain power); the next outputs are sequenced and ramped from those, not from what was asked.
`Envelope.enforce(now_s, proposed)` is the last step of every governor output and returns an
`Actuation` inside the envelope, whatever was proposed:

* tripped: chain powered down, fan 100 %, target 0, until the condition has been clear for
  `trip_hold_s`; the return is then ramped like any other move;
* frequency, core voltage, fan and target inside their configured bounds;
* a frequency never above what the voltage in force supports (up: voltage first, frequency on the
  next tick; down: frequency first, the voltage follows once `freq_settle_s` has passed);
* the frequency does not rise while the fan the bridge applied is below what was asked;
* the modelled power of each (frequency, voltage) step and the target move at most
  `ramp_max_w_s` per second in either direction (a trip is the one exception);
* the chain is powered on only once a board sample has arrived, and only at the minimum
  frequency (also after `chain_restarted`: a re-initialised chain starts over, its ramp counted
  from zero); the fan runs at 100 % at the soft temperature limit and at least at its minimum
  while the chain is powered.

No output of `enforce` is below `min_freq_mhz`, idle included (the idle keeps the minimum and
powers the chain down). Lower clocks do reach the chips, but only from the chain driver, never
as a setpoint: after a reset the chips run at 50 MHz and the driver steps them up to the first
frequency asked for (a fraction of a second), and when the agent stops it steps them down to
50 MHz before the chain is powered off (ESP-Miner parks them there too, spec section 6.5).
"""

from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass, replace
from typing import Any

from agent.config import EnvelopeConfig
from agent.control.power_model import PowerModel, VfCurve
from agent.control.sensors import SENSOR_TRIP_LIMIT as SENSOR_TRIP_LIMIT  # part of the API
from agent.control.sensors import BoardReading, SensorJudge, finite

log = logging.getLogger("gridminer.governor")

THERMAL_TRIPS = ("overtemp", "vr_overtemp")
VR_CLEAR_MARGIN_C = 10.0  # a regulator trip clears this far below max_vr_temp_c (ESP-Miner: 95)


@dataclass(frozen=True)
class Actuation:
    """One control tick's output: what the control thread writes to the chain and the board."""

    freq_mhz: float
    vcore_mv: int
    fan_pct: int
    chain_power_on: bool
    mode: str  # starting, mining, curtailed, standby, tripped
    target_w: float  # the ramped power target the governor tracks now
    reason: str  # why the mode is what it is
    limits: tuple[str, ...] = ()  # envelope rules that changed the proposal on this tick


@dataclass(frozen=True)
class SampleCheck:
    """The envelope's reading of the latest board sample."""

    fresh: bool  # a new sample arrived since the last call
    fault: str | None  # the condition that trips now (None: all clear)
    hottest_c: float | None  # hottest valid chip temperature of the latest good sample
    power_w: float | None  # measured power of the latest good sample
    chain_powered: bool = False
    temps_valid: bool = False
    vr_temp_c: float | None = None


@dataclass
class _TripLatch:
    """The latched trip: its reason, since when its condition has been clear, and how many trips
    there have been; `final` once the sensor trips ran out of retries (never released)."""

    reason: str | None = None
    clear_since_s: float | None = None
    count: int = 0
    final: bool = False


class Envelope:
    """Enforces the configured envelope on every output; stateful (trip latch, last outputs)."""

    def __init__(
        self,
        cfg: EnvelopeConfig,
        model: PowerModel,
        curve: VfCurve,
        *,
        fan_min_pct: int = 25,
        control_period_s: float = 0.1,
        freq_settle_s: float = 0.3,
    ) -> None:
        assert cfg.max_power_w is not None and cfg.ramp_max_w_s is not None
        assert cfg.max_freq_mhz is not None and cfg.min_vcore_mv is not None
        assert cfg.max_vcore_mv is not None and cfg.trip_clear_temp_c is not None
        self.cfg = cfg
        self.model = model
        self.curve = curve
        self.fan_min_pct = fan_min_pct
        self.control_period_s = control_period_s
        self.freq_settle_s = freq_settle_s
        self.min_freq_mhz = cfg.min_freq_mhz
        self.max_freq_mhz: float = cfg.max_freq_mhz
        self.min_vcore_mv: int = cfg.min_vcore_mv
        self.max_vcore_mv: int = cfg.max_vcore_mv
        self.max_power_w: float = cfg.max_power_w
        self.ramp_max_w_s: float = cfg.ramp_max_w_s
        self._trip = _TripLatch()
        self._last: Actuation | None = None
        self._last_s: float | None = None
        self._freq_history: deque[tuple[float, float]] = deque()
        # sample bookkeeping
        self._last_ts: float | None = None
        self._last_fresh_s: float | None = None
        self._sensors = SensorJudge(cfg, self.max_power_w)
        self._fan_short = False  # the bridge applied less fan than the last output asked
        self._over_since_s: float | None = None
        self._check = SampleCheck(fresh=False, fault=None, hottest_c=None, power_w=None)

    # ---- state ----------------------------------------------------------------------------
    @property
    def trip_reason(self) -> str | None:
        """Why the envelope holds the board idle (None: not tripped)."""
        return self._trip.reason

    @property
    def tripped(self) -> bool:
        return self._trip.reason is not None

    @property
    def trips(self) -> int:
        """How many trips the envelope has latched since start."""
        return self._trip.count

    @property
    def thermal_trip(self) -> bool:
        return self._trip.reason is not None and self._trip.reason.split(":")[0] in THERMAL_TRIPS

    @property
    def last(self) -> Actuation | None:
        """The last actuation that left the envelope."""
        return self._last

    @property
    def check(self) -> SampleCheck:
        return self._check

    @property
    def has_sample(self) -> bool:
        """A board sample has arrived since start (the chain stays down until one has)."""
        return self._last_fresh_s is not None

    @property
    def trip_final(self) -> bool:
        """The trip is never released (the sensor trips ran out of retries)."""
        return self._trip.final

    def clear_remaining_s(self, now_s: float) -> float | None:
        """Seconds until a trip may release (None: not tripped or the condition persists)."""
        if not self.tripped or self._trip.final or self._trip.clear_since_s is None:
            return None
        return max(0.0, self._trip.clear_since_s + self.cfg.trip_hold_s - now_s)

    # ---- samples --------------------------------------------------------------------------
    def observe(self, now_s: float, sample: BoardReading | None) -> SampleCheck:
        """Judge the latest board sample (None or a repeated `ts_s`: nothing new) and update
        the trip latch. Returns what the governor may use of it."""
        fresh = sample is not None and sample.ts_s != self._last_ts
        fault: str | None = None
        prev = self._check
        hottest, power, temps_valid = prev.hottest_c, prev.power_w, prev.temps_valid
        chain_powered, vr_temp = prev.chain_powered, prev.vr_temp_c
        if fresh:
            assert sample is not None
            self._last_ts = sample.ts_s
            self._last_fresh_s = now_s
            fault, hottest, power, temps_valid = self._judge(now_s, sample)
            chain_powered = bool(sample.chain_powered)
            vr = sample.vr_temp_c
            vr_temp = float(vr) if vr is not None and finite(vr) else None
        if fault is None and self._last_fresh_s is not None and \
                now_s - self._last_fresh_s > self.cfg.sensor_stale_s:
            fault = f"sensor_stale: no new board sample for {now_s - self._last_fresh_s:.2f} s"
        if fault is None and fresh:
            fault = self._persistent_faults(now_s, chain_powered, temps_valid, power)
        elif fault is not None:
            self._over_since_s = None
        self._check = SampleCheck(fresh, fault, hottest, power, chain_powered, temps_valid,
                                  vr_temp)
        self._latch(now_s, fault, hottest)
        return self._check

    def _judge(
        self, now_s: float, s: BoardReading
    ) -> tuple[str | None, float | None, float | None, bool]:
        """Instant checks of one new sample: the sensors' readings, bridge trip, temperatures,
        then the sensors over time (frozen, stuck or dark channels)."""
        fault, temps = self._sensors.readings(s)
        if fault is not None:
            return fault, None, None, False
        hottest = max(temps) if temps else None
        power = float(s.power_w) if s.power_w is not None else None
        if s.trip_reason:
            return f"bridge_trip: {s.trip_reason}", hottest, power, bool(temps)
        if hottest is not None and hottest >= self.cfg.max_chip_temp_hard_c:
            return f"overtemp: chip {hottest:.1f} C >= {self.cfg.max_chip_temp_hard_c:g} C", \
                hottest, power, True
        if s.vr_temp_c is not None and s.vr_temp_c >= self.cfg.max_vr_temp_c:
            return f"vr_overtemp: {s.vr_temp_c:.1f} C >= {self.cfg.max_vr_temp_c:g} C", \
                hottest, power, bool(temps)
        return self._sensors.watch(now_s, s, power, bool(temps)), hottest, power, bool(temps)

    def _persistent_faults(
        self, now_s: float, chain_powered: bool, temps_valid: bool, power: float | None
    ) -> str | None:
        """Faults that need a condition to last: no chip temperature, over power."""
        missing = self._sensors.missing(now_s, chain_powered, temps_valid)
        if missing is not None:
            return missing
        limit = self.max_power_w * (1.0 + self.cfg.overpower_margin_pct / 100.0)
        if power is not None and power > limit:
            if self._over_since_s is None:
                self._over_since_s = now_s
            if now_s - self._over_since_s >= self.cfg.overpower_s:
                return f"overpower: {power:.1f} W > {limit:.1f} W for {self.cfg.overpower_s:g} s"
        else:
            self._over_since_s = None
        return None

    def _latch(self, now_s: float, fault: str | None, hottest: float | None) -> None:
        trip = self._trip
        if fault is not None:
            if trip.reason is None:
                trip.reason, final = self._sensors.trip(now_s, fault)
                trip.final = trip.final or final
                trip.count += 1
                log.warning("envelope trip: %s", trip.reason)
            trip.clear_since_s = None
            return
        if trip.reason is None or trip.final:
            return
        clear = True
        if self.thermal_trip and hottest is not None and \
                hottest > (self.cfg.trip_clear_temp_c or 0.0):
            clear = False
        vr = self._check.vr_temp_c
        if trip.reason.startswith("vr_overtemp") and (
                vr is None or vr > self.cfg.max_vr_temp_c - VR_CLEAR_MARGIN_C):
            clear = False
        if not self._check.fresh and self._check.power_w is None:
            clear = False
        if not clear:
            trip.clear_since_s = None
            return
        if trip.clear_since_s is None:
            trip.clear_since_s = now_s
            log.info("envelope: trip condition cleared (%s); holding %g s", trip.reason,
                     self.cfg.trip_hold_s)
        if now_s - trip.clear_since_s >= self.cfg.trip_hold_s:
            log.warning("envelope: trip released after %g s clear (%s)", self.cfg.trip_hold_s,
                        trip.reason)
            trip.reason = None
            trip.clear_since_s = None

    # ---- outputs --------------------------------------------------------------------------
    def idle(self, reason: str, mode: str = "tripped") -> Actuation:
        """The safe idle: chain powered down at the foot of the V/f curve, fan at 100 %."""
        return Actuation(self.min_freq_mhz, self.min_vcore_mv, 100, False, mode, 0.0, reason)

    def _vcore_for(self, freq_mhz: float) -> int:
        v = math.ceil(self.curve.vcore_mv(freq_mhz) - 1e-6)
        return int(min(self.max_vcore_mv, max(self.min_vcore_mv, v)))

    def held_vcore_mv(self, now_s: float) -> int | None:
        """The lowest core voltage the next powered output may have: enough for every frequency
        still settling (None: the chain is down, nothing is held)."""
        prev = self._last
        if prev is None or not prev.chain_power_on:
            return None
        return self._vcore_for(self._settling_mhz(now_s, prev))

    def _settling_mhz(self, now_s: float, prev: Actuation) -> float:
        """The highest frequency of the last output and of those still settling."""
        settling = max((fr for t, fr in self._freq_history if now_s - t < self.freq_settle_s),
                       default=prev.freq_mhz)
        return max(settling, prev.freq_mhz)

    def chain_restarted(self) -> None:
        """The chain lost its state (re-initialisation, power cut by the board): the next
        powered output is a power-on again (minimum frequency), and the ramp counts from zero."""
        last = self._last
        if last is not None and last.chain_power_on:
            self._last = Actuation(self.min_freq_mhz, last.vcore_mv, last.fan_pct, False,
                                   last.mode, 0.0, last.reason)
            self._freq_history.clear()

    def adopt(self, now_s: float, running: Actuation) -> None:
        """A chain found running (an agent restart): `running` is what the hardware does now,
        so the next outputs are ramped from there, not powered on from the minimum."""
        self._last, self._last_s = running, now_s
        self._freq_history.clear()
        self._freq_history.append((now_s, running.freq_mhz))

    def applied(self, *, freq_mhz: float | None = None, vcore_mv: int | None = None,
                fan_pct: int | None = None, chain_power_on: bool | None = None) -> None:
        """What reached the hardware for the last output (the bridge's answers; None: as asked):
        the next outputs start from these. A chain power-on that did not get through makes the
        next powered output a power-on again; a lower core voltage bounds the frequency; less
        fan than asked holds the frequency."""
        last = self._last
        if last is None:
            return
        changes: dict[str, Any] = {}
        if freq_mhz is not None and finite(freq_mhz) and freq_mhz != last.freq_mhz:
            changes["freq_mhz"] = float(freq_mhz)
        if vcore_mv is not None and vcore_mv != last.vcore_mv:
            changes["vcore_mv"] = int(vcore_mv)
        if fan_pct is not None:
            self._fan_short = fan_pct < last.fan_pct
            if fan_pct != last.fan_pct:
                changes["fan_pct"] = int(fan_pct)
        if chain_power_on is not None and chain_power_on != last.chain_power_on:
            changes["chain_power_on"] = bool(chain_power_on)
            if not chain_power_on:
                changes["freq_mhz"] = self.min_freq_mhz
                changes["target_w"] = 0.0
                self._freq_history.clear()
        if changes:
            self._last = replace(last, **changes)

    def enforce(self, now_s: float, proposed: Actuation) -> Actuation:
        """The last step of every output: return `proposed` brought inside the envelope."""
        prev, prev_s = self._last, self._last_s
        dt = self.control_period_s if prev_s is None else now_s - prev_s
        dt = min(max(dt, 0.0), 2.5 * self.control_period_s)
        if self.tripped:
            assert self._trip.reason is not None
            out = self.idle(self._trip.reason)
            return self._record(now_s, out, ("tripped",) if proposed.mode != "tripped" else ())
        limits: list[str] = []
        cfg = self.cfg
        f = proposed.freq_mhz if finite(proposed.freq_mhz) else self.min_freq_mhz
        if not self.min_freq_mhz <= f <= self.max_freq_mhz:
            f = min(self.max_freq_mhz, max(self.min_freq_mhz, f))
            limits.append("freq")
        on = bool(proposed.chain_power_on)
        if on and not self.has_sample:
            on = False
            limits.append("no_sample_yet")
        fan = int(proposed.fan_pct) if finite(proposed.fan_pct) else 100
        fan = min(100, max(0, fan))
        hottest = self._check.hottest_c
        if hottest is not None and hottest >= cfg.max_chip_temp_soft_c and fan < 100:
            fan = 100
            limits.append("fan_hot")
        if on and fan < self.fan_min_pct:
            fan = self.fan_min_pct
            limits.append("fan_min")
        target = proposed.target_w if finite(proposed.target_w) else 0.0
        if not 0.0 <= target <= self.max_power_w:
            target = min(self.max_power_w, max(0.0, target))
            limits.append("power_cap")
        budget = self.ramp_max_w_s * dt
        if prev is not None:
            lo, hi = prev.target_w - budget, prev.target_w + budget
            if not lo <= target <= hi:
                target = min(hi, max(lo, target))
                limits.append("ramp_target")
        if not on:
            f, v = self.min_freq_mhz, self.min_vcore_mv
        elif prev is None or not prev.chain_power_on:
            if f != self.min_freq_mhz:
                limits.append("power_on_at_min")
            f, v = self.min_freq_mhz, self._vcore_for(self.min_freq_mhz)
        else:
            if self._fan_short and f > prev.freq_mhz:
                f = prev.freq_mhz  # no more heat before the air the last output asked for
                limits.append("fan_unconfirmed")
            f, v = self._step(now_s, prev, f, budget, hottest, limits)
        out = Actuation(f, v, fan, on, proposed.mode, target, proposed.reason)
        return self._record(now_s, out, tuple(limits))

    def _step(
        self, now_s: float, prev: Actuation, f: float, budget: float, temp_c: float | None,
        limits: list[str],
    ) -> tuple[float, int]:
        """Frequency and voltage for a powered chain: sequencing and the ramp on modelled power."""
        m = self.model
        # voltage: enough for the wanted frequency and for every frequency still settling
        v = self._vcore_for(max(f, self._settling_mhz(now_s, prev)))
        # frequency: no higher than the voltage in force supports
        f_ok = min(self.curve.max_freq_mhz(prev.vcore_mv), self.max_freq_mhz)
        if f > f_ok + 1e-9:
            f = max(min(f, f_ok), self.min_freq_mhz)
            limits.append("vcore_first")
        p_prev = m.power_w(prev.freq_mhz, prev.vcore_mv, temp_c)
        hi, lo = p_prev + budget, p_prev - budget
        if m.power_w(f, v, temp_c) > hi + 1e-9:
            limits.append("ramp")
            if m.power_w(prev.freq_mhz, v, temp_c) > hi:
                v = max(prev.vcore_mv, math.floor(m.vcore_for_power_at_freq(hi, prev.freq_mhz,
                                                                             temp_c)))
                v = min(v, self.max_vcore_mv)
            f_hi = m.freq_for_power_at_vcore(hi, v, temp_c)
            f = max(self.min_freq_mhz, min(f, f_hi))
            if not self.curve.supports(f, prev.vcore_mv) or not self.curve.supports(f, v):
                f = max(self.min_freq_mhz,
                        min(f, self.curve.max_freq_mhz(min(prev.vcore_mv, v))))
        elif m.power_w(f, v, temp_c) < lo - 1e-9:
            limits.append("ramp")
            f_lo = m.freq_for_power_at_vcore(lo, v, temp_c)
            f = max(f, min(f_lo, prev.freq_mhz))
            if m.power_w(f, v, temp_c) < lo - 1e-9 and v < prev.vcore_mv:
                v_lo = math.ceil(m.vcore_for_power_at_freq(lo, f, temp_c))
                v = int(min(prev.vcore_mv, max(v, v_lo)))
        v = max(v, self._vcore_for(f))
        return f, int(v)

    def _record(self, now_s: float, out: Actuation, limits: tuple[str, ...]) -> Actuation:
        if limits:
            out = Actuation(out.freq_mhz, out.vcore_mv, out.fan_pct, out.chain_power_on, out.mode,
                            out.target_w, out.reason, limits)
        self._last, self._last_s = out, now_s
        self._freq_history.append((now_s, out.freq_mhz if out.chain_power_on else 0.0))
        while self._freq_history and now_s - self._freq_history[0][0] > self.freq_settle_s + 1.0:
            self._freq_history.popleft()
        return out
