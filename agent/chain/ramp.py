"""The chips' hash clock: a ramp in steps of `ramp_step_mhz`, one every `ramp_interval_s`, to the
frequency asked for, then the hash counting number for the clock reached (spec §4.6); and the
descent to the reset clock before a reset, paced by power (`descent_plan`)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from agent.chain.settings import START_FREQ_MHZ, ChainSettings
from agent.chain.uart import ChainUart
from firmware_bridge import asic, bringup

# one step of a descent: wait this long, then set this clock (None: the wait before the reset)
DescentStep = tuple[float, float | None]


def descent_plan(freq_mhz: float, power_w: Callable[[float], float], ramp_w_s: float,
                 period_s: float = 0.1, step_mhz: float = 6.25) -> list[DescentStep]:
    """The way from `freq_mhz` down to the reset clock (50 MHz) before a reset, at most 90 % of
    `ramp_w_s` of modelled power (`power_w(freq_mhz)`) per `period_s`: each step waits before it
    as long as its drop needs, and so does the reset after the last one (its drop taken as all of
    the power at the reset clock), so the moves before and after stay within the ramp too."""
    budget = 0.9 * ramp_w_s * period_s

    def wait_s(drop_w: float) -> float:
        return period_s * max(1.0, drop_w / budget if budget > 0 else 1.0)

    f = freq_mhz
    steps = asic.ramp_steps(f, START_FREQ_MHZ, step_mhz) if f > START_FREQ_MHZ else []
    plan: list[DescentStep] = []
    i = 0
    while i < len(steps):
        # the lowest next step whose power is within the budget (at least one step)
        j = i
        while j + 1 < len(steps) and power_w(f) - power_w(steps[j + 1]) <= budget:
            j += 1
        plan.append((wait_s(power_w(f) - power_w(steps[j])), steps[j]))
        f = steps[j]
        i = j + 1
    plan.append((wait_s(power_w(f)), None))
    return plan


def pll_frames(family: str, freq_mhz: float) -> list[bytes]:
    """The writes that set the chips' hash clock (BM1397: the post-divider first)."""
    frames = [asic.cmd_write(asic.REG_PLL0_DIVIDER, 0x0F0F0F00)] if family == "BM1397" else []
    return [*frames, asic.cmd_write(asic.REG_PLL0, asic.pll_value(family, freq_mhz))]


class FrequencyRamp:
    """Where the clock is (`freq_mhz`), where it goes (`target_freq_mhz`) and what was last
    asked for (`requested_mhz`, kept across recoveries). PLL0 is written only when its value
    changes: the PLL's grid is coarser than a governor's requests."""

    def __init__(self, settings: ChainSettings, uart: ChainUart, family: str) -> None:
        self.settings = settings
        self.uart = uart
        self.settings_family = family
        self.family = family  # of the chips the PLL frames are for (`adopt` may say another)
        self.freq_mhz = START_FREQ_MHZ
        self.target_freq_mhz = max(settings.min_freq_mhz, START_FREQ_MHZ)
        self.requested_mhz = self.target_freq_mhz
        self.next_step_s = 0.0
        self._pll_value = asic.pll_value(family, START_FREQ_MHZ)
        self._hcn_pending = False
        self._hcn_written: bytes | None = None
        self._descent: deque[DescentStep] = deque()

    @property
    def pending(self) -> bool:
        """A step or the HCN write is still to come."""
        return bool(self._descent) or self.freq_mhz != self.target_freq_mhz \
            or self._hcn_pending

    @property
    def descending(self) -> bool:
        """A descent to the reset clock (`descend`) is under way."""
        return bool(self._descent)

    def request(self, freq_mhz: float, retarget: bool = True) -> None:
        """Ask for a clock, clamped to the settings' bounds; with `retarget` off (stopping) it
        waits for `begin`."""
        f = min(max(float(freq_mhz), self.settings.min_freq_mhz), self.settings.max_freq_mhz)
        self.requested_mhz = f
        if retarget:
            self.target_freq_mhz = f

    def reset(self) -> None:
        """The chips are at their reset clock; the HCN is theirs to be written again."""
        self.family = self.settings_family
        self.freq_mhz = START_FREQ_MHZ
        self._pll_value = asic.pll_value(self.family, START_FREQ_MHZ)
        self._hcn_written = None
        self._hcn_pending = False
        self._descent.clear()

    def adopt(self, freq_mhz: float, pll_value: int, family: str | None = None) -> None:
        """Chips found running at `freq_mhz`: stay there, and write the HCN for it again.
        `family`: the running chips' own, when it is not the settings' (they are wound down
        with its PLL frames before a reset, `descend`; `reset` forgets it)."""
        self.family = family or self.settings_family
        self.freq_mhz = freq_mhz
        self._pll_value = pll_value
        self.requested_mhz = self.target_freq_mhz = freq_mhz
        self._hcn_written = None
        self._hcn_pending = True

    def begin(self, now: float) -> None:
        """Hashing begins: ramp to the frequency last asked for, from now."""
        self.next_step_s = now
        self.target_freq_mhz = self.requested_mhz

    def stop(self, now: float) -> None:
        """Ramp down to the reset clock, starting now (a descent goes on at its own pace)."""
        self.target_freq_mhz = START_FREQ_MHZ
        if not self._descent:
            self.next_step_s = min(self.next_step_s, now)

    def descend(self, now: float, plan: list[DescentStep]) -> None:
        """Go down to the reset clock along `plan` (`descent_plan`), one step per `poll` when
        its wait is over; `pending` until the wait after the last step is over too."""
        self._descent = deque(plan)
        self.target_freq_mhz = START_FREQ_MHZ
        self._hcn_pending = False
        self.next_step_s = now + (plan[0][0] if plan else 0.0)

    def poll(self, now: float, chips: int) -> None:
        """The next step if it is due, then the HCN for `chips` chips once the target is met."""
        if now < self.next_step_s:
            return
        if self._descent:
            _wait_s, freq = self._descent.popleft()
            if freq is not None:
                self._write_freq(freq)
            if self._descent:
                self.next_step_s = now + self._descent[0][0]
            else:
                self.target_freq_mhz = self.freq_mhz  # down: the reset clock, or below it
            return
        if self.freq_mhz != self.target_freq_mhz:
            step = asic.ramp_steps(self.freq_mhz, self.target_freq_mhz,
                                   self.settings.ramp_step_mhz)[0]
            self._write_freq(step)
            self.next_step_s = now + self.settings.ramp_interval_s
            if self.freq_mhz == self.target_freq_mhz:
                self._hcn_pending = True
        if self._hcn_pending and self.freq_mhz == self.target_freq_mhz:
            self._hcn_pending = False
            frame = bringup.hcn_frame(self.family, self.freq_mhz, max(1, chips))
            if frame is not None and frame != self._hcn_written:
                self.uart.write(frame)
                self._hcn_written = frame

    def _write_freq(self, freq_mhz: float) -> None:
        value = asic.pll_value(self.family, freq_mhz)
        if value != self._pll_value:
            for frame in pll_frames(self.family, freq_mhz):
                self.uart.write(frame)
            self._pll_value = value
        self.freq_mhz = freq_mhz
