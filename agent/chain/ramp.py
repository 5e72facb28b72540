"""The chips' hash clock: a ramp in steps of `ramp_step_mhz`, one every `ramp_interval_s`, to the
frequency asked for, then the hash counting number for the clock reached (spec §4.6)."""

from __future__ import annotations

from agent.chain.settings import START_FREQ_MHZ, ChainSettings
from agent.chain.uart import ChainUart
from firmware_bridge import asic, bringup


class FrequencyRamp:
    """Where the clock is (`freq_mhz`), where it goes (`target_freq_mhz`) and what was last
    asked for (`requested_mhz`, kept across recoveries). PLL0 is written only when its value
    changes: the PLL's grid is coarser than a governor's requests."""

    def __init__(self, settings: ChainSettings, uart: ChainUart, family: str) -> None:
        self.settings = settings
        self.uart = uart
        self.family = family
        self.freq_mhz = START_FREQ_MHZ
        self.target_freq_mhz = max(settings.min_freq_mhz, START_FREQ_MHZ)
        self.requested_mhz = self.target_freq_mhz
        self.next_step_s = 0.0
        self._pll_value = asic.pll_value(family, START_FREQ_MHZ)
        self._hcn_pending = False
        self._hcn_written: bytes | None = None

    @property
    def pending(self) -> bool:
        """A step or the HCN write is still to come."""
        return self.freq_mhz != self.target_freq_mhz or self._hcn_pending

    def request(self, freq_mhz: float, retarget: bool = True) -> None:
        """Ask for a clock, clamped to the settings' bounds; with `retarget` off (stopping) it
        waits for `begin`."""
        f = min(max(float(freq_mhz), self.settings.min_freq_mhz), self.settings.max_freq_mhz)
        self.requested_mhz = f
        if retarget:
            self.target_freq_mhz = f

    def reset(self) -> None:
        """The chips are at their reset clock; the HCN is theirs to be written again."""
        self.freq_mhz = START_FREQ_MHZ
        self._pll_value = asic.pll_value(self.family, START_FREQ_MHZ)
        self._hcn_written = None
        self._hcn_pending = False

    def adopt(self, freq_mhz: float, pll_value: int) -> None:
        """Chips found running at `freq_mhz`: stay there, and write the HCN for it again."""
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
        """Ramp down to the reset clock, starting now."""
        self.target_freq_mhz = START_FREQ_MHZ
        self.next_step_s = min(self.next_step_s, now)

    def poll(self, now: float, chips: int) -> None:
        """The next step if it is due, then the HCN for `chips` chips once the target is met."""
        if now < self.next_step_s:
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
            if self.family == "BM1397":
                self.uart.write(asic.cmd_write(asic.REG_PLL0_DIVIDER, 0x0F0F0F00))
            self.uart.write(asic.cmd_write(asic.REG_PLL0, value))
            self._pll_value = value
        self.freq_mhz = freq_mhz
