"""The governor's online correction of the power model. It integrates the difference between
measured power and the model's prediction for what was commanded `response_delay_s` earlier
(filtered with `response_tau_s`), applied as a gain on the chips' power (`correction = "gain"`)
or as an offset; comparing against what was actually commanded, it absorbs model error without
winding up during ramps or saturation, and it is clamped to `correction_limit_pct`. Measured
power over the cap is explained at once. Steady points at two different loads split the error
into gain and offset (`learn_offset`), so the next step starts from a better model. While a fast
move settles (a step of the reference or of the commanded power above `TRANSIENT_SHARE` of max
power in one tick) the correction holds still: the measurement's timing, not the model, explains
most of the difference then."""

from __future__ import annotations

import logging
import math
from collections import deque

from agent.config import GovernorConfig
from agent.control.envelope import Actuation, SampleCheck
from agent.control.power_model import PowerModel

log = logging.getLogger("gridminer.governor")

STEADY_S = 2.0  # a load held this long with a small residual is a steady point
STEADY_RESID_SHARE = 0.015
SPLIT_MIN_SHARE = 0.2  # two steady points this far apart (share of max power) split the error
SPLIT_DAMPING = 0.8
CAP_GUARD_SHARE = 0.01  # measured power this far over the cap (and the model) is corrected at once
TRANSIENT_SHARE = 0.05  # a commanded step above this share of max power slows the correction
TRANSIENT_KI_SHARE = 0.0  # ... to this share of its integral gain until it has settled


