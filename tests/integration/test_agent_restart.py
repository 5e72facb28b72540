"""The agent stopped and started again. Killed (SIGKILL) while the chain hashes and started at
once: the new agent takes the running chain over without a reset, so the board's true power never
moves faster than the declared ramp (grid protocol §3.4), and the chain mines on. Stopped cleanly
(the chain powered off), killed, or with the board's power cut, and started again after the
bridge's watchdog fired: the agent brings the chain back (probing it, powered through the board,
when the arguments leave the chain open) without waiting out the trip latched meanwhile."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.config import config_from_mapping
from hil.hashboard import HashBoardEmulator
from hil.report import largest_change_w
from tests.support.emulator_truth import TruthSampler
from tests.support.polling import poll_until, wait_emulated

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


def stopped_cleanly(proc: subprocess.Popen) -> bool:
    """SIGTERM (what `systemctl stop` sends): the agent idles the chain and exits 0."""
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=10) == 0


def kill_left(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=5)


def ramp_config(folder: Path, status_period_s: float) -> tuple[Path, float]:
    """An agent config with the tests' ramp limit, and the rated power of the 4 x BM1370 board."""
    config = folder / "agent.toml"
    config.write_text(f"[envelope]\nramp_max_w_s = {RAMP_W_S}\n\n[log]\n"
                      f"status_period_s = {status_period_s}\n")
    rated_w = config_from_mapping({"chain": {"port": "x", "family": "BM1370", "chips": 4},
                                   "board": {"port": "y"}}).envelope.max_power_w
    assert rated_w is not None
    return config, rated_w


def start_mining(emu: HashBoardEmulator, config: Path, log: Path,
                 procs: list[subprocess.Popen], sampler: TruthSampler) -> None:
    """Start the agent (into `procs`) and wait until the board truly draws 80 % of TARGET_W."""
    procs.append(start_agent(emu, config, log, TARGET_W))
    truth = sampler.samples
    assert poll_until(lambda: procs[-1].poll() is not None
                      or (truth and truth[-1][1] > 0.8 * TARGET_W), 15.0), \
        log.read_text()[-3000:]


def test_sigkill_and_restart_keeps_the_load_within_the_ramp(tmp_path: Path) -> None:
    config, rated_w = ramp_config(tmp_path, 1.0)
    emu = HashBoardEmulator(family="BM1370", chips=4, seed=11, difficulty=DIFFICULTY)
    emu.start()
    sampler = TruthSampler(emu)
    truth = sampler.samples  # (emulated s, true board power W, chain powered)
    log = tmp_path / "agent.log"
    procs: list[subprocess.Popen] = []
    try:
        sampler.start()
        start_mining(emu, config, log, procs, sampler)
        wait_emulated(lambda: emu.time_s, 1.0)
        before = emu.state()
        assert procs[0].poll() is None, log.read_text()[-3000:]
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait(timeout=5)
        time.sleep(0.5)
        killed_at = len(truth)
        procs.append(start_agent(emu, config, log, NEW_TARGET_W))
        assert poll_until(lambda: procs[1].poll() is not None or "took over" in log.read_text(),
                          8.0)
        assert "took over" in log.read_text(), log.read_text()[-3000:]
        nonces = emu.state()["nonces_emitted"]
        wait_emulated(lambda: emu.time_s, 4.0)  # the board's seconds: it may lag the wall clock
        after = emu.state()
        assert procs[1].poll() is None, log.read_text()[-3000:]
        assert stopped_cleanly(procs[1])
    finally:
        kill_left(procs)
        sampler.stop()
        emu.stop()
    text = log.read_text()
    # no reset and no power cut of the running chain; it mines on (verified nonces)
    assert after["chain"]["resets"] == before["chain"]["resets"], text[-3000:]
    assert after["nonces_emitted"] > nonces
    assert abs(after["board_power_w"] - NEW_TARGET_W) < 0.1 * NEW_TARGET_W
    assert "mode=mining" in text.split("took over")[-1]
    # the true power never moves faster than the ramp over any 1 s window
    stop = sampler.index_at(after["time_s"], killed_at)
    bound = RAMP_W_S * 1.0 + 0.01 * rated_w
    moves = sampler.power(0, stop)
    worst = largest_change_w(moves, moves[0][0], moves[-1][0])
    assert worst <= bound, f"{worst:.1f} W in 1 s (bound {bound:.1f} W)"
    assert max(p for _, p in moves[killed_at:]) > 0.8 * TARGET_W
    assert min(p for _, p in moves[killed_at:]) > 0.8 * NEW_TARGET_W  # no drop to idle


BRIDGE_TIMEOUT_MS = 1500  # the bridge's watchdog, shortened from 5 s: the gap below outlasts it
RESTART_TARGET_W = 40.0


def restart_args(emu: HashBoardEmulator, folder: Path, mode: str) -> list[str]:
    """`gridminer agent` as a service runs it: flags only, without --family/--chips (the agent
    probes the chain), or a config file that names the chain."""
    if mode == "flags":
        return ["--chain", emu.chain_path, "--board", emu.board_path,
                "--nonce-difficulty", repr(DIFFICULTY), "--target-w", str(RESTART_TARGET_W)]
    config = folder / "agent.toml"
    config.write_text(
        f'[chain]\nport = "{emu.chain_path}"\nfamily = "BM1370"\nchips = 4\n'
        f"nonce_difficulty = {DIFFICULTY!r}\n"
        f'[board]\nport = "{emu.board_path}"\n'
        f"[governor]\ndefault_target_w = {RESTART_TARGET_W}\n[log]\nstatus_period_s = 1.0\n")
    return ["--config", str(config)]


