"""`gridminer emulate` as a user runs it: JSON line, ptys, status file, clean exit on signals."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import serial

from firmware_bridge import asic


def start(*extra: str) -> tuple[subprocess.Popen, dict]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "emulate", "--family", "BM1368", "--chips", "2",
         "--seed", "4", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        pytest.fail(f"no JSON line; stderr: {proc.communicate(timeout=5)[1]}")
    return proc, json.loads(line)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_prints_ports_serves_the_chain_and_exits_0_on_signal(signum, tmp_path):
    status = tmp_path / "st.json"
    proc, info = start("--status-file", str(status), "--ambient-c", "28", "--difficulty",
                       "2**-25")
    try:
        assert {"chain", "board", "status", "pid"} <= set(info)
        assert info["pid"] == proc.pid
        assert info["status"] == str(status)
        assert info["difficulty"] == 2.0**-25
        with serial.Serial(info["chain"], 115200, timeout=1.0) as port:
            port.write(asic.cmd_read(0x00))
            replies = asic.ResponseParser("BM1368", reply_len=9).feed(port.read(18))
        assert [r.value for r in replies] == [0x13680000, 0x13680000]
        deadline = time.monotonic() + 3.0
        while not status.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        state = json.loads(status.read_text())
        assert state["family"] == "BM1368" and state["chips"] == 2
        assert state["ambient_c"] == 28.0
    finally:
        proc.send_signal(signum)
        try:
            _out, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:  # killed, reaped and its pipes closed: it fails below
            proc.kill()
            _out, err = proc.communicate()
    assert proc.returncode == 0, err


def test_bad_fault_plan_is_rejected_with_a_reason(tmp_path):
    plan = tmp_path / "plan.toml"
    plan.write_text('[[fault]]\nkind = "chip_silent"\nat_s = 1.0\n')  # no chip
    proc = subprocess.run(
        [sys.executable, "-m", "agent", "emulate", "--fault-plan", str(plan)],
        capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode == 2
    assert "chip_silent needs 'chip'" in proc.stderr
    assert proc.stdout == ""
