"""The agent under a service manager: the notify protocol on a real datagram socket the test
binds (as systemd does for Type=notify), from `gridminer agent` on the emulated board with its
grid link, and from a control loop that hangs; the shipped unit through `systemd-analyze verify`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.service import notify, unit
from tests.integration.conftest import Observer
from tests.integration.test_agent_run import AgentRig
from tests.support.agent_process import start_agent, stop_process

ROOT = Path(__file__).parents[2]
WATCHDOG_USEC = 400_000  # pings every 0.2 s


class ServiceManager:
    """The manager's end of $NOTIFY_SOCKET: a bound datagram socket, its messages parsed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.seen: list[dict[str, str]] = []

    def receive(self, timeout_s: float) -> dict[str, str] | None:
        self.sock.settimeout(max(timeout_s, 1e-3))
        try:
            data = self.sock.recv(4096)
        except TimeoutError:
            return None
        message = dict(line.split("=", 1) for line in data.decode().splitlines())
        self.seen.append(message)
        return message

    def wait_for(self, key: str, timeout_s: float) -> dict[str, str]:
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            message = self.receive(left)
            if message is not None and key in message:
                return message
        raise AssertionError(f"no {key} in {timeout_s} s; saw {self.seen[-5:]}")

    def drain(self) -> None:
        while self.receive(0.001) is not None:
            pass

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def manager(tmp_path) -> Iterator[ServiceManager]:
    m = ServiceManager(tmp_path / "notify.sock")
    yield m
    m.close()


def test_notifier_sends_key_value_datagrams_to_path_and_abstract_sockets(manager, caplog):
    sender = notify.Notifier({"NOTIFY_SOCKET": str(manager.path)})
    assert sender.send(READY=1, STATUS="mining\n  at 20 W")
    assert manager.wait_for("READY", 2) == {"READY": "1", "STATUS": "mining at 20 W"}
    name = f"gridminer-test-{os.getpid()}"
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    abstract.bind(b"\0" + name.encode())
    to_abstract = notify.Notifier({"NOTIFY_SOCKET": f"@{name}"})
    try:
        assert to_abstract.send(WATCHDOG=1)
        assert abstract.recv(64) == b"WATCHDOG=1\n"
    finally:
        to_abstract.close()
        abstract.close()
    manager.close()
    manager.path.unlink()  # the manager went away: sending fails quietly, said once
    with caplog.at_level(logging.WARNING, "gridminer.service"):
        assert not sender.send(WATCHDOG=1)
        assert not sender.send(WATCHDOG=1)
    assert len([r for r in caplog.records if "refused" in r.getMessage()]) == 1
    sender.close()


@pytest.fixture
def emulator(tmp_path) -> Iterator[tuple[dict[str, str], Path]]:
    status = tmp_path / "emu.json"
    proc = subprocess.Popen([sys.executable, "-m", "agent", "emulate", "--chips", "4",
                             "--status-file", str(status)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        yield json.loads(proc.stdout.readline()), status
    finally:
        stop_process(proc, 10)


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "pure-python"])
def test_agent_is_ready_once_chain_and_grid_are_up_then_pings_and_says_stopping(
    mosquitto, emulator, manager, tmp_path, monkeypatch, compiled
):
    """READY=1 after the chain hashes and the grid link is up, with the kernel in its STATUS (a
    compiled kernel that did not load is said loudly in the log too); WATCHDOG=1 at half the
    watchdog period; STOPPING=1 on SIGTERM."""
    info, emu_status = emulator
    keygen = subprocess.run([sys.executable, "-m", "agent", "operator", "keygen", "--key",
                             str(tmp_path / "op.pem")], cwd=ROOT, capture_output=True, text=True,
                            timeout=60)
    assert keygen.returncode == 0, keygen.stderr
    monkeypatch.setenv("NOTIFY_SOCKET", str(manager.path))
    monkeypatch.setenv("WATCHDOG_USEC", str(WATCHDOG_USEC))
    if not compiled:
        monkeypatch.setenv("GRIDMINER_NO_EXTENSIONS", "1")
    obs = Observer(mosquitto, ["gridminer/s1/d1/status"])
    with open(tmp_path / "agent.err", "w") as agent_err:
        agent = start_agent(tmp_path, info["chain"], info["board"], mosquitto.url,
                            tmp_path / "op.pub.pem", keygen.stdout.strip(), agent_err)
        try:
            ready = manager.wait_for("READY", 60)
            hashrate_ghs = json.loads(emu_status.read_text())["hashrate_ghs"]
            assert hashrate_ghs > 0, "READY before the chain hashed"
            obs.wait_for(lambda t, m, r: m.get("state") == "online", timeout_s=5)
            waited = [m["STATUS"] for m in manager.seen[:-1] if "STATUS" in m]
            assert waited and all(s.startswith("starting: waiting for") for s in waited)
            if compiled:
                assert ready["STATUS"].startswith("SHA-256d kernel ")
            else:
                assert ready["STATUS"].startswith("SHA-256d on the pure-Python path")
            pings_at = []
            while len(pings_at) < 5:
                manager.wait_for("WATCHDOG", 2)
                pings_at.append(time.monotonic())
            assert pings_at[-1] - pings_at[0] < 4 * WATCHDOG_USEC / 1e6
            agent.send_signal(15)
            manager.wait_for("STOPPING", 10)
            assert agent.wait(30) == 0
        finally:
            stop_process(agent, 10)
            obs.close()
    log = (tmp_path / "agent.err").read_text()
    assert ("WARNING gridminer.agent: COMPILED SHA-256d KERNEL NOT LOADED" in log) != compiled


def test_a_stalled_control_thread_stops_the_watchdog_pings(manager):
    rig = AgentRig()
    release, stalled = threading.Event(), threading.Event()
    try:
        beat = notify.attach(rig.runtime, "running", {"NOTIFY_SOCKET": str(manager.path),
                                                     "WATCHDOG_USEC": str(WATCHDOG_USEC)})
        assert beat is not None
        manager.wait_for("READY", 30)
        for _ in range(3):
            manager.wait_for("WATCHDOG", 2)

        def hang(_now: float) -> None:  # a control tick that never returns, until released
            stalled.set()
            release.wait()

        rig.runtime.on_tick.append(hang)
        assert stalled.wait(5)
        manager.drain()
        assert manager.receive(5 * WATCHDOG_USEC / 1e6) is None, "pinged while stalled"
        rig.runtime.on_tick.remove(hang)
        release.set()
        manager.wait_for("WATCHDOG", 2)  # the loop runs again: so do the pings
    finally:
        release.set()
        rig.stop()


def test_the_shipped_unit_passes_systemd_analyze_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    unit.install(tmp_path, sys.executable)
    path = tmp_path / "etc/systemd/system" / unit.UNIT_NAME
    done = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and done.stderr == "" and done.stdout == "", done.stderr
    path.write_text(path.read_text().replace("Restart=on-failure", "Restart=on-failur"))
    done = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True,
                          timeout=60)
    assert "on-failur" in done.stderr  # the check does read the file