def launch(args: list[str], log: Path) -> subprocess.Popen:
    out = log.open("ab")
    try:
        return subprocess.Popen([sys.executable, "-m", "agent", "agent", *args], stdout=out,
                                stderr=subprocess.STDOUT)
    finally:
        out.close()


def mining_at_target(emu: HashBoardEmulator, proc: subprocess.Popen) -> bool:
    state = emu.state()
    return proc.poll() is not None or (
        state["chain_powered"] and abs(state["board_power_w"] - RESTART_TARGET_W) < 3.0)


@pytest.mark.parametrize("mode", ["flags", "config"])
@pytest.mark.parametrize("how", ["sigterm", "sigkill", "power_cut"])
def test_the_agent_started_again_with_the_same_arguments_mines_again(tmp_path: Path, mode: str,
                                                                     how: str) -> None:
    """`systemctl restart` and its cousins: after a clean stop (the chain powered off), a kill,
    or a power cut of the board, the agent started again with the same arguments brings the
    chain back, at the ramp, without waiting out a trip the bridge latched while no agent ran
    (its watchdog fires after the gap)."""
    emu = HashBoardEmulator(family="BM1370", chips=4, seed=12, difficulty=DIFFICULTY,
                            bridge_config={"heartbeat_timeout_ms": BRIDGE_TIMEOUT_MS})
    emu.start()
    log = tmp_path / "agent.log"
    args = restart_args(emu, tmp_path, mode)
    procs: list[subprocess.Popen] = []
    try:
        procs.append(launch(args, log))
        assert poll_until(lambda: mining_at_target(emu, procs[0]), 20.0), log.read_text()[-3000:]
        assert procs[0].poll() is None, log.read_text()[-3000:]
        if how == "sigterm":
            assert stopped_cleanly(procs[0])
            assert not emu.state()["chain_powered"]  # a clean stop powers the chain off
        else:
            procs[0].send_signal(signal.SIGKILL)
            procs[0].wait(timeout=5)
            if how == "power_cut":
                emu.power_cut()
        wait_emulated(lambda: emu.time_s, BRIDGE_TIMEOUT_MS / 1000 + 1.0)  # the bridge's time
        bridge = emu.state()["bridge"]
        if how == "power_cut":
            assert bridge["state"] == "idle" and emu.state()["power_cuts"] == 1
        else:  # the watchdog fired while no agent ran
            assert (bridge["state"], bridge["trip_reason"]) == ("tripped", "heartbeat_timeout")
        started = len(log.read_text())
        t0 = time.monotonic()
        procs.append(launch(args, log))
        assert poll_until(lambda: mining_at_target(emu, procs[1]), 15.0), \
            log.read_text()[started:][-3000:]
        took_s = time.monotonic() - t0
        nonces = emu.state()["nonces_emitted"]
        wait_emulated(lambda: emu.time_s, 1.5)
        after = emu.state()
        assert procs[1].poll() is None, log.read_text()[started:][-3000:]
        assert stopped_cleanly(procs[1])
    finally:
        kill_left(procs)
        emu.stop()
    text = log.read_text()[started:]
    assert took_s < 10.0, text[-3000:]  # not a trip hold (30 s), not a probe of a dead chain
    assert after["nonces_emitted"] > nonces and after["bridge"]["state"] == "active"
    assert "envelope trip" not in text, text[-3000:]
    assert "governor mode starting -> mining" in text
    if how != "power_cut":
        assert "the bridge latched heartbeat_timeout before this agent started" in text


def test_a_chip_silent_at_the_start_probe_is_mined_with_once_it_answers(tmp_path: Path) -> None:
    """Flags only: the agent counts the chips at start. One was silent then (a fault, a chip
    not yet up), so it counts 3; once that chip answers, the next bring-up (here after a chain
    hang) mines with all 4 rather than failing "expected 3, found 4" until a restart."""
    emu = HashBoardEmulator(family="BM1370", chips=4, seed=14, difficulty=DIFFICULTY)
    emu.start()
    log = tmp_path / "agent.log"
    procs: list[subprocess.Popen] = []
    try:
        silent_until = emu.time_s + 6.0
        emu.inject_fault("chip_silent", chip=1, duration_s=6.0)
        procs.append(launch(restart_args(emu, tmp_path, "flags"), log))
        assert poll_until(lambda: procs[0].poll() is not None
                          or "running with 3 x BM1370" in log.read_text(), 15.0), \
            log.read_text()[-3000:]
        wait_emulated(lambda: emu.time_s, max(0.0, silent_until - emu.time_s) + 0.5)
        emu.inject_fault("chain_hang")
        assert poll_until(lambda: procs[0].poll() is not None
                          or "4 chips answer, 3 answered the probe" in log.read_text(), 30.0), \
            log.read_text()[-3000:]
        assert poll_until(lambda: mining_at_target(emu, procs[0]), 20.0), log.read_text()[-3000:]
        assert procs[0].poll() is None, log.read_text()[-3000:]
        assert "found 4" not in log.read_text()
    finally:
        kill_left(procs)
        emu.stop()
