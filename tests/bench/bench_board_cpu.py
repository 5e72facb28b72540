"""The agent's CPU and memory at about 1,000 verified nonces/s, with the compiled SHA-256d kernel
and with the pure-Python fallback (GRIDMINER_NO_EXTENSIONS=1): what a controller board must
spare for `gridminer agent` (a script, not a test).

Run: `.venv/bin/python tests/bench/bench_board_cpu.py [--seconds 10]`.

`gridminer agent` runs against `gridminer emulate` (4 BM1370 chips, ticket difficulty 1: the
chain returns ~975 nonces/s at its working clock, each parsed, attributed and verified by the
agent). Once it mines, the window measures the agent process alone (the emulator is not
counted): CPU as a share of one core, resident memory (now and peak), the nonces the chain
emitted per second, and the bytes still unread on the chain's pty at the end (a backlog there
means the agent does not keep up).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.bench.bench_agent import EMU_DIFFICULTY, _cpu_s, _vm  # noqa: E402

CHIPS = 4
MINING_FREQ_MHZ = 400.0  # the chain counts as up to speed above this clock
START_TIMEOUT_S = 60.0


def _emu_state(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))


def _stop(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM) -> None:
    proc.send_signal(sig)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def measure(label: str, extra_env: dict[str, str], seconds: float) -> None:
    folder = Path(tempfile.mkdtemp(prefix="gridminer-bench-board-"))
    status = folder / "emu.json"
    emu = subprocess.Popen([sys.executable, "-m", "agent", "emulate", "--chips", str(CHIPS),
                            "--difficulty", str(EMU_DIFFICULTY), "--seed", "1",
                            "--status-file", str(status)],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
    try:
        assert emu.stdout is not None
        info = json.loads(emu.stdout.readline())
        config = folder / "agent.toml"
        config.write_text(f'[chain]\nport = "{info["chain"]}"\nchips = {CHIPS}\n'
                          f'nonce_difficulty = {EMU_DIFFICULTY}\nticket_difficulty = 1\n'
                          f'[board]\nport = "{info["board"]}"\n[log]\nstatus_period_s = 0\n')
        log_path = folder / "agent.err"
        with open(log_path, "w") as log:
            agent = subprocess.Popen(
                [sys.executable, "-m", "agent", "agent", "--config", str(config)],
                stdout=subprocess.DEVNULL, stderr=log, cwd=ROOT, env={**os.environ, **extra_env})
            try:
                _measure_running(label, agent, status, log_path, seconds)
            finally:
                _stop(agent)
    finally:
        _stop(emu, signal.SIGINT)
        if emu.stdout is not None:
            emu.stdout.close()


def _measure_running(label: str, agent: subprocess.Popen[Any], status: Path, log_path: Path,
                     seconds: float) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while min(_emu_state(status)["freq_mhz"]) < MINING_FREQ_MHZ:
        if time.monotonic() > deadline or agent.poll() is not None:
            print(f"{label:12s} the chain did not come up; agent log tail:",
                  log_path.read_text().splitlines()[-3:])
            return
        time.sleep(0.2)
    time.sleep(1.0)  # past the ramp's last steps
    state0, cpu0, t0 = _emu_state(status), _cpu_s(agent.pid), time.monotonic()
    time.sleep(seconds)
    state1, cpu1, t1 = _emu_state(status), _cpu_s(agent.pid), time.monotonic()
    rss_kb, peak_kb = _vm(agent.pid, "VmRSS"), _vm(agent.pid, "VmHWM")
    rate_hz = (state1["nonces_emitted"] - state0["nonces_emitted"]) / (t1 - t0)
    backlog = state1["ports"]["chain"]["pending"]
    kernel = next((line.split(": ", 1)[1] for line in log_path.read_text().splitlines()
                   if "SHA-256d" in line), "?")
    print(f"{label:12s} {rate_hz:7.0f} nonces/s  CPU {(cpu1 - cpu0) / (t1 - t0) * 100:5.1f} % "
          f"of one core  RSS {rss_kb / 1024:5.1f} MB (peak {peak_kb / 1024:.1f} MB)  "
          f"unread on the chain pty: {backlog} B")
    print(f"{'':12s} {kernel}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="measuring window (s)")
    args = parser.parse_args()
    print(f"gridminer agent on {os.cpu_count()} CPUs, {CHIPS} emulated BM1370 chips, "
          f"ticket difficulty 1, {args.seconds:g} s window")
    measure("compiled", {}, args.seconds)
    measure("pure-python", {"GRIDMINER_NO_EXTENSIONS": "1"}, args.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
