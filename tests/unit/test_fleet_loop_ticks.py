"""The fleet loop's control ticks for a device: a command's tick whose clock waits for the voltage
is followed when the voltage has settled (as the agent's runtime does), not at the device's
next phase, so a virtual device's load follows a command as a real board's does."""

from __future__ import annotations

import random
import time
from pathlib import Path

from agent.control.runtime import VCORE_SETTLE_S
from agent.grid.link import LinkSettings
from agent.grid.session import GridPolicy
from hil.fleet.device import VirtualDevice
from hil.fleet.loop import FleetLoop
from hil.fleet.mix import DEFAULT_MIX, specs
from tests.support.polling import wait_until

PERIOD_S = 5.0  # a phase far from the command: a tick that waited for it would show


class RecordingDevice(VirtualDevice):
    """A virtual device that notes when it ticked and what limited each tick."""

    ticks: list[tuple[float, tuple[str, ...]]]

    def tick(self, now_s: float) -> float:
        due = super().tick(now_s)
        assert self.actuation is not None
        self.ticks.append((now_s, tuple(self.actuation.limits)))
        return due


def test_the_clock_follows_a_commanded_voltage_step_once_the_voltage_settled(tmp_path: Path):
    spec = specs(DEFAULT_MIX, 1300, seed=1)[0]
    link = LinkSettings("mqtt://127.0.0.1:1", "s", spec.device, insecure_no_tls=True,
                        state_dir=str(tmp_path / spec.device))  # never connected
    dev = RecordingDevice(spec, link, {}, GridPolicy(), random.Random(1), PERIOD_S)
    dev.ticks = []
    dev.session.start(hot=True)  # its grid session on, as after an agent's restart
    # mining at a third of its rating, ticked by hand up to now
    dev.governor.set_target(spec.rating_w / 3)
    now = time.monotonic()
    for i in range(240):
        dev.tick(now - 60.0 + 0.25 * i)
    assert dev.actuation is not None and dev.actuation.mode == "mining"
    loop = FleetLoop()
    loop.start()
    try:
        phase_s = time.monotonic() + PERIOD_S / 2
        loop.call(lambda: loop.add(dev, phase_s))
        dev.ticks.clear()

        def command() -> None:  # what a served setpoint does: a new target, a tick asked for
            dev.governor.set_target(spec.rating_w, ramp_w_s=spec.rating_w)
            dev.request_tick()
            assert dev.link.on_inbound is not None
            dev.link.on_inbound()

        loop.call(command)
        wait_until(lambda: len(dev.ticks) >= 2, 1.0,
                   lambda: f"the tick after the commanded one (ticks {dev.ticks})")
    finally:
        loop.stop()
        loop.close()
    (t_cmd, limits_cmd), (t_next, limits_next) = dev.ticks[:2]
    assert "vcore_first" in limits_cmd  # the voltage went first ...
    assert VCORE_SETTLE_S - 1e-3 <= t_next - t_cmd < phase_s - t_cmd  # ... the clock soon after
    assert "vcore_first" not in limits_next
