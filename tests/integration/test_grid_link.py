"""GridLink on a real Mosquitto: birth/Will status, persisted bd, reconnect after the broker is
killed, telemetry buffered across the outage and delivered in order with `lost` exact."""

from __future__ import annotations

import signal
import time

from agent.grid.session import GridPolicy
from tests.integration.conftest import CAPS, Observer, plain_settings


def is_status(state: str, bd: int | None = None):
    def match(topic: str, msg, retained: bool) -> bool:
        return (topic.endswith("/status") and isinstance(msg, dict) and msg.get("state") == state
                and (bd is None or msg.get("bd") == bd))
    return match


def test_birth_status_is_retained_with_caps_and_bd_counts_connects(mosquitto, tmp_path,
                                                                    device_factory) -> None:
    dev = device_factory(plain_settings(mosquitto, tmp_path), name="d")
    obs = Observer(mosquitto, ["gridminer/site-a/dev-1/status"])
    try:
        _, status, _ = obs.wait_for(is_status("online"))
        assert status["v"] == 1 and status["bd"] == 1 and status["fw"]
        assert status["caps"] == CAPS and status["mode"] == "mining"
        dev.stop()
        obs.wait_for(is_status("offline", 1))  # a clean stop says offline itself
    finally:
        obs.close()
    dev2 = device_factory(plain_settings(mosquitto, tmp_path), name="d")  # same state dir
    obs = Observer(mosquitto, ["gridminer/site-a/dev-1/status"])
    try:
        obs.wait_for(is_status("online", 2))  # bd persisted and incremented
    finally:
        obs.close()
    assert dev2.link.bd == 2


def test_broker_restart_will_then_birth_and_buffered_telemetry_in_order(
    mosquitto, tmp_path, device_factory
) -> None:
    policy = GridPolicy(restart_spread_s=0.0, telemetry_period_s=0.05, telemetry_buffer=8)
    settings = plain_settings(mosquitto, tmp_path)
    settings.reconnect_min_s = 1.5  # leaves the observer time to subscribe after the restart
    settings.reconnect_max_s = 2.0
    dev = device_factory(settings, name="d", policy=policy)
    obs = Observer(mosquitto, ["gridminer/site-a/dev-1/status"])
    obs.wait_for(is_status("online", 1))
    obs.close()
    mosquitto.stop(signal.SIGTERM)  # the broker goes down; it sends the Wills as it goes
    deadline = time.monotonic() + 5
    while dev.link.connected and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not dev.link.connected
    time.sleep(1.0)  # ~20 telemetry periods with a buffer of 8
    produced_offline = dev.session.telemetry.seq
    mosquitto.start()
    obs = Observer(mosquitto, ["gridminer/site-a/dev-1/#"])
    try:
        obs.wait_for(is_status("offline", 1), timeout_s=2)  # the Will, retained
        obs.wait_for(is_status("online", 2), timeout_s=10)  # reconnected by itself
        telemetry = []
        obs.wait_for(lambda t, m, r: t.endswith("/telemetry") and telemetry.append(m) is None
                     and len(telemetry) >= 8, timeout_s=5)
    finally:
        obs.close()
    first = telemetry[:8]
    seqs = [m["seq"] for m in first]
    assert seqs == list(range(seqs[0], seqs[0] + 8)), seqs  # in order, no gap inside the buffer
    lost = first[0]["lost"]
    assert lost > 0 and all(m["lost"] == lost for m in first)
    # every message produced during the outage is either delivered or counted in `lost`
    assert seqs[-1] + 1 >= produced_offline
    assert dev.session.telemetry.lost == lost
    assert dev.link.connects == 2


DEVICE_SCRIPT = """
import sys, time
from agent.grid.link import GridLink, LinkSettings
link = GridLink(LinkSettings(sys.argv[1], "site-a", "dev-9", state_dir=sys.argv[2]))
link.set_status({"min_w": 1, "max_w": 2, "ramp_max_w_s": 3}, "mining")
link.start()
while not link.connected:
    time.sleep(0.01)
print("up", link.bd, flush=True)
time.sleep(60)
"""


def test_killed_agent_leaves_its_will_and_comes_back_with_the_next_bd(mosquitto,
                                                                       tmp_path) -> None:
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).parents[2]
    obs = Observer(mosquitto, ["gridminer/site-a/dev-9/status"])
    try:
        for bd in (1, 2):
            proc = subprocess.Popen([sys.executable, "-c", DEVICE_SCRIPT, mosquitto.url,
                                     str(tmp_path / "state")], cwd=root, stdout=subprocess.PIPE,
                                    text=True)
            assert proc.stdout is not None
            assert proc.stdout.readline().split() == ["up", str(bd)]
            obs.wait_for(is_status("online", bd))
            proc.kill()  # kill -9: no DISCONNECT, the broker publishes the Will
            proc.wait(5)
            proc.stdout.close()
            _, will, _ = obs.wait_for(is_status("offline", bd))
            assert will["caps"] == {"min_w": 1, "max_w": 2, "ramp_max_w_s": 3}
    finally:
        obs.close()
