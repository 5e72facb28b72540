"""The systemd unit shipped with the package (`gridminer.service` beside this module) and its
installation: the unit in /etc/systemd/system/, the config folder /etc/gridminer/ (a starting
agent.toml and the annotated sample), the state folder /var/lib/gridminer/, and the dedicated
system user `gridminer` (in the serial ports' group `dialout`).

`install(root, python, force)` writes below `root` ("/" on a board; a scratch folder in tests).
Files that exist and differ from what would be written are local edits: the unit is left alone
unless `force`; agent.toml is never overwritten (it is the board's configuration).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from agent.errors import GridminerError

UNIT_NAME = "gridminer.service"
UNIT_DIR = Path("etc/systemd/system")
CONFIG_DIR = Path("etc/gridminer")
STATE_DIR = Path("var/lib/gridminer")
USER = "gridminer"
SERIAL_GROUP = "dialout"
#: folders systemd's ProtectHome= hides from the service
HIDDEN_BY_PROTECT_HOME = ("/home/", "/root/", "/run/user/")

STARTING_CONFIG = """\
# gridminer agent configuration; every key is explained in agent.sample.toml beside this file.
# Secret files (private keys, password files) named here: owner gridminer, mode 600.

[chain]
port = "/dev/ttyUSB0"        # the ASIC chain's serial port (family and chips: probed)

[board]
port = "/dev/ttyACM0"        # the board-management link to the bridge firmware

[grid]
state_dir = "/var/lib/gridminer"  # replay state; add broker_url, site, device, operator keys
"""


class InstallError(GridminerError):
    """The service could not be installed (a local edit in the way, a folder not writable)."""


def unit_text(python: str) -> str:
    """The unit with `python` (an absolute path) as the agent's interpreter."""
    template = resources.files("agent.service").joinpath(UNIT_NAME).read_text(encoding="utf-8")
    return template.replace("@PYTHON@", python)


def sample_config() -> str:
    return resources.files("agent").joinpath("agent.sample.toml").read_text(encoding="utf-8")


@dataclass
class InstallReport:
    """What `install` did, one line a path, and what the user should know."""

    done: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def install(root: Path, python: str, force: bool = False) -> InstallReport:
    """Write the unit, the config and state folders (and the user, when `root` is "/" and we
    are root) below `root`. InstallError, before anything is written, when the unit was edited
    locally and not `force`."""
    if not os.path.isabs(python):
        raise InstallError(f"the interpreter must be an absolute path, not {python!r}")
    unit_path = root / UNIT_DIR / UNIT_NAME
    wanted = unit_text(python)
    current = unit_path.read_text(encoding="utf-8") if unit_path.is_file() else None
    if current is not None and current != wanted and not force:
        raise InstallError(f"{unit_path} differs from this version's unit (local edits, or an "
                           "older gridminer's): keep it, or overwrite it with --force")
    report = InstallReport()
    if python.startswith(HIDDEN_BY_PROTECT_HOME):
        report.notes.append(f"{python} is under a home folder, which the unit's ProtectHome= "
                            "hides: install gridminer under /opt or /usr/local instead")
    system = root.resolve() == Path("/")
    if system:
        _ensure_user(report)
    owner = _owner() if system else None
    try:
        _write(unit_path, wanted, 0o644, None, current, report)
        _folder(root / CONFIG_DIR, 0o750, owner and (0, owner[1]), report)
        _write(root / CONFIG_DIR / "agent.sample.toml", sample_config(), 0o644, None,
               None, report)
        config = root / CONFIG_DIR / "agent.toml"
        if config.exists():
            report.done.append(f"kept {config}")
        else:
            _write(config, STARTING_CONFIG, 0o640, owner and (0, owner[1]), None, report)
        _folder(root / STATE_DIR, 0o700, owner, report)
    except OSError as exc:
        raise InstallError(f"{exc.filename}: {exc.strerror}") from exc
    if system:
        report.notes.append("then: systemctl daemon-reload && systemctl enable --now "
                            f"{UNIT_NAME}")
    return report


def _write(path: Path, text: str, mode: int, owner: tuple[int, int] | None,
           current: str | None, report: InstallReport) -> None:
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        report.done.append(f"unchanged {path}")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(f".{path.name}.new")
    scratch.write_text(text, encoding="utf-8")
    os.chmod(scratch, mode)
    if owner is not None:
        os.chown(scratch, *owner)
    os.replace(scratch, path)
    report.done.append(f"{'overwrote' if current is not None else 'wrote'} {path}")


def _folder(path: Path, mode: int, owner: tuple[int, int] | None, report: InstallReport) -> None:
    existed = path.is_dir()
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, mode)
    if owner is not None:
        os.chown(path, *owner)
    report.done.append(f"{'kept' if existed else 'made'} {path}/ (mode {mode:o})")


def _owner() -> tuple[int, int] | None:
    try:
        entry = pwd.getpwnam(USER)
    except KeyError:
        return None
    return entry.pw_uid, entry.pw_gid


def _ensure_user(report: InstallReport) -> None:
    """The system user the unit runs as, made with useradd when missing."""
    if _owner() is not None:
        report.done.append(f"kept user {USER}")
        return
    useradd = shutil.which("useradd")
    if useradd is None or os.geteuid() != 0:
        report.notes.append(f"make the system user first: useradd --system --user-group "
                            f"--groups {SERIAL_GROUP} --home-dir /{STATE_DIR} "
                            f"--shell /usr/sbin/nologin {USER}")
        return
    done = subprocess.run(
        [useradd, "--system", "--user-group", "--groups", SERIAL_GROUP,
         "--home-dir", f"/{STATE_DIR}", "--no-create-home", "--shell", "/usr/sbin/nologin", USER],
        capture_output=True, text=True, check=False,
    )
    if done.returncode != 0:
        raise InstallError(f"useradd {USER} failed: {done.stderr.strip()}")
    report.done.append(f"made user {USER} (groups {SERIAL_GROUP})")
