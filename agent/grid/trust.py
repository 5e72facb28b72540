"""Files the device's trust rests on: secrets (private keys, password files) that only their owner
may read, and trust anchors (operator public keys, the state folder) that only their owner may
change. A file that breaks its rule is refused by name; in a lab's `insecure_dev` mode the
refusal becomes a loud warning."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from agent.errors import GridLinkError
from agent.grid.replay import StateFile

log = logging.getLogger(__name__)


def _check_mode(path: str | os.PathLike[str], what: str, insecure: bool, forbidden: int,
                problem: str, fix: str) -> None:
    try:
        bits = stat.S_IMODE(os.stat(path).st_mode)
    except OSError as exc:
        raise GridLinkError(f"{what} {path}: cannot read ({exc.strerror})") from exc
    if bits & forbidden:
        text = f"{what} {path} is {problem} by group/others (mode {bits:o}); {fix}"
        if not insecure:
            raise GridLinkError(text)
        log.warning("INSECURE DEVELOPMENT MODE: %s", text)


def check_private_file(path: str | os.PathLike[str], what: str, insecure: bool) -> None:
    """Refuse a secret (key, password) that group or others can read or change."""
    _check_mode(path, what, insecure, 0o077, "readable", "chmod 600")


def check_owner_only_write(path: str | os.PathLike[str], what: str, insecure: bool) -> None:
    """Refuse a trust anchor (an operator public key, the state folder) that group or others
    may change."""
    _check_mode(path, what, insecure, stat.S_IWGRP | stat.S_IWOTH, "writable", "chmod go-w")


def check_state_dir(path: str | os.PathLike[str], insecure_dev: bool = False) -> None:
    """Before the agent goes online: the state folder exists (made private when missing), only
    its owner can change it, and a file can be written in it whole. GridLinkError otherwise, so
    an agent that could not keep its replay state fails at start rather than refuse commands."""
    folder = Path(path)
    probe = StateFile(folder / ".write-check")
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        probe.save({})
        probe.path.unlink()
    except OSError as exc:
        raise GridLinkError(f"state folder {folder}: cannot write there ({exc.strerror or exc}); "
                            "the agent keeps its replay state in it") from exc
    check_owner_only_write(folder, "state folder", insecure_dev)
