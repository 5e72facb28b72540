"""`gridminer service install`: run the agent as a systemd service on this board.

    gridminer service install [--force] [--python PATH] [--root DIR]

Writes /etc/systemd/system/gridminer.service (Type=notify, watchdog, restart on failure,
hardened, as the system user gridminer), /etc/gridminer/ (agent.toml when missing, the
annotated sample) and /var/lib/gridminer/, and makes the user when missing. A unit edited
locally is not overwritten without --force (exit status 1); agent.toml is never overwritten.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    install = actions.add_parser("install", help="write the unit, the config and state folders",
                                 description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    install.add_argument("--force", action="store_true",
                         help="overwrite a unit that was edited locally")
    install.add_argument("--python", metavar="PATH", default=sys.executable,
                         help=f"the interpreter gridminer is installed in (default "
                              f"{sys.executable})")
    install.add_argument("--root", metavar="DIR", type=Path, default=Path("/"),
                         help="install below DIR instead of / (images, tests); no user is made")


def run(args: argparse.Namespace) -> int:
    from agent.service.unit import InstallError, install

    try:
        report = install(args.root, args.python, force=args.force)
    except InstallError as exc:
        print(f"gridminer service install: {exc}", file=sys.stderr)
        return 1
    for line in report.done:
        print(line)
    for line in report.notes:
        print(f"note: {line}")
    return 0
