"""`gridminer flash --port PORT`: deploy the bridge firmware onto a MicroPython board with mpremote.

What lands on the board (under --dest, default the root):
  firmware_bridge/*.mpy   precompiled with mpy-cross (or the .py sources with --no-compile)
  main.py                 starts firmware_bridge.device.start("bridge.json")
  bridge.json             the bridge config (--config FILE, or one built from --family)
Stale firmware_bridge/*.py|*.mpy files are removed first (a stale .py would shadow a new .mpy).
Then the board is started: `--start reset` (hard reset; main.py runs), `--start exec` (import main
in the running REPL, e.g. the unix port on a pty), or `--start none`.
For the MicroPython unix port on a pty use `--resume --dest . --start exec` (spec micropython.md
§4.2: a soft reset ends the unix process).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import firmware_bridge
from firmware_bridge.bridge import make_config
from firmware_bridge.chips import FAMILIES

MAIN_PY = 'import firmware_bridge.device\nfirmware_bridge.device.start("bridge.json")\n'
PACKAGE_DIR = Path(firmware_bridge.__file__).resolve().parent

# A Bitaxe-style ESP32-S3 board (pins from ESP-Miner's defaults; adjust with --config).
DEFAULT_BOARD: dict[str, Any] = {
    "link": {"kind": "machine", "id": 2, "baudrate": 115200, "tx": 43, "rx": 44},
    "hal": {
        "kind": "machine",
        "i2c": {"id": 0, "scl": 48, "sda": 47, "freq": 400000},
        "power_pin": 10,
        "reset_pin": 1,
        "chain_uart": {"id": 1, "baudrate": 115200, "tx": 17, "rx": 18},
        "emc2101": 0x4C,
        "ina260": 0x40,
        "tps546": 0x24,
        "domains": 1,
    },
}


class FlashError(Exception):
    """A tool failed or the inputs are unusable; the message says which and why."""


def _tool(name: str, given: str | None) -> str:
    if given:
        return given
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if not found:
        raise FlashError(f"{name} not found (install the test extra: pip install -e '.[test]')")
    return found


def load_config(path: str | None, family: str) -> dict[str, Any]:
    """The bridge.json to deploy: the given file (validated), or the default board for family."""
    if path is None:
        cfg = {"family": family, **DEFAULT_BOARD}
    else:
        try:
            cfg = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise FlashError(f"cannot read config {path}: {exc}") from exc
        if not isinstance(cfg, dict):
            raise FlashError(f"config {path} must hold a JSON object")
    try:
        make_config(cfg)
    except ValueError as exc:
        raise FlashError(f"config {path or '(default)'}: {exc}") from exc
    return cfg


def build_bundle(out: Path, config: dict[str, Any], compile_mpy: bool = True,
                 mpy_cross: str | None = None) -> list[Path]:
    """Write firmware_bridge/*.mpy (or .py), main.py and bridge.json under `out`; their paths."""
    pkg = out / "firmware_bridge"
    pkg.mkdir(parents=True, exist_ok=True)
    files = []
    cross = _tool("mpy-cross", mpy_cross) if compile_mpy else ""
    for src in sorted(PACKAGE_DIR.glob("*.py")):
        if compile_mpy:
            dst = pkg / (src.stem + ".mpy")
            r = subprocess.run([cross, "-o", str(dst), "-s", f"firmware_bridge/{src.name}",
                                str(src)], capture_output=True, text=True)
            if r.returncode != 0:
                raise FlashError(f"mpy-cross failed on {src.name}: {r.stderr.strip()}")
        else:
            dst = pkg / src.name
            shutil.copyfile(src, dst)
        files.append(dst)
    (out / "main.py").write_text(MAIN_PY)
    (out / "bridge.json").write_text(json.dumps(config, indent=1) + "\n")
    return [*files, out / "main.py", out / "bridge.json"]


def _remote(dest: str, name: str) -> str:
    dest = dest.rstrip("/")
    if dest in ("", "/"):
        return f":/{name}"
    return f":{dest}/{name}"


def mpremote_steps(mpremote: str, port: str, bundle: Path, dest: str, resume: bool,
                   start: str) -> list[list[str]]:
    """The mpremote invocations that deploy `bundle` and start the bridge."""
    base = [mpremote, "connect", port] + (["resume"] if resume else [])
    pkg_dir = _remote(dest, "firmware_bridge")[1:]
    clean = (
        "import os\n"
        f"d = {pkg_dir!r}\n"
        "try:\n"
        "    for f in os.listdir(d):\n"
        "        if f.endswith('.py') or f.endswith('.mpy'):\n"
        "            os.remove(d + '/' + f)\n"
        "except OSError:\n"
        "    pass\n"
    )
    dest_dir = ":" + (dest if dest not in ("", "/") else "/")
    steps = [
        [*base, "exec", clean],
        [*base, "fs", "cp", "-r", str(bundle / "firmware_bridge"), dest_dir, "+",
         "fs", "cp", str(bundle / "main.py"), _remote(dest, "main.py"), "+",
         "fs", "cp", str(bundle / "bridge.json"), _remote(dest, "bridge.json")],
    ]
    if start == "reset":
        steps.append([*base, "reset"])
    elif start == "exec":
        steps.append([*base, "exec", "--no-follow", "import main"])
    return steps


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", required=True,
                        help="serial port of the board (e.g. /dev/ttyACM0)")
    parser.add_argument("--config", help="bridge.json to deploy (default: a Bitaxe-style board)")
    parser.add_argument("--family", default="BM1370", choices=FAMILIES,
                        help="chip family for the default config")
    parser.add_argument("--dest", default="/", help="directory on the board (unix port: .)")
    parser.add_argument("--resume", action="store_true",
                        help="connect without a soft reset (needed for the unix port)")
    parser.add_argument("--start", choices=("reset", "exec", "none"), default="reset",
                        help="how to start the bridge after copying")
    parser.add_argument("--no-compile", action="store_true", help="copy .py instead of .mpy")
    parser.add_argument("--build-dir", help="keep the bundle here (default: a temporary dir)")
    parser.add_argument("--mpremote", help="mpremote executable")
    parser.add_argument("--mpy-cross", help="mpy-cross executable")
    parser.add_argument("--timeout-s", type=float, default=60.0, help="per mpremote step")
    parser.add_argument("--dry-run", action="store_true", help="print the steps, run nothing")


def flash(args: argparse.Namespace) -> None:
    config = load_config(args.config, args.family)
    mpremote = _tool("mpremote", args.mpremote) if not args.dry_run else (
        args.mpremote or "mpremote")
    with tempfile.TemporaryDirectory(prefix="gridminer-flash-") as tmp:
        bundle = Path(args.build_dir) if args.build_dir else Path(tmp)
        files = build_bundle(bundle, config, not args.no_compile, args.mpy_cross)
        print(f"bundle: {len(files)} files in {bundle}")
        for step in mpremote_steps(mpremote, args.port, bundle, args.dest, args.resume,
                                   args.start):
            print("$", " ".join(step if "exec" not in step else [*step[:-1], "'...'"]))
            if args.dry_run:
                continue
            try:
                r = subprocess.run(step, capture_output=True, text=True, timeout=args.timeout_s)
            except subprocess.TimeoutExpired as exc:
                raise FlashError(f"mpremote timed out after {args.timeout_s:.0f} s") from exc
            if r.stdout.strip():
                print(r.stdout.rstrip())
            if r.returncode != 0:
                raise FlashError(f"mpremote failed ({r.returncode}): {r.stderr.strip()[-500:]}")
    print("flashed" if not args.dry_run else "dry run")


def run(args: argparse.Namespace) -> int:
    try:
        flash(args)
    except FlashError as exc:
        print(f"gridminer flash: {exc}", file=sys.stderr)
        return 1
    return 0
