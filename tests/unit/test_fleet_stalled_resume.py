"""A site's resume while the fleet's loop is stalled (its one process busy with a command per
device): the devices' own code must keep the site within the ramps the site gave them."""

from __future__ import annotations

import random
from pathlib import Path

from agent.grid.link import LinkSettings
from agent.grid.session import GridPolicy
from hil.fleet.device import VirtualDevice
from hil.fleet.mix import DEFAULT_MIX, specs

PERIOD_S = 0.25
SITE_RAMP_W_S = 750_000.0 / 1300  # the site_surplus ramp's share of one device


def _largest_rise_in_1s_w(trace: list[tuple[float, float]]) -> float:
    return max(pb - pa for i, (ta, pa) in enumerate(trace) for tb, pb in trace[i:]
               if tb - ta <= 1.0)


def test_a_resume_through_a_stalled_loop_stays_within_the_ramps_sent(tmp_path: Path):
    rng = random.Random(1)
    devices = []
    for spec in specs(DEFAULT_MIX, 1300, seed=1)[:8]:
        link = LinkSettings("mqtt://127.0.0.1:1", "s", spec.device, insecure_no_tls=True,
                            state_dir=str(tmp_path / spec.device))  # never connected
        devices.append(VirtualDevice(spec, link, {}, GridPolicy(),
                                     random.Random(rng.getrandbits(64)), PERIOD_S))
    due = {d: 1000.0 + rng.uniform(0.0, PERIOD_S) for d in devices}
    trace: list[tuple[float, float]] = []

    def tick(d: VirtualDevice, now_s: float) -> float:
        next_s = d.tick(now_s)
        trace.append((now_s, sum(x.plant.power_w for x in devices)))
        return next_s

    def run_until(end_s: float) -> None:
        while (d := min(devices, key=due.__getitem__)) and due[d] <= end_s:
            due[d] = tick(d, due[d])

    for d in devices:
        d.governor.set_target(0.6 * d.spec.rating_w)
    run_until(1060.0)
    for d in devices:
        d.governor.curtail()
    run_until(1090.0)
    stall_s = 2.4  # what the resume's 1,300 commands cost the one-process fleet
    ramps_w_s = 0.0
    for i, d in enumerate(devices):  # each command served, and its device ticked, in turn
        ramp_w_s = round(SITE_RAMP_W_S)
        ramps_w_s += ramp_w_s
        d.governor.set_target(d.spec.rating_w, ramp_w_s)
        tick(d, 1090.0 + stall_s * i / len(devices))
    for d in devices:  # every timer late: they all fire when the loop is free again
        due[d] = 1090.0 + stall_s
    start = len(trace)
    run_until(1100.0)
    climb = trace[start - len(devices):]
    assert climb[-1][1] > climb[0][1] + 0.5 * sum(d.spec.rating_w for d in devices)  # it moved
    assert _largest_rise_in_1s_w(climb) <= ramps_w_s
