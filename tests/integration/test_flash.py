"""`gridminer flash` onto the MicroPython unix port on a pty: the files arrive, main.py starts the
bridge, and the bridge answers over the board link (a second pty, selected in bridge.json)."""

import json
import os
import select
import subprocess
import sys
import time
import tty

import pytest

from agent.chain.board import BoardClient
from agent.cli import main as cli
from hil.mpy_board import MpyBoard

MPREMOTE = [str(os.path.join(os.path.dirname(sys.executable), "mpremote"))]


class FdPort:
    """pyserial-like view of a pty master (the agent's end of the link)."""

    def __init__(self, fd):
        self.fd = fd
        self.timeout = 0.02

    @property
    def in_waiting(self):
        return 0

    def read(self, n=1):
        if not select.select([self.fd], [], [], self.timeout)[0]:
            return b""
        return os.read(self.fd, max(n, 256))

    def write(self, data):
        return os.write(self.fd, data)


@pytest.fixture
def board(tmp_path):
    with MpyBoard(tmp_path / "board", max_seconds=120) as b:
        yield b


def remote(board, code):
    r = subprocess.run([*MPREMOTE, "connect", board.port, "resume", "exec", code],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_flash_deploys_mpy_files_and_the_bridge_answers_a_heartbeat(board, tmp_path, capsys):
    master, slave = os.openpty()
    tty.setraw(slave)
    try:
        config = tmp_path / "bridge.json"
        config.write_text(json.dumps({
            "family": "BM1366", "heartbeat_timeout_ms": 3000,
            "link": {"kind": "path", "path": os.ttyname(slave)},
            "hal": {"kind": "sim", "channels": 1},
        }))
        rc = cli(["flash", "--port", board.port, "--config", str(config), "--dest", ".",
                  "--resume", "--start", "none"])
        assert rc == 0, capsys.readouterr()
        listing = remote(board, "import os; print(sorted(os.listdir('firmware_bridge'))); "
                                "print(sorted(os.listdir('.')))")
        assert "asic.mpy" in listing and "bridge.mpy" in listing and ".py'" not in listing.split(
            "\n")[0]
        assert "'main.py'" in listing and "'bridge.json'" in listing
        assert "BM1366" in remote(board, "print(open('bridge.json').read())")
        # start it the way the board does (main.py), in the running REPL
        r = subprocess.run([*MPREMOTE, "connect", board.port, "resume", "exec", "--no-follow",
                            "import main"], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        client = BoardClient(FdPort(master), timeout_s=0.5, retries=6)
        status = client.heartbeat()
        assert status.bridge_state == "active"
        assert client.info()["family"] == "BM1366"
        assert client.set_chain_power(True)
        sample = client.read_sample()
        assert sample.chain_powered and sample.chip_temps_c == [45.0]
        # the firmware's own watchdog: silence for 3 s idles the chain and says why
        time.sleep(3.5)
        sample = client.read_sample()
        assert (sample.bridge_state, sample.trip_reason) == ("tripped", "heartbeat_timeout")
        assert not sample.chain_powered
    finally:
        os.close(master)
        os.close(slave)


def test_reflash_replaces_stale_sources(board, tmp_path, capsys):
    config = tmp_path / "bridge.json"
    config.write_text(json.dumps({"family": "BM1370", "hal": {"kind": "sim"},
                                  "link": {"kind": "path", "path": "/dev/null"}}))
    args = ["flash", "--port", board.port, "--config", str(config), "--dest", ".", "--resume",
            "--start", "none"]
    assert cli([*args, "--no-compile"]) == 0
    assert "asic.py" in remote(board, "import os; print(os.listdir('firmware_bridge'))")
    assert cli(args) == 0
    listing = remote(board, "import os; print(sorted(os.listdir('firmware_bridge')))")
    assert "asic.mpy" in listing and "asic.py'" not in listing
    capsys.readouterr()


def test_flash_rejects_a_bad_config(tmp_path, capsys):
    bad = tmp_path / "bridge.json"
    bad.write_text(json.dumps({"family": "BM9999"}))
    assert cli(["flash", "--port", "/dev/null", "--config", str(bad), "--dry-run"]) == 1
    assert "BM9999" in capsys.readouterr().err
