"""Figures of the start-up wind-down on the hash-board emulator (a script, not a test).

Run: `.venv/bin/python tests/bench/bench_winddown.py [--ramp-w-s R ...]`.

An agent (`gridminer agent`) mines at 60 W and is killed (SIGKILL); one chip's PLL is then
rewritten alone (as another tool could leave it), so the chips disagree on their clock and the
next agent cannot take the chain over. That agent, built in-process as `agent.app.run_agent`
builds it, winds the running chain down at the ramp while its control loop runs, resets it and
brings it up cold. Per ramp limit: the time from the take-over to hashing again, the longest gap
between two control ticks meanwhile (goal: no gap over 3 control periods), and the largest change
of the board's true power over any 1 s against the ramp limit (+ 1 % of rated).
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT))

import serial  # noqa: E402
from bench_agent import TickGaps  # noqa: E402

from agent.app import find_running_chain, open_serial, take_over, wind_down_for  # noqa: E402
from agent.chain.board import BoardClient  # noqa: E402
from agent.chain.driver import ChainDriver  # noqa: E402
from agent.chain.settings import ChainSettings  # noqa: E402
from agent.chain.work import LocalWorkSource  # noqa: E402
from agent.clock import SystemClock  # noqa: E402
from agent.config import config_from_mapping  # noqa: E402
from agent.control.governor import Governor  # noqa: E402
from agent.control.runtime import Runtime  # noqa: E402
from firmware_bridge import asic, bringup  # noqa: E402
from hil.hashboard import HashBoardEmulator  # noqa: E402
from hil.report import largest_change_w  # noqa: E402
from tests.support.emulator_truth import TruthSampler  # noqa: E402
from tests.support.polling import poll_until  # noqa: E402

DIFFICULTY = 2.0**-24
MINING_W = 60.0


def leave_a_chain_that_cannot_be_taken_over(emu: HashBoardEmulator, folder: Path) -> None:
    """A `gridminer agent` mining at MINING_W, killed; then the second chip's PLL written alone."""
    log = (folder / "previous.log").open("ab")
    with log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "agent", "--chain", emu.chain_path, "--board",
             emu.board_path, "--family", "BM1370", "--chips", "4", "--nonce-difficulty",
             repr(DIFFICULTY), "--target-w", str(MINING_W)], stdout=log, stderr=log)
    poll_until(lambda: emu.state()["board_power_w"] >= 0.9 * MINING_W, 60.0, poll_s=0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=5)
    freq_mhz = max(emu.state()["freq_mhz"]) - 6.25
    with serial.Serial(emu.chain_path, bringup.baud_frame("BM1370")[1], timeout=0.1) as port:
        port.write(asic.cmd_write(asic.REG_PLL0, asic.pll_value("BM1370", freq_mhz),
                                  chip=bringup.chip_addresses(4)[1]))
        port.flush()


def bench(ramp_w_s: float) -> str:
    emu = HashBoardEmulator(family="BM1370", chips=4, seed=13, difficulty=DIFFICULTY)
    emu.start()
    sampler = TruthSampler(emu, period_s=0.02)
    closers: list[Any] = [sampler.stop]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            leave_a_chain_that_cannot_be_taken_over(emu, Path(tmp))
        config = config_from_mapping({
            "chain": {"port": emu.chain_path, "family": "BM1370", "chips": 4,
                      "nonce_difficulty": DIFFICULTY},
            "board": {"port": emu.board_path}, "envelope": {"ramp_max_w_s": ramp_w_s},
            "governor": {"default_target_w": MINING_W / 2}, "log": {"status_period_s": 0}})
        clock, wake = SystemClock(), threading.Event()
        chain_port = open_serial(config.chain.port, "chain", 115200, 0.05)
        closers.append(chain_port.close)
        board = BoardClient(open_serial(config.board.port, "board", 115200, 0.02))
        closers.append(board.close)
        sample_, running = find_running_chain(config, chain_port, board, clock)
        if running is None:
            return "no running chain found"
        driver = ChainDriver(chain_port, ChainSettings.from_config(config.chain, config.envelope),
                             clock, LocalWorkSource(clock), board=board, wake=wake)
        governor = Governor(config, clock)
        driver.wind_down = wind_down_for(governor)  # as agent.app wires it
        runtime = Runtime(clock, driver, board, governor,
                          period_s=config.governor.control_period_s, status_period_s=0,
                          wake=wake, status_out=lambda _line: None)
        gaps = TickGaps(runtime)
        sampler.start()
        t0, e0 = time.monotonic(), float(emu.state()["time_s"])
        gaps.times.append(t0)  # the wait before the first tick counts too
        take_over(config, running, sample_, clock, driver, governor, runtime)
        loop = threading.Thread(target=runtime.run, daemon=True)
        loop.start()
        seen: set[str] = set()

        def through_and_hashing() -> bool:
            """The driver went through winding and starting, and hashes again."""
            seen.add(driver.state)
            return {"winding", "starting"} <= seen and driver.hashing

        poll_until(through_and_hashing, 120.0, poll_s=0.01)
        t1, e1 = time.monotonic(), float(emu.state()["time_s"])
        outcome = "hashing again" if driver.hashing else "NOT hashing again"
        runtime.request_stop()
        loop.join(timeout=10)
        sampler.stop()
        gap = gaps.longest_s(t0, t1)
        period = runtime.period_s
        rated = governor.max_power_w
        moved = largest_change_w(sampler.power(), e0, e1)
        return (f"from {running.freq_mhz:.0f} MHz, {sample_.power_w:.1f} W: {outcome} after "
                f"{t1 - t0:.1f} s; longest tick gap {gap * 1000:.0f} ms = {gap / period:.1f} "
                f"periods; largest change of true power over 1 s {moved:.1f} W (ramp "
                f"{ramp_w_s:g} W/s + 1 % of rated = {ramp_w_s + 0.01 * rated:.1f} W)")
    finally:
        for close in reversed(closers):
            close()
        emu.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ramp-w-s", type=float, nargs="*", default=[15.0, 5.0])
    args = ap.parse_args()
    print("winddown a running chain that cannot be taken over, wound down at start")
    for ramp in args.ramp_w_s:
        print(f"           ramp {ramp:g} W/s: {bench(ramp)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
