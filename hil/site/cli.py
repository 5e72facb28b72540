"""`gridminer hil` for site scenarios (hil/scenarios/site/): `run`, `list`, `check` and `report`
dispatch here when the scenario or the run folder is a site's. Exit status as `hil.hil_cmd`'s:
0 every criterion met, 1 a criterion failed, 2 the scenario or an option is invalid, 3 the rig
could not run."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from hil.hil_cmd import EXIT_FAIL, EXIT_PASS, EXIT_USAGE, play


def is_site(name: str) -> bool:
    from hil.site.scenario import resolve_site

    return resolve_site(name) is not None


def list_sites() -> int:
    from hil.scenario import ScenarioError
    from hil.site.scenario import available_sites, load_site

    code = EXIT_PASS
    for path in available_sites():
        try:
            s = load_site(path)
        except ScenarioError as exc:
            print(f"{exc}", file=sys.stderr)
            code = EXIT_USAGE
            continue
        print(f"{s.name:18s} {s.duration_s:5.0f} s  {s.description}")
    return code


def check_site(name: str) -> int:
    from hil.scenario import ScenarioError
    from hil.site.scenario import load_site

    try:
        s = load_site(name)
    except ScenarioError as exc:
        print(f"{exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"{name}: ok (site of {s.site.devices} devices, {len(s.grid)} grid events, "
          f"{len(s.regulation)} regulation segments, {len(s.faults)} faults, "
          f"{len(s.criteria)} criteria)")
    return EXIT_PASS


def report_site(folder: Path) -> int:
    from hil.site.report import read_site_recording, write_site_report

    summary = write_site_report(read_site_recording(folder / "recording.json"), folder)
    print((folder / "summary.md").read_text(encoding="utf-8"))
    return EXIT_PASS if summary["passed"] else EXIT_FAIL


def run_site(args: argparse.Namespace) -> int:
    from hil.scenario import ScenarioError
    from hil.site.runner import SiteRunOptions, run_site_scenario
    from hil.site.scenario import load_site

    try:
        if args.target or args.broker:
            raise ScenarioError("a site scenario runs on its own broker and fleet "
                                "(--target and --broker are for one board)")
        scenario = load_site(args.scenario)
        if args.short:
            scenario = scenario.shortened()
        speed = args.speed if args.speed is not None else (
            scenario.short.speed if args.short else 1.0)
        if not 0.01 <= speed <= 1000:
            raise ScenarioError(f"--speed must be in [0.01, 1000], got {speed:g}")
    except ScenarioError as exc:
        print(f"gridminer hil: {exc}", file=sys.stderr)
        return EXIT_USAGE
    out = Path(args.out)
    options = SiteRunOptions(scenario=scenario, out_dir=out, speed=speed,
                             progress=None if args.quiet else sys.stderr, python=sys.executable)
    return play(lambda: run_site_scenario(options), lambda summary: verdict(summary, out))


def verdict(s: dict[str, Any], out: Path) -> str:
    from hil.report.summary import as_text

    gm, base, ratio = s["gridminer"], s["baseline"], s["ratio"]
    scores = ", ".join(as_text(r.get("score")) for r in gm["regulation"]) or "n/a"
    lines = [
        f"{s['scenario']}: {'PASS' if s['passed'] else 'FAIL'} ({s['devices']} devices, "
        f"{s['rating_w'] / 1e6:.2f} MW, {s['speed']:g}x)",
        f"  gridminer: tracking RMS {as_text(gm['tracking_rms_pct'])} %, max "
        f"{as_text(gm['tracking_max_pct'])} % of rating; step p90 "
        f"{as_text(gm['steps']['p90_s'])} s; ramp violations {gm['ramp_violations']}; "
        f"RegD score {scores}; {gm['commands']['per_s']:.1f} device commands/s",
    ]
    if base is not None:
        lines.append(
            f"  baseline:  tracking RMS {as_text(base['tracking_rms_pct'])} %, step p90 "
            f"{as_text(base['steps']['p90_s'])} s, energy off target "
            f"{as_text(base['energy_off_target_kwh'])} kWh (gridminer "
            f"{as_text(gm['energy_off_target_kwh'])}); ratios tracking "
            f"{as_text(ratio['tracking_rms_ratio'])}, step {as_text(ratio['step_p90_ratio'])}, "
            f"energy {as_text(ratio['energy_off_target_ratio'])}")
    lines += [f"  criterion {c['name']} = {as_text(c['value'])} "
              f"({'<=' if c['direction'] == 'max' else '>='} {c['bound']:g}) FAILED"
              for c in s["criteria"] if not c["ok"]]
    lines.append(f"report: {out / 'report.png'}  summary: {out / 'summary.md'}")
    return "\n".join(lines)
