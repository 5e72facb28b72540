"""`gridminer fleet`: many virtual devices on one broker, each with its own MQTT connection.

    gridminer fleet --devices N --broker URL --site S --operator-key SITE_PUB.pem --kid SITE_KID
                    --state-dir DIR [--insecure-no-tls] [--seed X] [--mix FILE]
                    [--processes P]

Faults on cue: one JSON object a line on stdin, answered by one JSON line on stdout:

    {"op": "kill", "share": 0.1}          {"op": "revive", "ids": ["bm1370-1300-0007"]}
    {"op": "trip", "share": 0.05}         {"op": "clear_trip"}
    {"op": "lag", "share": 0.05, "tau_s": 30}   {"op": "clear_lag"}
    {"op": "cut", "ids": [...]}           {"op": "restore"}
    {"op": "figures"}

Answers: {"ok": true, "op": ..., "ids": [...]} (or "figures"), {"ok": false, "error": ...}
for a line that is not a known command. Once every device is online, stdout gets
{"event": "online", ...figures}; stderr a status line every --status-period-s. SIGUSR1 prints the
figures; SIGINT/SIGTERM stop the fleet cleanly (offline status, DISCONNECT), and so does the
end of stdin for a process of --processes (its parent is gone). Exit status: 0
after a stop, 2 for invalid options (mix file, keys, devices), 3 when the fleet cannot run.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

EXIT_OK, EXIT_USAGE, EXIT_RUN = 0, 2, 3
FAULT_OPS = ("kill", "trip", "lag", "cut")  # take "share" or "ids"
CLEAR_OPS = ("clear_trip", "clear_lag", "restore")  # take "ids" (absent: all)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--devices", type=int, default=1300, metavar="N",
                        help="how many devices (default 1300)")
    parser.add_argument("--broker", required=True, metavar="URL", help="mqtt://HOST:PORT")
    parser.add_argument("--site", required=True, metavar="S", help="the site id")
    parser.add_argument("--operator-key", required=True, metavar="PEM",
                        help="public key the devices trust (the site controller's)")
    parser.add_argument("--kid", required=True, metavar="KID", help="that key's key id")
    parser.add_argument("--state-dir", required=True, metavar="DIR",
                        help="folder of the devices' state (DIR/DEVICE); each device syncs "
                             "its replay state to disk on every command as the agent does, so "
                             "a tmpfs folder (/dev/shm/...) keeps a site's fleet off one disk")
    parser.add_argument("--insecure-no-tls", action="store_true",
                        help="plain MQTT to a non-loopback broker (lab only)")
    parser.add_argument("--ca-file", metavar="PEM", help="CA of an mqtts:// broker")
    parser.add_argument("--seed", type=int, default=0, metavar="X",
                        help="seed of the mix, the units' spread and the fault picks")
    parser.add_argument("--mix", metavar="FILE",
                        help="TOML of the models and shares (default: 3 BM13xx models, "
                             "1,154 W a device)")
    parser.add_argument("--restart-spread-s", type=float, default=30.0, metavar="S",
                        help="each device's cold-start spread (default 30)")
    parser.add_argument("--telemetry-period-s", type=float, default=1.0, metavar="S")
    parser.add_argument("--control-period-s", type=float, default=1.0, metavar="S",
                        help="each device's control tick (an agent's is 0.1 s; a longer one "
                        "spares the CPU of a large fleet and slows each device's response)")
    parser.add_argument("--status-period-s", type=float, default=10.0, metavar="S",
                        help="a status line on stderr this often (0: none)")
    parser.add_argument("--processes", type=int, default=1, metavar="P",
                        help="split the devices over P processes (one core each; default 1)")
    parser.add_argument("--shard", type=_shard, default=(0, 1), metavar="I/P",
                        help="run only devices I, I+P, I+2P, ... of the fleet (what "
                             "--processes gives each process)")
    parser.add_argument("--log-level", default="WARNING", metavar="LEVEL")


def _shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected I/P, e.g. 0/2") from None
    if not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"{text!r}: expected 0 <= I < P")
    return index, count


def _child_argv(args: argparse.Namespace) -> list[str]:
    """The options of each process of --processes."""
    argv = ["--devices", str(args.devices), "--broker", args.broker, "--site", args.site,
            "--operator-key", args.operator_key, "--kid", args.kid, "--state-dir",
            args.state_dir, "--seed", str(args.seed), "--restart-spread-s",
            str(args.restart_spread_s), "--telemetry-period-s", str(args.telemetry_period_s),
            "--control-period-s", str(args.control_period_s), "--log-level", args.log_level]
    for flag, value in (("--mix", args.mix), ("--ca-file", args.ca_file)):
        if value is not None:
            argv += [flag, value]
    return argv + (["--insecure-no-tls"] if args.insecure_no_tls else [])


def run(args: argparse.Namespace) -> int:
    from agent.errors import GridminerError
    from hil.fleet.fleet import Fleet, FleetOptions
    from hil.fleet.group import FleetGroup
    from hil.fleet.mix import DEFAULT_MIX, load_mix

    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # a thousand devices each logging their start would drown the figures
    logging.getLogger("agent").setLevel(max(logging.ERROR, logging.getLogger().level))
    logging.getLogger("gridminer").setLevel(max(logging.ERROR, logging.getLogger().level))
    try:
        if args.devices < 1:
            raise GridminerError(f"--devices {args.devices}: must be at least 1")
        for name in ("restart_spread_s", "telemetry_period_s", "status_period_s"):
            if not getattr(args, name) >= 0:
                raise GridminerError(f"--{name.replace('_', '-')}: must be >= 0")
        if not args.telemetry_period_s > 0:
            raise GridminerError("--telemetry-period-s: must be > 0")
        if not 0.05 <= args.control_period_s <= 10.0:
            raise GridminerError(f"--control-period-s {args.control_period_s:g}: must be in "
                                 "[0.05, 10]")
        if args.processes < 1:
            raise GridminerError(f"--processes {args.processes}: must be at least 1")
        mix = load_mix(args.mix) if args.mix else DEFAULT_MIX
        fleet: Any = Fleet(FleetOptions(
            args.broker, args.site, [(args.kid, args.operator_key)], args.state_dir,
            devices=args.devices, seed=args.seed, mix=mix, insecure_no_tls=args.insecure_no_tls,
            ca_file=args.ca_file, restart_spread_s=args.restart_spread_s,
            telemetry_period_s=args.telemetry_period_s, control_period_s=args.control_period_s,
            shard=args.shard))
        if args.processes > 1:  # checked here, run by the processes
            fleet.stop()
            fleet = FleetGroup(_child_argv(args), args.processes)
    except GridminerError as exc:
        print(f"gridminer fleet: {exc}", file=sys.stderr)
        return EXIT_USAGE
    # the handlers only set flags: the main thread may be inside Event.wait or print, whose
    # locks a handler running on top of it would wait for forever
    flags = {"stop": False, "report": False}
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: flags.update(stop=True))
    signal.signal(signal.SIGUSR1, lambda *_: flags.update(report=True))
    stop = threading.Event()  # set by the stdin thread at the end of a shard's stdin
    try:
        fleet.start()
    except GridminerError as exc:
        print(f"gridminer fleet: {exc}", file=sys.stderr)
        return EXIT_RUN
    shard = args.shard != (0, 1)  # a process of --processes: it ends with its parent's pipe
    threading.Thread(target=_read_commands, args=(fleet, stop, shard), name="fleet-stdin",
                     daemon=True).start()
    try:
        _watch(fleet, stop, flags, args.status_period_s)
    except GridminerError as exc:  # a process of --processes went away
        print(f"gridminer fleet: {exc}", file=sys.stderr)
        return EXIT_RUN
    finally:
        fleet.stop()
    return EXIT_OK


def _emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


def _watch(fleet: Any, stop: threading.Event, flags: dict[str, bool],
           status_period_s: float) -> None:
    """Status lines, the "online" event and the figures on SIGUSR1, until stopped."""
    started = time.monotonic()
    announced = False
    next_status = started + status_period_s
    while not (flags["stop"] or stop.is_set()):
        time.sleep(0.2)
        now = time.monotonic()
        try:
            figs = fleet.figures()
        except TimeoutError:  # the loop is behind: say so and keep watching
            print("fleet: the device loop is behind (no figures for 10 s)", file=sys.stderr,
                  flush=True)
            continue
        if flags["report"]:
            flags["report"] = False
            _emit({"event": "figures", **figs})
        if not announced and figs["online"] >= figs["devices"] - figs["dead"]:
            announced = True
            _emit({"event": "online", "after_s": round(now - started, 2), **figs})
        if status_period_s > 0 and now >= next_status:
            next_status = now + status_period_s
            print(f"fleet: {figs['online']}/{figs['devices']} online, "
                  f"{figs['power_w'] / 1000:.1f} kW of {figs['rating_w'] / 1000:.1f} kW, "
                  f"dead {figs['dead']} cut {figs['cut']} tripped {figs['tripped']} "
                  f"lagging {figs['lagging']}", file=sys.stderr, flush=True)


def _read_commands(fleet: Any, stop: threading.Event, stop_at_eof: bool) -> None:
    for line in sys.stdin:
        if stop.is_set():
            return
        if line.strip():
            _emit(handle_command(fleet, line))
    if stop_at_eof:
        stop.set()


def handle_command(fleet: Any, line: str) -> dict[str, Any]:
    """One control line to its answer (never raises)."""
    try:
        cmd = json.loads(line)
    except ValueError as exc:
        return {"ok": False, "error": f"not JSON: {exc}"}
    if not isinstance(cmd, dict) or not isinstance(cmd.get("op"), str):
        return {"ok": False, "error": 'expected an object with "op"'}
    op = cmd.pop("op")
    allowed = {"kill": {"share", "ids"}, "trip": {"share", "ids", "reason"},
               "lag": {"share", "ids", "tau_s"}, "cut": {"share", "ids"},
               "revive": {"ids"}, "figures": set(), **{c: {"ids"} for c in CLEAR_OPS}}
    if op not in allowed:
        return {"ok": False, "op": op, "error": f"unknown op; one of {', '.join(allowed)}"}
    unknown = set(cmd) - allowed[op]
    if unknown:
        return {"ok": False, "op": op, "error": f"unknown key(s) {', '.join(sorted(unknown))}"}
    ids = cmd.get("ids")
    if ids is not None and (not isinstance(ids, list) or
                            not all(isinstance(i, str) for i in ids)):
        return {"ok": False, "op": op, "error": '"ids" must be a list of device ids'}
    if op in FAULT_OPS and ("share" in cmd) == ("ids" in cmd):
        return {"ok": False, "op": op, "error": 'give "share" or "ids"'}
    if op == "revive" and ids is None:
        return {"ok": False, "op": op, "error": 'give "ids"'}
    try:
        if op == "figures":
            return {"ok": True, "op": op, "figures": fleet.figures()}
        method: Callable[..., list[str]] = getattr(fleet, op)
        return {"ok": True, "op": op, "ids": method(**cmd)}
    except Exception as exc:  # a FleetError (unknown id, bad share), a bad value's TypeError,
        # the device loop too busy to answer in time
        return {"ok": False, "op": op, "error": str(exc) or type(exc).__name__}
