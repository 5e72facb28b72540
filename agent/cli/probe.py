"""`gridminer probe`: list the chips on a chain (family, count, addresses) without mining.

    gridminer probe --chain /dev/ttyUSB0 [--family BM1370] [--board PORT]

With `--board` the chips are reset through the board link first; without it they must be fresh
from power-on (a configured chain runs at its fast baud and no longer answers at 115200).
"""

from __future__ import annotations

import argparse
import sys

from agent.errors import BoardLinkError, ChainError, ConfigError
from firmware_bridge.chips import FAMILIES


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--chain", metavar="PORT", required=True,
                        help="ASIC chain serial port or pyserial URL")
    parser.add_argument("--family", choices=FAMILIES,
                        help="chip family (default: from the chips' answer)")
    parser.add_argument("--board", metavar="PORT", help="board link, to reset the chips first")
    parser.add_argument("--baud", type=int, default=115200, help="initial baud (default 115200)")
    parser.add_argument("--timeout", type=float, default=1.0, metavar="S",
                        help="wait for the first answer (default 1 s)")


def run(args: argparse.Namespace) -> int:
    from agent.app import open_serial
    from agent.chain.takeover import probe_chain
    from agent.clock import SystemClock

    try:
        chain = open_serial(args.chain, "chain", args.baud, 0.05)
    except ConfigError as exc:
        print(f"gridminer probe: {exc}", file=sys.stderr)
        return 2
    board_port = None
    try:
        board = None
        if args.board:
            from agent.chain.board import BoardClient

            board_port = open_serial(args.board, "board", 115200, 0.02)
            board = BoardClient(board_port)
        result = probe_chain(chain, SystemClock(), args.family, board, args.timeout)
    except ConfigError as exc:
        print(f"gridminer probe: {exc}", file=sys.stderr)
        return 2
    except (ChainError, BoardLinkError) as exc:
        print(f"gridminer probe: {exc}", file=sys.stderr)
        return 1
    finally:
        chain.close()
        if board_port is not None:
            board_port.close()
    addresses = " ".join(f"0x{a:02X}" for a in result.addresses)
    print(f"{result.family} (chip id 0x{result.chip_id:04X}): {result.count} chips, "
          f"addresses {addresses}")
    return 0
