"""`gridminer agent` and `gridminer probe` as a user runs them, against `gridminer emulate`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import Observer
from tests.support.polling import wait_until

ROOT = Path(__file__).resolve().parents[2]
EMU_DIFFICULTY = "2**-19"  # the agent takes the same notation (--nonce-difficulty)


def gridminer(*args: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[dict]:
    status = tmp_path / "status.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "emulate", "--chips", "6", "--seed", "4",
         "--difficulty", EMU_DIFFICULTY, "--status-file", str(status)],
        stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        yield info
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "--chain PORT is required"),
        (("--chain", "x", "--board", "y", "--target-w", "-5"), "governor.default_target_w"),
        (("--chain", "/dev/gridminer-no-such-port", "--board", "/dev/null"), "cannot open"),
        (("--config", "/gridminer/no/such/file.toml"), "cannot read"),
    ],
)
def test_bad_flags_give_one_line_and_exit_2(args, message):
    result = gridminer("agent", *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]
    assert "Traceback" not in result.stderr


def test_probe_lists_the_chips_of_the_emulated_board(emulator):
    result = gridminer("probe", "--chain", emulator["chain"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        "BM1370 (chip id 0x1370): 6 chips, addresses 0x00 0x2A 0x54 0x7E 0xA8 0xD2")


def test_probe_of_a_silent_port_says_so(tmp_path):
    master, slave = os.openpty()
    try:
        result = gridminer("probe", "--chain", os.ttyname(slave), "--timeout", "0.3")
    finally:
        os.close(master)
        os.close(slave)
    assert result.returncode == 1
    assert "no chip answered" in result.stderr


def test_agent_mines_prints_status_and_idles_the_chain_on_sigterm(emulator, tmp_path):
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[chain]\nport = "{emulator["chain"]}"\nfamily = "BM1370"\nchips = 6\n'
        f'[board]\nport = "{emulator["board"]}"\n[log]\nstatus_period_s = 1.0\n')
    out, err = tmp_path / "agent.out", tmp_path / "agent.err"
    with out.open("w") as out_file, err.open("w") as err_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "agent", "--config", str(config), "--target-w", "60",
             "--nonce-difficulty", str(2.0**-19)],
            stdout=out_file, stderr=err_file, text=True, cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    status = Path(emulator["status"])

    def board() -> dict:
        return json.loads(status.read_text())

    try:
        wait_until(lambda: (b := board())["nonces_emitted"] > 10 and max(b["freq_mhz"]) > 100,
                   30, lambda: f"the chain mining; agent said: {err.read_text()[-2000:]}",
                   alive=proc)
        # the status line (every second) says so while the chain mines
        wait_until(lambda: "mode=mining" in out.read_text(), 30, "a status line mode=mining",
                   alive=proc)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err.read_text()[-2000:]
    assert "Traceback" not in err.read_text()
    wait_until(lambda: board()["chain_powered"] is False, 10, "the chain powered off")


def test_agent_with_flags_only_probes_the_chain_and_reports_its_chips(emulator, mosquitto,
                                                                       tmp_path):
    keygen = gridminer("operator", "keygen", "--key", str(tmp_path / "op.pem"))
    assert keygen.returncode == 0, keygen.stderr
    obs = Observer(mosquitto, ["gridminer/s1/d1/status", "gridminer/s1/d1/telemetry"])
    # `with` closes the stderr pipe on every path, a missed deadline too (else a later test's
    # garbage collection finds it open: a ResourceWarning there)
    with subprocess.Popen(
        [sys.executable, "-m", "agent", "agent", "--chain", emulator["chain"],
         "--board", emulator["board"], "--broker", mosquitto.url, "--site", "s1",
         "--device", "d1", "--operator-key", str(tmp_path / "op.pub.pem"),
         "--kid", keygen.stdout.strip(), "--state-dir", str(tmp_path / "state"),
         "--nonce-difficulty", EMU_DIFFICULTY, "--insecure-no-tls"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    ) as proc:
        try:
            _, status, _ = obs.wait_for(lambda t, m, r: t.endswith("/status"), timeout_s=30)
            assert status["state"] == "online" and status["caps"]["chips"] == 6
            obs.wait_for(lambda t, m, r: t.endswith("/telemetry") and m.get("chips_ok") == 6,
                         timeout_s=30)
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=15)
        finally:
            obs.close()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, err[-2000:]
    assert "chain detected" in err and "6 x BM1370" in err


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("target", "governor.default_target_w: 3000 is out of range [0, 2385]"),
        ("ca_file", "CA file"),
        ("private_key", "operator key 'k1'"),
        ("plain_mqtt", "plain MQTT to a non-loopback host"),
        ("missing_key", "No such file"),
        ("state_dir", "state folder"),
    ],
)
def test_what_needs_no_hardware_is_checked_before_any_port_is_opened(tmp_path, case, message):
    """A bad flag or file fails at once with its own message (exit 2), and the board is left as
    it was: not a byte on either port (no probe, no chain power, no reset)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from agent.grid.cose import private_pem, public_pem
    from hil.hashboard import HashBoardEmulator

    key = Ed25519PrivateKey.generate()
    (tmp_path / "op.pem").write_bytes(private_pem(key))
    (tmp_path / "op.pub.pem").write_bytes(public_pem(key.public_key()))
    (tmp_path / "op.pem").chmod(0o600)
    (tmp_path / "op.pub.pem").chmod(0o644)
    (tmp_path / "a-file").write_text("")
    grid = {"broker": "mqtt://127.0.0.1:1883", "key": str(tmp_path / "op.pub.pem"),
            "state": str(tmp_path / "state")}
    extra: list[str] = []
    if case == "target":  # a BM1397 chain of any length the probe may find is rated lower
        extra = ["--family", "BM1397", "--target-w", "3000"]
    elif case == "ca_file":
        config = tmp_path / "agent.toml"
        config.write_text(f'[grid]\nca_file = "{tmp_path / "no-ca.pem"}"\n')
        grid["broker"] = "mqtts://127.0.0.1:8883"
        extra = ["--config", str(config)]
    elif case == "private_key":
        grid["key"] = str(tmp_path / "op.pem")
    elif case == "plain_mqtt":
        grid["broker"] = "mqtt://192.0.2.7:1883"
    elif case == "missing_key":
        grid["key"] = str(tmp_path / "gone.pub.pem")
    elif case == "state_dir":
        grid["state"] = str(tmp_path / "a-file" / "state")
    with HashBoardEmulator("BM1370", 4, seed=3) as emu:
        emu.set_ambient_c(25.0)
        chain_powered = emu.state()["chain_powered"]
        result = gridminer(
            "agent", "--chain", emu.chain_path, "--board", emu.board_path,
            "--broker", grid["broker"], "--site", "s1", "--device", "d1",
            "--operator-key", grid["key"], "--kid", "k1", "--state-dir", grid["state"], *extra)
        state = emu.state()
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
    assert "Traceback" not in result.stderr
    ports = state["ports"]
    assert ports["chain"]["bytes_in"] == 0 and ports["board"]["bytes_in"] == 0
    assert state["bridge"]["requests"] == 0 and state["chain_powered"] == chain_powered


def test_an_envelope_the_bridge_would_refuse_stops_the_start_before_the_chain(tmp_path):
    """The bridge firmware accepts core voltages up to its own cap (1500 mV): a config that
    allows more is refused at start, after the bridge's INFO and before the chain is touched."""
    from hil.hashboard import HashBoardEmulator

    config = tmp_path / "agent.toml"
    with HashBoardEmulator("BM1370", 4, seed=3) as emu:
        config.write_text(
            f'[chain]\nport = "{emu.chain_path}"\nfamily = "BM1370"\nchips = 4\n'
            f'[board]\nport = "{emu.board_path}"\n[envelope]\nmax_vcore_mv = 1600\n')
        result = gridminer("agent", "--config", str(config))
        state = emu.state()
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "envelope.max_vcore_mv: 1600 mV is above the 1500 mV the bridge on" in last, last
    assert state["ports"]["chain"]["bytes_in"] == 0 and state["bridge"]["requests"] == 1