class ModelCorrection:
    """Learns the power model's error online: the model's `gain` (its multiplicative part) and
    `offset_w` (its additive part); `validated_w` is the highest load held steady so far (the
    model has been checked up to there)."""

    def __init__(self, model: PowerModel, cfg: GovernorConfig, max_power_w: float) -> None:
        self.model = model
        self.cfg = cfg
        self.max_power_w = max_power_w
        self.offset_w = 0.0
        self.validated_w = 0.0
        self._pred_hist: deque[tuple[float, tuple[float, float]]] = deque()
        self._pred_delayed: tuple[float, float] = (0.0, 0.0)  # chain power at gain 1, on
        self._chain0_f = 0.0  # ... filtered like the measurement
        self._on_f = 0.0
        self._steady_since: float | None = None
        self._steady_taken = False
        self._steady_ref_w = 0.0
        self._steady_point: tuple[float, float] | None = None
        self._transient_until_s = 0.0
        self._last_target_w = 0.0

    def adopt(self, now_s: float, freq_mhz: float, vcore_mv: float, temp_c: float | None,
              power_w: float) -> None:
        """A chain found running at `power_w` (an agent restart): correct the model to it there
        and predict from it on."""
        m = self.model
        chain0 = self._chain0_w(freq_mhz, vcore_mv, temp_c)
        if self.cfg.correction == "gain" and chain0 > 0:
            m.gain = self._clamped_gain((power_w - m.params.overhead_w) / chain0)
        else:
            self.offset_w = self._clamped_offset_w(power_w - m.power_w(freq_mhz, vcore_mv, temp_c))
        self.validated_w = power_w
        self._pred_hist.clear()
        self._pred_hist.append((now_s, (chain0, 1.0)))
        self._pred_delayed = (chain0, 1.0)
        self._chain0_f, self._on_f = chain0, 1.0
        self._last_target_w = power_w

    def observe(self, now_s: float, dt: float, chk: SampleCheck, last: Actuation | None, *,
                ref_w: float, starting: bool, hold: bool = False) -> None:
        """Advance the prediction of measured power and integrate the model error into the
        model's gain (or the offset); learn the split from steady points at different loads.
        `last` is the envelope's last output, `ref_w` the governor's ramped reference; `hold`:
        the chips do not run at what the governor commands (the driver winds them down before a
        reset), so the measurement says nothing about the model and nothing is learnt."""
        delay = self.cfg.response_delay_s
        while self._pred_hist and self._pred_hist[0][0] <= now_s - delay + 1e-9:
            _, self._pred_delayed = self._pred_hist.popleft()
        chain0, on = self._pred_delayed
        tau = self.cfg.response_tau_s
        alpha = 1.0 if tau <= 0 else 1.0 - math.exp(-dt / tau)
        self._chain0_f += alpha * (chain0 - self._chain0_f)
        self._on_f += alpha * (on - self._on_f)
        if hold or not (chk.fresh and chk.power_w is not None and chk.chain_powered
                        and last is not None and last.chain_power_on and self._on_f > 0.5):
            self._steady_since = None
            return
        model = self.model
        gain = model.gain
        overhead = model.params.overhead_w
        predicted = gain * self._chain0_f + overhead * self._on_f + self.offset_w
        resid = chk.power_w - predicted
        ki = self.cfg.correction_ki_per_s
        noise = CAP_GUARD_SHARE * self.max_power_w
        if chk.power_w > self.max_power_w + noise and resid > noise:
            # over the cap: explain the whole excess at once (the next tick steps down)
            lim = self.cfg.correction_limit_pct / 100.0
            if self.cfg.correction == "gain" and self._chain0_f > 0:
                model.gain = min(1.0 + lim, gain + resid / self._chain0_f)
            else:
                self.offset_w = min(lim * self.max_power_w, self.offset_w + resid)
            self._steady_since = None
            return
        if now_s < self._transient_until_s and self._steady_point is not None:
            # a fast move is still settling: its residual says less about the model
            self._steady_since = None
            ki *= TRANSIENT_KI_SHARE
        if self.cfg.correction == "gain":
            floor = 0.25 * self.max_power_w
            gain += ki * dt * resid / max(self._chain0_f, floor)
            model.gain = self._clamped_gain(gain)
        else:
            self.offset_w = self._clamped_offset_w(self.offset_w + ki * resid * dt)
        if self.cfg.learn_offset and now_s >= self._transient_until_s:
            self._learn_split(now_s, resid, ref_w, starting)

    def _learn_split(self, now_s: float, resid: float, ref_w: float, starting: bool) -> None:
        """At two steady loads the total correction e = (gain - 1) * chain + offset gives the
        true error line; move gain and offset toward it without changing e where we are."""
        steady = (abs(resid) < STEADY_RESID_SHARE * self.max_power_w and not starting
                  and abs(ref_w - self._steady_ref_w) < 1e-3 * self.max_power_w)
        self._steady_ref_w = ref_w
        if not steady:
            self._steady_since = None
            return
        if self._steady_since is None:
            self._steady_since = now_s
            self._steady_taken = False
        if self._steady_taken or now_s - self._steady_since < STEADY_S:
            return
        self._steady_taken = True
        self.validated_w = max(self.validated_w, ref_w)
        c2 = self._chain0_f
        e2 = (self.model.gain - 1.0) * c2 + self.offset_w
        point = self._steady_point
        self._steady_point = (c2, e2)
        if point is None or abs(point[0] - c2) < SPLIT_MIN_SHARE * self.max_power_w:
            return
        c1, e1 = point
        slope = (e1 - e2) / (c1 - c2)  # true gain - 1
        lim = self.cfg.correction_limit_pct / 100.0
        slope = min(lim, max(-lim, slope))
        g = self.model.gain
        self.model.gain = g + SPLIT_DAMPING * (1.0 + slope - g)
        # keep e where we are
        self.offset_w = self._clamped_offset_w(e2 - (self.model.gain - 1.0) * c2)
        log.info("governor: model error split: gain %.3f, offset %+.2f W", self.model.gain,
                 self.offset_w)

    def _clamped_gain(self, gain: float) -> float:
        lim = self.cfg.correction_limit_pct / 100.0
        return min(1.0 + lim, max(1.0 - lim, gain))

    def _clamped_offset_w(self, offset_w: float) -> float:
        limit = self.cfg.correction_limit_pct / 100.0 * self.max_power_w
        return min(limit, max(-limit, offset_w))

    def _chain0_w(self, freq_mhz: float, vcore_mv: float, temp_c: float | None) -> float:
        """The model's power less overhead at gain 1: what the correction scales."""
        m = self.model
        return (m.power_w(freq_mhz, vcore_mv, temp_c) - m.params.overhead_w) / m.gain

    def record(self, now_s: float, out: Actuation, temp_c: float | None) -> None:
        """What left the governor on this tick: the prediction to compare with the measurement
        `response_delay_s` later; a large step starts a transient."""
        chain0 = self._chain0_w(out.freq_mhz, out.vcore_mv, temp_c) if out.chain_power_on \
            else 0.0
        on = 1.0 if out.chain_power_on else 0.0
        if self._pred_hist:
            _, (c_prev, on_prev) = self._pred_hist[-1]
            step = abs(self.model.gain * (chain0 - c_prev)) + abs(on - on_prev) * 1e9
            # a fast move of the reference counts too: its first tick may only raise the voltage
            step = max(step, abs(out.target_w - self._last_target_w))
            if step > TRANSIENT_SHARE * self.max_power_w:
                g = self.cfg
                self._transient_until_s = now_s + g.response_delay_s + 3.0 * g.response_tau_s
        self._pred_hist.append((now_s, (chain0, on)))
        self._last_target_w = out.target_w
