"""The baseline dispatcher on a real Mosquitto with five in-process devices (GridLink +
GridSession): it learns the fleet from status and telemetry, puts the least efficient machines
to sleep in batches, each batch a confirmation wait after the previous one, with signed
commands the devices accept."""

from __future__ import annotations

import time
from typing import Any

from agent.grid.session import GridPolicy
from hil.site.baseline import BaselineDispatcher, BaselinePolicy
from tests.integration.conftest import CAPS, operator_for, plain_settings
from tests.support.polling import wait_until

CONFIRM_S = 1.5
N = 5


def machine(index: int) -> tuple[dict[str, Any], Any]:
    """A device whose telemetry follows the last op it was given; dev-0 is the most efficient
    (its hashrate is the highest at the same power)."""
    holder: dict[str, Any] = {}
    hashrate_ghs = 150_000.0 - 10_000.0 * index

    def snapshot() -> dict[str, Any]:
        dev = holder.get("dev")
        ops = [op for op, _, _ in dev.sink.calls] if dev is not None else []
        asleep = bool(ops) and ops[-1] in ("curtail", "standby")
        power_w = float(CAPS["min_w"] if asleep else CAPS["max_w"])
        return {"mode": "curtailed" if asleep else "mining", "power_w": power_w,
                "target_w": power_w, "hashrate_ghs": 0.0 if asleep else hashrate_ghs}

    return holder, snapshot


def test_baseline_sleeps_least_efficient_first_in_confirmed_batches(no_leaks, mosquitto, tmp_path,
                                                                     device_factory):
    devices = {}
    for i in range(N):
        holder, snapshot = machine(i)
        name = f"dev-{i}"
        dev = device_factory(plain_settings(mosquitto, tmp_path, device=name), name=name,
                             snapshot=snapshot,
                             policy=GridPolicy(restart_spread_s=0.0, telemetry_period_s=0.2))
        holder["dev"] = devices[name] = dev
    op = operator_for(mosquitto, tmp_path).connect()
    policy = BaselinePolicy(batch_fraction=0.0, batch_min=2, confirm_s=CONFIRM_S)
    baseline = BaselineDispatcher(op, "site-a", policy).start()
    try:
        core = baseline.core
        wait_until(lambda: len(core.machines(time.monotonic())) == N
                   and len(core.memory) == N, 10.0, "the fleet")
        before = {name: len(dev.sink.calls) for name, dev in devices.items()}  # start-up ops
        # room for two awake machines: 3 x min_w + 2 x max_w
        target_w = 3 * CAPS["min_w"] + 2 * CAPS["max_w"]
        baseline.set_target(target_w)
        wait_until(lambda: len(baseline.batches) >= 2, 10.0, "two batches")
        first, second = baseline.batches[:2]
        assert first.sleep == ("dev-4", "dev-3") and first.wake == ()
        assert second.sleep == ("dev-2",)
        assert CONFIRM_S <= second.t_s - first.t_s < CONFIRM_S + 0.5
        assert (second.confirmed, second.unconfirmed) == (2, 0)  # telemetry showed both asleep

        def told() -> dict[str, list[str]]:
            return {name: [c[0] for c in dev.sink.calls[before[name]:]]
                    for name, dev in devices.items()}

        expected = {f"dev-{i}": ["curtail"] if i >= 2 else [] for i in range(N)}
        wait_until(lambda: told() == expected, 5.0, lambda: f"the commands, told {told()}")
        # the third tick judges the second batch and finds nothing more to do
        wait_until(lambda: all(d.pending is None for d in core.memory.values()), 5.0,
                   "the second batch's confirmation")
        assert len(baseline.batches) == 2 and baseline.sent == 3
        assert core.estimate_w(time.monotonic()) == target_w
        assert core.rejected == {}
    finally:
        baseline.stop()
        op.close()
