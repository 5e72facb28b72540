"""Benchmark of the board emulator: real nonce replies per second through a pty, in real time.

Starts `gridminer emulate` (one process, one emulation thread) with a 128-chip BM1370 chain,
brings it up through the chain pty exactly as a host would (enumeration, setup with a low ticket
difficulty, PLL, baud switch), sends jobs every 0.5 s, and for `--seconds` counts the nonce
replies it receives, verifying each one with agent.hashing.sha256d. Prints one figure per line:

    nonce_replies_per_s   received by the host, all verified real at the emulation difficulty
    model_rate_per_s      what the plant's hashrate / (2**32 * ticket) asks for
    emulator_cpu_pct      CPU of the emulator process (100 = one core)
    lag_s                 how far emulated time fell behind the wall clock (0 = real time)

Run: .venv/bin/python tests/bench/bench_emulator.py [--chips 128] [--ticket 32] [--seconds 10]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import struct
import subprocess
import sys
import time

import serial

from agent import hashing
from agent.chain.work import target_for
from firmware_bridge import asic, bringup

HEADER = bytes.fromhex(
    "04000020fc102bd0ea11470daf05a8e133a8a8505e21a2122b7f01000000000000000000"
    "6d0359c451434605c52a5a9ce074340be47c2c63840731f9edf1db3f26b1cdd9a9f16f643aae051747896e27"
)


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", default="BM1370")
    ap.add_argument("--chips", type=int, default=128)
    ap.add_argument("--ticket", type=int, default=32, help="ticket difficulty the host programs")
    ap.add_argument("--freq-mhz", type=float, default=525.0)
    ap.add_argument("--difficulty", default=None, help="emulation difficulty (default: the CLI's)")
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    family = args.family
    cmd = [sys.executable, "-m", "agent", "emulate", "--family", family, "--chips",
           str(args.chips), "--seed", "1"]
    if args.difficulty:
        cmd += ["--difficulty", args.difficulty]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        port = serial.Serial(info["chain"], 115200, timeout=0.05)
        for frame, delay_ms in (bringup.enumeration_frames(family)
                                + bringup.setup_frames(family, args.chips, args.ticket)):
            port.write(frame)
            time.sleep(delay_ms / 1000.0)
        port.write(asic.pll_frame(family, args.freq_mhz))  # no ramp: the figure is the point
        for frame, _ in bringup.after_ramp_frames(family, args.freq_mhz, args.chips):
            port.write(frame)
        frame, host_baud = bringup.baud_frame(family)
        port.write(frame)
        port.flush()
        port.baudrate = host_baud
        time.sleep(0.3)
        port.reset_input_buffer()
        parser = asic.ResponseParser(family)
        target = target_for(info["difficulty"])
        base = int.from_bytes(HEADER[:4], "little")
        jobs: dict[int, bytes] = {}
        job_id, step = 0, bringup.profile(family).job_id_step
        received = verified = 0
        next_job = 0.0
        t0 = time.monotonic()
        cpu0 = cpu_s(proc.pid)
        while (now := time.monotonic()) - t0 < args.seconds:
            if now >= next_job:
                job_id = (job_id + step) % 128
                header = HEADER[:68] + struct.pack("<I", int(now * 1000) & 0xFFFFFFFF) + HEADER[72:]
                jobs[job_id] = header
                port.write(asic.job_frame(family, job_id, header))
                next_job = now + 0.5
            for r in parser.feed(port.read(max(1, port.in_waiting))):
                if r.kind != "nonce" or r.job_id not in jobs:
                    continue
                received += 1
                h = jobs[r.job_id]
                full = struct.pack("<I", base | r.version_bits) + h[4:76] + struct.pack("<I",
                                                                                       r.nonce)
                verified += int.from_bytes(hashing.sha256d(full), "little") <= target
        wall = time.monotonic() - t0
        cpu = cpu_s(proc.pid) - cpu0
        with open(info["status"]) as fh:
            state = json.load(fh)
        port.close()
    finally:
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=10)
    print(f"kernel                 {hashing.IMPLEMENTATION}")
    print(f"chips                  {args.chips} x {family} at {args.freq_mhz} MHz, "
          f"ticket {args.ticket}, emulation difficulty {info['difficulty']:.3g}")
    print(f"nonce_replies_per_s    {received / wall:.1f}")
    print(f"verified_share         {verified / max(received, 1):.4f}")
    print(f"model_rate_per_s       {state['nonce_rate_model_hz']:.1f}")
    print(f"emulator_cpu_pct       {100.0 * cpu / wall:.1f}")
    print(f"lag_s                  {state['lag_s']:.3f}")
    print(f"nonces_owed            {state['nonces_owed']}")
    print(f"emulator_exit_code     {rc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
