"""The agent process killed (SIGKILL) while the chain hashes and started again: the new agent
takes the running chain over without a reset, so the board's true power never moves faster than
the declared ramp (grid protocol §3.4), and the chain mines on."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from agent.config import config_from_mapping
from hil.hashboard import HashBoardEmulator

DIFFICULTY = 2.0**-24
RAMP_W_S = 15.0
TARGET_W = 45.0
NEW_TARGET_W = 25.0  # what the restarted agent is told: its move down is ramped too


def start_agent(emu: HashBoardEmulator, config: Path, log: Path,
                target_w: float) -> subprocess.Popen:
    out = log.open("ab")
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "agent", "agent", "--config", str(config),
             "--chain", emu.chain_path, "--board", emu.board_path, "--family", "BM1370",
             "--chips", "4",
             "--nonce-difficulty", repr(DIFFICULTY), "--target-w", str(target_w)],
            stdout=out, stderr=subprocess.STDOUT)
    finally:
        out.close()


def wait_for(cond, timeout_s: float) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


def test_sigkill_and_restart_keeps_the_load_within_the_ramp(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(f"[envelope]\nramp_max_w_s = {RAMP_W_S}\n\n[log]\nstatus_period_s = 1.0\n")
    rated_w = config_from_mapping({"chain": {"port": "x", "family": "BM1370", "chips": 4},
                                   "board": {"port": "y"}}).envelope.max_power_w
    assert rated_w is not None
    emu = HashBoardEmulator(family="BM1370", chips=4, seed=11, difficulty=DIFFICULTY)
    emu.start()
    truth: list[tuple[float, float]] = []  # (emulated s, true board power W)
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            state = emu.state()
            truth.append((float(state["time_s"]), float(state["board_power_w"])))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    log = tmp_path / "agent.log"
    procs: list[subprocess.Popen] = []
    try:
        sampler.start()
        procs.append(start_agent(emu, config, log, TARGET_W))
        assert wait_for(lambda: procs[0].poll() is not None
                        or (truth and truth[-1][1] > 0.8 * TARGET_W), 15.0), \
            log.read_text()[-3000:]
        time.sleep(1.0)
        before = emu.state()
        assert procs[0].poll() is None, log.read_text()[-3000:]
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait(timeout=5)
        time.sleep(0.5)
        killed_at = len(truth)
        procs.append(start_agent(emu, config, log, NEW_TARGET_W))
        assert wait_for(lambda: procs[1].poll() is not None or "took over" in log.read_text(),
                        8.0)
        assert "took over" in log.read_text(), log.read_text()[-3000:]
        nonces = emu.state()["nonces_emitted"]
        time.sleep(4.0)
        after = emu.state()
        assert procs[1].poll() is None, log.read_text()[-3000:]
        procs[1].send_signal(signal.SIGTERM)
        assert procs[1].wait(timeout=10) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=5)
        done.set()
        sampler.join(timeout=2)
        emu.stop()
    text = log.read_text()
    # no reset and no power cut of the running chain; it mines on (verified nonces)
    assert after["chain"]["resets"] == before["chain"]["resets"], text[-3000:]
    assert after["nonces_emitted"] > nonces
    assert abs(after["board_power_w"] - NEW_TARGET_W) < 0.1 * NEW_TARGET_W
    assert "mode=mining" in text.split("took over")[-1]
    # the true power never moves faster than the ramp over any 1 s window
    stop = next(i for i in range(killed_at, len(truth)) if truth[i][0] >= after["time_s"])
    bound = RAMP_W_S * 1.0 + 0.01 * rated_w
    worst = 0.0
    for i in range(stop):
        t0, p0 = truth[i]
        for t1, p1 in truth[i + 1:stop]:
            if t1 - t0 > 1.0:
                break
            worst = max(worst, abs(p1 - p0))
    assert worst <= bound, f"{worst:.1f} W in 1 s (bound {bound:.1f} W)"
    assert max(p for _, p in truth[killed_at:stop]) > 0.8 * TARGET_W
    assert min(p for _, p in truth[killed_at:stop]) > 0.8 * NEW_TARGET_W  # no drop to idle
