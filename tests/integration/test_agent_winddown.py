"""The agent restarted on a chain it cannot take over: killed (SIGKILL) while the chain hashes,
with the chips then left disagreeing on their clock (another tool wrote one chip's PLL), and
started again. The new agent winds the running chain down at the declared ramp while its control
loop runs (status lines go on, the chain's state is "winding"), then resets it and brings it up
cold with the configured chips, the chain's power never cut; the board's true power never moves
faster than the ramp."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import serial

from firmware_bridge import asic, bringup
from hil.hashboard import HashBoardEmulator
from hil.report import largest_change_w
from tests.integration.test_agent_restart import (
    DIFFICULTY,
    NEW_TARGET_W,
    RAMP_W_S,
    kill_left,
    ramp_config,
    start_agent,
    start_mining,
    stopped_cleanly,
)
from tests.support.emulator_truth import TruthSampler
from tests.support.polling import poll_until


def disagree_on_the_clock(emu: HashBoardEmulator, freq_mhz: float) -> None:
    """What another tool could leave behind: the second chip's PLL written alone, at the fast
    rate the chain runs at."""
    host_baud = bringup.baud_frame("BM1370")[1]
    with serial.Serial(emu.chain_path, host_baud, timeout=0.1) as port:
        port.write(asic.cmd_write(asic.REG_PLL0, asic.pll_value("BM1370", freq_mhz),
                                  chip=bringup.chip_addresses(4)[1]))
        port.flush()


def test_a_running_chain_that_cannot_be_taken_over_is_wound_down_by_the_running_agent(
        tmp_path: Path) -> None:
    config, rated_w = ramp_config(tmp_path, 0.5)
    emu = HashBoardEmulator(family="BM1370", chips=4, seed=13, difficulty=DIFFICULTY)
    emu.start()
    sampler = TruthSampler(emu)
    truth = sampler.samples  # (emulated s, true board power W, chain powered)
    log = tmp_path / "agent.log"
    procs: list[subprocess.Popen] = []
    try:
        sampler.start()
        start_mining(emu, config, log, procs, sampler)
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait(timeout=5)
        freq_mhz = max(emu.state()["freq_mhz"])
        disagree_on_the_clock(emu, freq_mhz - 6.25)
        assert poll_until(lambda: len(set(emu.state()["freq_mhz"])) == 2, 5.0)
        resets = emu.state()["chain"]["resets"]
        from_i = len(truth)
        started = len(log.read_text())
        procs.append(start_agent(emu, config, log, NEW_TARGET_W))

        def back_at_target() -> bool:
            state = emu.state()
            return procs[1].poll() is not None or (
                state["chain"]["resets"] > resets
                and abs(state["board_power_w"] - NEW_TARGET_W) < 0.1 * NEW_TARGET_W)

        assert poll_until(back_at_target, 40.0), log.read_text()[started:][-3000:]
        nonces = emu.state()["nonces_emitted"]
        assert poll_until(lambda: emu.state()["nonces_emitted"] > nonces, 5.0)
        after = emu.state()
        assert procs[1].poll() is None, log.read_text()[started:][-3000:]
        assert stopped_cleanly(procs[1])
    finally:
        kill_left(procs)
        sampler.stop()
        emu.stop()
    text = log.read_text()[started:]
    assert "the running chain cannot be taken over: the running chips disagree" in text, \
        text[-3000:]
    # the control loop ran all along the wind-down: its status lines say so, every 0.5 s
    winding = [line for line in text.splitlines() if "chain=winding" in line]
    assert len(winding) >= 3 and all("mode=mining" in line for line in winding), text[-3000:]
    assert "wound down to 50.00 MHz" in text
    # one reset, the configured chips up again, and the power never cut
    assert after["chain"]["resets"] == resets + 1
    assert [chip["addr"] for chip in after["chain"]["chip"]] == bringup.chip_addresses(4)
    stop = sampler.index_at(after["time_s"], from_i)
    assert all(powered for _, _, powered in truth[from_i:stop])
    # down at the ramp (the wind-down), and up again at the ramp: no faster over any 1 s
    moves = sampler.power(from_i, stop)
    bound = RAMP_W_S * 1.0 + 0.01 * rated_w
    worst = largest_change_w(moves, moves[0][0], moves[-1][0])
    assert worst <= bound, f"{worst:.1f} W in 1 s (bound {bound})"
    assert min(p for _, p in moves) < 0.5 * NEW_TARGET_W  # it went down before the reset
