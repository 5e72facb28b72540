"""The agent as a service: the heartbeat's readiness and watchdog decisions, what it waits for,
the notify environment, and `gridminer service install` (unit, folders, local edits kept)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from agent import hashing
from agent.cli import main
from agent.config import load_config
from agent.service import notify, unit

PYTHON = "/opt/gridminer/bin/python3"


class SentMessages:
    """A Notifier stand-in that keeps what would have been sent."""

    def __init__(self, watchdog_s: float | None) -> None:
        self.watchdog_s = watchdog_s
        self.sent: list[dict[str, Any]] = []

    def send(self, **fields: Any) -> bool:
        self.sent.append(fields)
        return True


def keys(sent: list[dict[str, Any]]) -> list[str]:
    return [key for fields in sent for key in fields if key != "STATUS"]


def test_ready_only_once_nothing_is_awaited_and_pings_every_half_period():
    waiting: list[str | None] = ["the chain to start hashing", "the grid link (connecting)", None]
    sent = SentMessages(watchdog_s=2.0)
    beat = notify.Heartbeat(sent, lambda: waiting[0], "running")  # type: ignore[arg-type]
    beat.tick(0.0)
    beat.tick(0.5)
    assert keys(sent.sent) == ["WATCHDOG"]
    assert sent.sent[0]["STATUS"] == "starting: waiting for the chain to start hashing"
    waiting.pop(0)
    beat.tick(0.9)
    assert sent.sent[-1] == {"STATUS": "starting: waiting for the grid link (connecting)"}
    waiting.pop(0)
    beat.tick(1.0)  # ready now; the next ping is due at 1.0 (half of 2 s after 0.0)
    assert keys(sent.sent) == ["WATCHDOG", "READY", "WATCHDOG"]
    assert sent.sent[-2] == {"READY": 1, "STATUS": "running"}
    for now in (1.2, 1.5, 1.99, 2.0, 2.5, 3.0):
        beat.tick(now)
    assert keys(sent.sent) == ["WATCHDOG", "READY", "WATCHDOG", "WATCHDOG", "WATCHDOG"]
    beat.status("mode=mining")
    assert sent.sent[-1] == {"STATUS": "mode=mining"}


def test_without_a_watchdog_only_readiness_is_sent():
    sent = SentMessages(watchdog_s=None)
    beat = notify.Heartbeat(sent, lambda: None, "running")  # type: ignore[arg-type]
    for now in range(10):
        beat.tick(float(now))
    assert keys(sent.sent) == ["READY"]


def runtime_in(mode: str | None, link_state: str | None) -> Any:
    grid = None if link_state is None else SimpleNamespace(link=SimpleNamespace(state=link_state))
    actuation = None if mode is None else SimpleNamespace(mode=mode)
    return SimpleNamespace(actuation=actuation, grid=grid)


@pytest.mark.parametrize(("mode", "link", "waiting"), [
    (None, None, "the chain to start hashing"),
    ("starting", "up", "the chain to start hashing"),
    ("mining", "connecting", "the grid link (connecting)"),
    ("starting", "down", "the chain to start hashing and the grid link (down)"),
    ("mining", "up", None),
    ("mining", None, None),  # no grid link configured
    ("standby", "up", None),  # held off on purpose: up, and the watchdog must run
    ("tripped", None, None),
])
def test_the_agent_waits_for_the_chain_and_the_grid_link(mode, link, waiting):
    assert notify.awaiting(runtime_in(mode, link)) == waiting


def test_notify_environment(tmp_path):
    assert not notify.Notifier({}).enabled
    assert notify.Notifier({}).send(READY=1) is False
    assert notify.socket_address("@gridminer") == b"\0gridminer"
    assert notify.socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert notify.socket_address("vsock:2:1234") is None
    me = str(os.getpid())
    assert notify.Notifier({"WATCHDOG_USEC": "30000000"}).watchdog_s == 30.0
    assert notify.Notifier({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": me}).watchdog_s == 30.0
    assert notify.Notifier({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}).watchdog_s is None
    assert notify.Notifier({"WATCHDOG_USEC": "soon"}).watchdog_s is None
    assert notify.Notifier({"WATCHDOG_USEC": "0"}).watchdog_s is None


def test_hashing_says_which_kernel_runs_and_why_not_compiled():
    text = hashing.describe()
    if hashing.COMPILED:
        assert text.startswith(f"SHA-256d kernel {hashing.IMPLEMENTATION} (compiled")
        assert hashing.LOAD_ERROR is None
    else:
        assert "pure-Python path" in text and hashing.LOAD_ERROR and hashing.LOAD_ERROR in text


def test_kernels_a_build_left_out_are_said_at_import():
    """A build without some kernels (clang) says which and why when agent.hashing is imported."""
    fake = ("import sys, types; from agent import _sha256d_py as p; "
            "m = types.ModuleType('agent._sha256d'); m.__dict__.update(vars(p)); "
            "m.KERNELS = ('scalar',); "
            "m.OMITTED_KERNELS = {'armv8-sha2': 'clang declares the SHA-2 intrinsics only ...'}; "
            "sys.modules['agent._sha256d'] = m; import agent.hashing as h; print(h.describe())")
    done = subprocess.run([sys.executable, "-c", fake], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "GRIDMINER_NO_EXTENSIONS": ""})
    assert done.returncode == 0, done.stderr
    assert "SHA-256d kernel armv8-sha2 is not in this build: clang declares" in done.stderr
    assert "left out of the build: armv8-sha2" in done.stdout


# -- gridminer service install -----------------------------------------------------------------


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_install_writes_the_unit_and_the_folders(tmp_path):
    report = unit.install(tmp_path, PYTHON)
    service = tmp_path / "etc/systemd/system/gridminer.service"
    text = service.read_text()
    assert f"ExecStart={PYTHON} -m agent agent --config /etc/gridminer/agent.toml" in text
    for line in ("Type=notify", "WatchdogSec=30s", "Restart=on-failure", "User=gridminer",
                 "StateDirectory=gridminer", "ConfigurationDirectory=gridminer",
                 "ProtectSystem=strict", "NoNewPrivileges=yes"):
        assert line in text.splitlines()
    assert "@PYTHON@" not in text
    assert mode_of(tmp_path / "etc/gridminer") == 0o750
    assert mode_of(tmp_path / "var/lib/gridminer") == 0o700
    config = load_config(tmp_path / "etc/gridminer/agent.toml")
    assert config.grid.state_dir == "/var/lib/gridminer"
    assert (tmp_path / "etc/gridminer/agent.sample.toml").read_text() == unit.sample_config()
    assert len(report.done) == 5 and not report.notes


def test_reinstall_keeps_local_edits_unless_forced(tmp_path):
    unit.install(tmp_path, PYTHON)
    service = tmp_path / "etc/systemd/system/gridminer.service"
    config = tmp_path / "etc/gridminer/agent.toml"
    assert all(line.startswith(("unchanged", "kept")) for line in
               unit.install(tmp_path, PYTHON).done)
    edited = service.read_text().replace("WatchdogSec=30s", "WatchdogSec=90s")
    service.write_text(edited)
    config.write_text("[chain]\nport = \"/dev/ttyS1\"\n")
    (tmp_path / "var/lib/gridminer").rmdir()
    with pytest.raises(unit.InstallError, match=r"gridminer\.service differs .* --force"):
        unit.install(tmp_path, PYTHON)
    assert service.read_text() == edited
    assert not (tmp_path / "var/lib/gridminer").exists()  # refused before anything was written
    report = unit.install(tmp_path, PYTHON, force=True)
    assert f"overwrote {service}" in report.done
    assert "WatchdogSec=30s" in service.read_text().splitlines()
    assert config.read_text() == "[chain]\nport = \"/dev/ttyS1\"\n"  # the board's own config


def test_install_from_the_command_line(tmp_path, capsys):
    assert main(["service", "install", "--root", str(tmp_path), "--python", PYTHON]) == 0
    assert "wrote" in capsys.readouterr().out
    service = tmp_path / "etc/systemd/system/gridminer.service"
    service.write_text(service.read_text() + "# mine\n")
    assert main(["service", "install", "--root", str(tmp_path), "--python", PYTHON]) == 1
    err = capsys.readouterr().err
    assert err.startswith("gridminer service install: ") and "--force" in err
    assert main(["service", "install", "--root", str(tmp_path), "--python", "python3"]) == 1
    assert "absolute path" in capsys.readouterr().err
    assert main(["service", "install", "--root", str(tmp_path), "--python", "/home/me/py",
                 "--force"]) == 0
    assert "ProtectHome" in capsys.readouterr().out
