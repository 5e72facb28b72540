"""End to end: operator CLI -> Mosquitto -> `gridminer agent` (runtime + governor) on the
emulated hash board -> the chain's frequency moves; the ack comes back to the CLI."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.conftest import Observer
from tests.support.agent_process import start_agent, stop_process

ROOT = Path(__file__).parents[2]


def cli(*args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout_s)


@pytest.fixture
def emulator(tmp_path):
    status = tmp_path / "emu.json"
    proc = subprocess.Popen([sys.executable, "-m", "agent", "emulate", "--chips", "4",
                             "--status-file", str(status)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        yield info, status
    finally:
        stop_process(proc, 10)


def test_operator_setpoint_moves_the_emulated_chain(mosquitto, emulator, tmp_path) -> None:
    info, emu_status = emulator
    done = cli("operator", "keygen", "--key", str(tmp_path / "op.pem"))
    assert done.returncode == 0, done.stderr
    kid = done.stdout.strip()
    agent_err = open(tmp_path / "agent.err", "w")  # noqa: SIM115 - closed in finally
    agent = start_agent(tmp_path, info["chain"], info["board"], mosquitto.url,
                        tmp_path / "op.pub.pem", kid, agent_err)
    obs = Observer(mosquitto, ["gridminer/s1/d1/status", "gridminer/s1/d1/telemetry"])
    try:
        _, status, _ = obs.wait_for(lambda t, m, r: t.endswith("/status")
                                    and m.get("state") == "online", timeout_s=30)
        caps = status["caps"]
        assert caps["chips"] == 4 and caps["chip_model"] == "BM1370"  # probed: no [chain] keys
        obs.wait_for(lambda t, m, r: t.endswith("/telemetry") and m.get("mode") == "mining",
                     timeout_s=60)
        before = json.loads(emu_status.read_text())["freq_mhz"]
        target = int(caps["min_w"] + 0.3 * (caps["max_w"] - caps["min_w"]))
        done = cli("operator", "setpoint", "--broker", mosquitto.url, "--site", "s1",
                   "--device", "d1", "--power-w", str(target), "--key", str(tmp_path / "op.pem"),
                   "--kid", kid, "--for", "5m", "--timeout", "10", "--json")
        assert done.returncode == 0, (done.stdout, done.stderr)
        ack = json.loads(done.stdout.strip().splitlines()[-1])
        assert ack["result"] == "accepted" and ack["applied_w"] <= target
        ping = cli("operator", "ping", "--broker", mosquitto.url, "--site", "s1", "--device",
                   "d1", "--key", str(tmp_path / "op.pem"), "--kid", kid, "--timeout", "10")
        assert ping.returncode == 0, (ping.stdout, ping.stderr)
        assert re.fullmatch(r"d1: accepted, .*round trip \d+ ms", ping.stdout.strip()), ping.stdout
        started = time.monotonic()
        ghost = cli("operator", "setpoint", "--broker", mosquitto.url, "--site", "s1",
                    "--device", "ghost", "--power-w", "10", "--key", str(tmp_path / "op.pem"),
                    "--kid", kid, "--timeout", "10")
        assert ghost.returncode == 2 and time.monotonic() - started < 8
        assert ghost.stdout.startswith("ghost: not online"), ghost.stdout
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            now = json.loads(emu_status.read_text())["freq_mhz"]
            if now != before:
                break
            time.sleep(0.2)
        assert now != before, "the chain frequency did not move"
        obs.wait_for(lambda t, m, r: t.endswith("/telemetry") and m.get("setpoint_w") == target,
                     timeout_s=10)
    finally:
        obs.close()
        stop_process(agent, 20)
        agent_err.close()


def test_an_agent_whose_state_folder_cannot_be_written_stops_at_start(mosquitto, emulator,
                                                                      tmp_path) -> None:
    info, _ = emulator
    done = cli("operator", "keygen", "--key", str(tmp_path / "op.pem"))
    assert done.returncode == 0, done.stderr
    state = tmp_path / "state"
    state.write_text("a file where the state folder should be")
    with open(tmp_path / "agent.err", "w") as agent_err:
        agent = start_agent(tmp_path, info["chain"], info["board"], mosquitto.url,
                            tmp_path / "op.pub.pem", done.stdout.strip(), agent_err)
        try:
            code = agent.wait(60)
        finally:
            if agent.poll() is None:
                stop_process(agent, 10)
    err = (tmp_path / "agent.err").read_text()
    assert code == 2, err
    assert f"state folder {state}: cannot write there" in err and "Traceback" not in err
