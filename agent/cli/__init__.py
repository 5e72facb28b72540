"""The `gridminer` command line: one subcommand per module, imported only when used."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any

from agent import __version__

# name -> (module, one-line help). Each module has `configure(parser)` and `run(args) -> int`.
# Lab subcommands live in `hil` and are imported lazily, so the agent never needs them.
COMMANDS: dict[str, tuple[str, str]] = {
    "agent": ("agent.cli.agent", "run the edge agent: chain, governor, optional grid link"),
    "probe": ("agent.cli.probe", "list the chips on a chain (family, count, addresses)"),
    "bench": ("agent.cli.bench", "measure the SHA-256d kernels (MH/s, one thread and all cores)"),
    "flash": ("agent.cli.flash", "deploy the bridge firmware onto a MicroPython board (mpremote)"),
    "service": ("agent.cli.service", "install the agent as a systemd service (notify, watchdog)"),
    "emulate": ("hil.emulate", "software hash board (ASIC chain + board link) on two ptys"),
    "operator": ("agent.cli.grid_operator", "grid operator: signed commands, acks, watch a site"),
    "site": ("agent.cli.site", "site controller: dispatch a site's devices as one grid resource"),
    "hil": ("hil.hil_cmd", "lab rig: play a grid scenario on broker + emulator + agent, report"),
    "fleet": ("hil.fleet.cli", "lab: many virtual devices (grid code + governor on a plant model)"),
}


class _Subcommand(argparse.ArgumentParser):
    """A subcommand's parser: it remembers itself in the parsed arguments, so that an option it
    does not know is reported with its own usage rather than the top-level one."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.set_defaults(_parser=self)


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """The parser; only the `selected` subcommand's module is imported to add its options."""
    parser = argparse.ArgumentParser(prog="gridminer", description=__doc__)
    parser.add_argument("--version", action="version", version=f"gridminer {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                parser_class=_Subcommand)
    for name, (module_name, help_text) in COMMANDS.items():
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        cmd.set_defaults(_module=module_name)
        if name == selected:
            importlib.import_module(module_name).configure(cmd)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    selected = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(selected)
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        args._parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    module = importlib.import_module(args._module)
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
