"""`gridminer emulate`: a software hash board behind two pseudo-terminals.

Prints one JSON line on stdout, then runs until SIGINT/SIGTERM and exits 0:

    {"chain": "/dev/pts/7", "board": "/dev/pts/8", "status": "/tmp/.../status.json",
     "control": null, "pid": 1234, "family": "BM1370", "chips": 4, "difficulty": 5.96e-08,
     "seed": 0, "speed": 1.0}

`chain` is the ASIC UART, `board` the board link served by the bridge firmware; `status` is the
JSON status file (rewritten atomically every ~100 ms emulated); `control` the unix socket for
JSON-lines control requests when --control is given (see hil/EMULATOR.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading

from agent.config import parse_difficulty
from firmware_bridge.chips import FAMILIES
from hil.chain import DEFAULT_DIFFICULTY
from hil.errors import EmulatorError
from hil.faults import FaultPlan
from hil.hashboard import HashBoardEmulator


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--family", default="BM1370", choices=[f for f in FAMILIES],
                        help="chip family (default BM1370)")
    parser.add_argument("--chips", type=int, default=4, help="chips in the chain, 1..256")
    parser.add_argument("--difficulty", type=parse_difficulty, default=DEFAULT_DIFFICULTY,
                        help="emulation difficulty D of every returned nonce (default 2**-24)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the one RNG (default 0)")
    parser.add_argument("--speed", type=float, default=1.0,
                        help="emulated seconds per wall second (default 1)")
    parser.add_argument("--fault-plan", metavar="FILE", help="fault plan, TOML or JSON")
    parser.add_argument("--ambient-c", type=float, default=25.0, help="ambient temperature")
    parser.add_argument("--status-file", metavar="PATH",
                        help="status JSON path (default: in a temporary directory)")
    parser.add_argument("--control", metavar="PATH",
                        help="unix socket for JSON-lines control (set_ambient_c, inject_fault)")
    parser.add_argument("--strict-baud", action=argparse.BooleanOptionalAction, default=True,
                        help="garble chain bytes while the host's pty baud is >5%% off the chips' "
                             "UART rate (default on)")
    parser.add_argument("--step-ms", type=float, default=10.0, help="physics step (default 10)")
    parser.add_argument("--log-level", default="WARNING", help="logging level on stderr")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=str(args.log_level).upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()

    def _on_signal(signum: int, _frame: object) -> None:
        stop.set()

    try:
        plan = FaultPlan.load(args.fault_plan) if args.fault_plan else None
        if not args.step_ms > 0:
            raise EmulatorError(f"--step-ms must be > 0, got {args.step_ms}")
        emu = HashBoardEmulator(
            family=args.family, chips=args.chips, difficulty=args.difficulty, seed=args.seed,
            speed=args.speed, fault_plan=plan, ambient_c=args.ambient_c,
            status_file=args.status_file, control_path=args.control,
            step_s=args.step_ms / 1000.0, strict_baud=args.strict_baud,
        )
        emu.set_ambient_c(args.ambient_c)
    except EmulatorError as exc:  # FaultPlanError included
        print(f"gridminer emulate: {exc}", file=sys.stderr)
        return 2
    old = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            emu.start()
        except (EmulatorError, OSError) as exc:
            print(f"gridminer emulate: {exc}", file=sys.stderr)
            return 2
        try:
            line = {"chain": emu.chain_path, "board": emu.board_path, "status": emu.status_path,
                    "control": emu.control_path, "pid": os.getpid(),
                    "family": emu.family, "chips": emu.n_chips, "difficulty": args.difficulty,
                    "seed": args.seed, "speed": args.speed}
            print(json.dumps(line), flush=True)
            while not stop.wait(0.2):
                if not emu.is_running():
                    print("gridminer emulate: the emulation thread stopped", file=sys.stderr)
                    return 1
        finally:
            emu.stop()
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    return 0
