"""`gridminer hil`: the lab rig from the command line.

    gridminer hil run [SCENARIO] [--speed X] [--short] [--broker URL]
                      [--target chain=URL,board=URL] --out DIR
    gridminer hil list                     # the scenarios shipped in hil/scenarios/
    gridminer hil check FILE...            # validate scenario files
    gridminer hil report DIR               # redraw DIR/report.png and the summary from a run

`run` starts what it needs (a private Mosquitto unless --broker, the emulated board unless
--target, the agent as its own process, the grid simulator), shows a live status line on stderr
and writes DIR/report.png, DIR/summary.json, DIR/summary.md. Exit status: 0 every criterion met,
1 a criterion failed, 2 the scenario or an option is invalid, 3 the rig could not run.
A site scenario (hil/scenarios/site/, e.g. site_surplus) runs a fleet of virtual devices behind
`gridminer site` instead, beside today's fleet tools (`hil.site`).
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable
from pathlib import Path

EXIT_PASS, EXIT_FAIL, EXIT_USAGE, EXIT_RIG = 0, 1, 2, 3


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = sub.add_parser("run", help="play a scenario on the rig and write a report")
    p.add_argument("scenario", nargs="?", default="solar_surplus",
                   help="scenario file or name in hil/scenarios/ (default solar_surplus)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the report")
    p.add_argument("--speed", type=float, metavar="X",
                   help="play the scenario schedule X times faster (default 1; physics and the "
                        "agent stay real time)")
    p.add_argument("--short", action="store_true",
                   help="the scenario's short version (what tests/hil plays)")
    p.add_argument("--broker", metavar="URL", help="use this broker instead of a private one")
    p.add_argument("--target", metavar="chain=URL,board=URL",
                   help="a real board instead of the emulator (truth from the agent's telemetry)")
    p.add_argument("--agent-log-level", default="INFO", metavar="LEVEL")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p = sub.add_parser("list", help="list the shipped scenarios")
    p = sub.add_parser("check", help="validate scenario files")
    p.add_argument("files", nargs="+", metavar="FILE")
    p = sub.add_parser("report", help="redraw the report of a run folder")
    p.add_argument("dir", metavar="DIR")


def run(args: argparse.Namespace) -> int:
    from hil.scenario import ScenarioError, available, load
    from hil.site import cli as site  # site scenarios (hil/scenarios/site/)

    if args.action == "list":
        code = site.list_sites()
        for path in available():
            try:
                s = load(path)
            except ScenarioError as exc:
                print(f"{exc}", file=sys.stderr)
                code = EXIT_USAGE
                continue
            print(f"{s.name:18s} {s.duration_s:5.0f} s  {s.description}")
        return code
    if args.action == "check":
        code = EXIT_PASS
        for name in args.files:
            if site.is_site(name):
                code = max(code, site.check_site(name))
                continue
            try:
                s = load(name)
                print(f"{name}: ok ({len(s.grid)} grid events, {len(s.faults)} faults, "
                      f"{len(s.criteria)} criteria)")
            except ScenarioError as exc:
                print(f"{exc}", file=sys.stderr)
                code = EXIT_USAGE
        return code
    if args.action == "report":
        return _report(Path(args.dir))
    if site.is_site(args.scenario):
        return site.run_site(args)
    return _run(args)


def _report(folder: Path) -> int:
    from hil.report import read_recording, write_report

    path = folder / "recording.json"
    if not path.is_file():
        print(f"gridminer hil report: {path} not found", file=sys.stderr)
        return EXIT_USAGE
    from hil.site.report import is_site_recording

    if is_site_recording(path):
        from hil.site.cli import report_site

        return report_site(folder)
    summary = write_report(read_recording(path), folder)
    print((folder / "summary.md").read_text(encoding="utf-8"))
    return EXIT_PASS if summary["passed"] else EXIT_FAIL


def _run(args: argparse.Namespace) -> int:
    from hil.rig import RigError, RigOptions, RigTarget, run_scenario
    from hil.scenario import ScenarioError, load

    try:
        scenario = load(args.scenario)
        if args.short:
            scenario = scenario.shortened()
        speed = args.speed if args.speed is not None else (
            scenario.short.speed if args.short else 1.0)
        if not 0.01 <= speed <= 1000:
            raise ScenarioError(f"--speed must be in [0.01, 1000], got {speed:g}")
        target = RigTarget.parse(args.target) if args.target else None
    except (ScenarioError, RigError) as exc:
        print(f"gridminer hil: {exc}", file=sys.stderr)
        return EXIT_USAGE
    out = Path(args.out)
    options = RigOptions(
        scenario=scenario, out_dir=out, speed=speed, broker_url=args.broker, target=target,
        progress=None if args.quiet else sys.stderr, agent_log_level=args.agent_log_level,
    )
    return play(lambda: run_scenario(options), lambda summary: _verdict(summary, out))


def play(run: Callable[[], dict], verdict: Callable[[dict], str]) -> int:
    """Run a scenario (`run` returns its summary), SIGTERM and SIGHUP ending it as Ctrl-C does;
    print its verdict; the exit status."""
    from agent.errors import GridminerError

    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        summary = run()
    except (GridminerError, OSError) as exc:
        print(f"\ngridminer hil: the rig could not run: {exc}", file=sys.stderr)
        return EXIT_RIG
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(verdict(summary))
    return EXIT_PASS if summary["passed"] else EXIT_FAIL


def _interrupt(signum: int, _frame: object) -> None:
    """SIGTERM and SIGHUP end a run as Ctrl-C does: the rig stops every child it started."""
    raise KeyboardInterrupt(f"signal {signum}")


def _verdict(s: dict, out: Path) -> str:
    v = s["violations"]
    c = s["commands"]
    r = s["response_s"]
    lines = [
        f"{s['scenario']}: {'PASS' if s['passed'] else 'FAIL'}",
        f"  tracking error RMS {_f(s['tracking_rms_pct'])} %, max {_f(s['tracking_max_pct'])} % "
        f"of {s['rated_w']:.0f} W rated",
        f"  response to 90 % of a step p50/p90/max {_f(r['p50'])}/{_f(r['p90'])}/{_f(r['max'])} s",
        f"  violations cap/ramp/temp {v['cap']}/{v['ramp']}/{v['temp']}",
        f"  commands sent/acked/rejected {c['sent']}/{c['acked']}/{c['rejected']}, "
        f"telemetry gaps {s['telemetry_gaps']}, energy {s['energy_wh']:.3f} Wh",
    ]
    pool = s.get("pool")
    if pool:
        agent = pool["agent"] or {}
        lines.append(
            f"  pool shares accepted/rejected/invalid {pool['accepted']}/"
            f"{pool['submitted'] - pool['accepted'] - pool['invalid']}/{pool['invalid']}, "
            f"stale {_f(pool['stale_pct'])} %; the agent counted "
            f"{agent.get('pool_accepted', 'n/a')}/{agent.get('pool_rejected', 'n/a')}")
    lines += [f"  criterion {x['name']} = {x['value']} (bound {x['bound']:g}) FAILED"
              for x in s["criteria"] if not x["ok"]]
    lines.append(f"report: {out / 'report.png'}  summary: {out / 'summary.md'}")
    return "\n".join(lines)


def _f(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"
