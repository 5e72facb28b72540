"""The whole agent on the emulator when its board vanishes, and when another thread tells it to
fail (agent/control/runtime.py)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from tests.integration.test_agent_run import AgentRig
from tests.support.polling import poll_until

MEASURED = ("power_w", "vcore_mv", "temp_c", "board_temp_c", "fan_pct")


@pytest.fixture
def rig() -> Iterator[AgentRig]:
    r = AgentRig()
    yield r
    r.stop()


def test_a_killed_emulator_trips_the_agent_and_no_stale_power_is_reported(rig):
    assert poll_until(lambda: rig.driver.state == "mining", 30)
    assert rig.runtime.snapshot()["power_w"] > 0
    rig._done.set()  # the rig's own sampler reads the emulator: stop it first
    rig._threads[1].join(timeout=2)
    rig.emu.stop()  # the board and the chain vanish
    assert poll_until(lambda: rig.mode == "tripped", 5)
    assert poll_until(lambda: bool(rig.lines) and "board=lost" in rig.lines[-1], 10)
    snap = rig.runtime.snapshot()
    assert {k: snap[k] for k in MEASURED} == dict.fromkeys(MEASURED)
    assert snap["board"] == "lost"
    line = rig.lines[-1]
    assert "mode=tripped" in line and "power=-" in line and "board=lost" in line, line
    assert rig.code is None  # it waits for the board to come back


def test_fail_from_another_thread_stops_the_run_with_the_chain_idled(rig):
    assert poll_until(lambda: rig.driver.state == "mining", 30)
    threading.Thread(target=rig.runtime.fail, args=("grid: another client holds dev-1", 3),
                     daemon=True).start()
    assert poll_until(lambda: rig.code is not None, 15)
    assert rig.code == 3 and rig.runtime.error == "grid: another client holds dev-1"
    assert not rig.emu.state()["chain_powered"]
