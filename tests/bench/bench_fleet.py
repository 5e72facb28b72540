"""The fleet emulator at site scale (a script, not a test).

Run: `.venv/bin/python tests/bench/bench_fleet.py [--devices 1300] [--beyond 2600,3900]
[--steady-s 30] [--no-site] [--rounds 10] [--processes P] [--state-on-disk]`.

For each fleet size: a private Mosquitto, the site controller (`gridminer site`, unless --no-site
or it does not start), a subscriber counting the devices' telemetry, and `gridminer fleet` with
telemetry every second, all as their own processes on this machine. Printed: the time until
every device is online, then over a steady window the CPU (% of one core) and RSS of the fleet,
the broker and the site controller, the fleet's CPU and memory per device, the telemetry
delivered per second against the devices online, and how late the fleet's control ticks ran
(p99); with --no-site, how long site-wide commands signed with the site key take to the last
device's ack (p50, p99 and max over --rounds commands; the site's figure is p99 <= 1 s). A size
runs in real time when telemetry arrives at one message a device a second and the ticks' p99
lateness stays under 100 ms.

The devices' state folders are on /dev/shm when it exists (`hil.fleet.fleet.lab_state_dir`
says why; --state-on-disk keeps them on disk).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion

from agent.site.client import BrokerOptions, Operator
from agent.site.signer import CommandSigner, SeqCounter
from hil.broker import Mosquitto
from hil.fleet.fleet import lab_state_dir
from hil.fleet.mix import DEFAULT_MIX, specs

ROOT = Path(__file__).resolve().parents[2]
SITE = "bench"
REAL_TIME_LATE_MS = 100.0
ONLINE_TIMEOUT_S = 180.0


def tree(pid: int) -> list[int]:
    """`pid` and its descendants (the processes of `gridminer fleet --processes`)."""
    out = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            out += tree(int(child))
    return out


def cpu_s(pid: int) -> float:
    """CPU seconds of `pid` and its descendants."""
    total = 0.0
    for p in tree(pid):
        with open(f"/proc/{p}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def rss_mb(pid: int) -> float:
    """Resident memory of `pid` and its descendants."""
    total = 0.0
    for p in tree(pid):
        with open(f"/proc/{p}/status") as fh:
            total += next((int(line.split()[1]) / 1024.0 for line in fh
                           if line.startswith("VmRSS")), 0.0)
    return total


def write_keys(folder: Path) -> dict[str, str]:
    """A grid operator key pair and a site key pair (PEM files, owner-only)."""
    out = {}
    for name in ("grid", "site"):
        key = Ed25519PrivateKey.generate()
        private, public = folder / f"{name}.pem", folder / f"{name}_pub.pem"
        private.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                              serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
        public.write_bytes(key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        for path in (private, public):
            os.chmod(path, 0o600)
        out[name], out[f"{name}_pub"] = str(private), str(public)
    return out


class TelemetryCounter:
    """A subscriber that counts the devices' telemetry messages."""

    def __init__(self, broker: Mosquitto) -> None:
        self.count = 0
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-counter",
                                  protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", broker.port)
        self.client.subscribe(f"gridminer/{SITE}/+/telemetry", qos=0)
        self.client.loop_start()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        if not msg.topic.endswith("/site/telemetry"):
            self.count += 1

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def start_site(broker: Mosquitto, keys: dict[str, str], folder: Path) -> subprocess.Popen[bytes]:
    with open(folder / "site.log", "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "agent", "site", "--broker", broker.url, "--site", SITE,
             "--operator-key", keys["grid_pub"], "--kid", "grid", "--key", keys["site"],
             "--key-kid", "site", "--state-dir", str(folder / "site"), "--log-level",
             "WARNING"],
            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)


def command_burst(broker: Mosquitto, keys: dict[str, str], folder: Path, devices: list[str],
                  rounds: int) -> list[float]:
    """Site-wide setpoints signed with the site key (what the site controller sends): for each,
    seconds from the publish to the last device's ack."""
    signer = CommandSigner.from_file(keys["site"], "site")
    out = []
    with Operator(BrokerOptions(broker.url), signer, SeqCounter(folder / "seq.json")) \
            .connect() as op:
        for i in range(rounds):
            t0 = time.monotonic()
            _, replies = op.send(SITE, None, "setpoint", power_w=700 + i, expect=devices,
                                 timeout_s=20)
            if len(replies) < len(devices):
                out.append(float("inf"))
            else:
                out.append(max(r.received_s for r in replies) - t0)
            time.sleep(2)
    return out


def percentile(values: list[float], share: float) -> float:
    """The nearest-rank percentile (`share` in (0, 1]) of `values`."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def run_size(devices: int, steady_s: float, with_site: bool, processes: int,
             tmpfs: bool, rounds: int) -> dict[str, Any]:
    folder = lab_state_dir("bench-fleet-") if tmpfs else Path(tempfile.mkdtemp("", "bench-fleet-"))
    keys = write_keys(folder)
    result: dict[str, Any] = {"devices": devices}
    with Mosquitto() as broker:
        assert broker.process is not None
        site = start_site(broker, keys, folder) if with_site else None
        counter = TelemetryCounter(broker)
        t0 = time.monotonic()
        fleet = subprocess.Popen(
            [sys.executable, "-m", "agent", "fleet", "--devices", str(devices), "--broker",
             broker.url, "--site", SITE, "--operator-key", keys["site_pub"], "--kid", "site",
             "--state-dir", str(folder / "fleet"), "--restart-spread-s", "5",
             "--status-period-s", "0", "--processes", str(processes)],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert fleet.stdout is not None and fleet.stdin is not None
        lines: queue.Queue[dict[str, Any]] = queue.Queue()
        out = fleet.stdout

        def read() -> None:
            for line in out:
                lines.put(json.loads(line))

        threading.Thread(target=read, daemon=True).start()

        def answer() -> dict[str, Any]:
            while "event" in (msg := lines.get(timeout=60)):
                pass
            return msg

        try:
            try:
                online = lines.get(timeout=ONLINE_TIMEOUT_S)
            except queue.Empty:
                online = {}
            result["connect_s"] = online.get("after_s", f"> {ONLINE_TIMEOUT_S:g}")
            result["start_s"] = round(time.monotonic() - t0, 1)
            time.sleep(10)  # the restart spread and the ramps are over
            if fleet.poll() is not None:
                result["failed"] = f"gridminer fleet exited ({fleet.returncode})"
                return result
            site_alive = site is not None and site.poll() is None
            pids = {"fleet": fleet.pid, "broker": broker.process.pid}
            if site_alive:
                assert site is not None
                pids["site"] = site.pid
            c0 = {k: cpu_s(p) for k, p in pids.items()}
            n0, w0 = counter.count, time.monotonic()
            time.sleep(steady_s)
            c1 = {k: cpu_s(p) for k, p in pids.items()}
            n1, w1 = counter.count, time.monotonic()
            for k, pid in pids.items():
                result[f"{k}_cpu_pct"] = round(100.0 * (c1[k] - c0[k]) / (w1 - w0), 1)
                result[f"{k}_rss_mb"] = round(rss_mb(pid), 1)
            fleet.stdin.write('{"op": "figures"}\n')
            fleet.stdin.flush()
            figures = answer()["figures"]
            result["online"] = figures["online"]
            result["late_p99_ms"] = figures["late_p99_ms"]
            result["telemetry_per_s"] = round((n1 - n0) / (w1 - w0), 1)
            result["site"] = "running" if site_alive else ("off" if site is None else "exited")
            if site is None:
                ids = [s.device for s in specs(DEFAULT_MIX, devices)]
                result["burst_s"] = command_burst(broker, keys, folder, ids, rounds)
        finally:
            fleet.terminate()
            fleet.communicate(timeout=60)
            counter.close()
            if site is not None:
                site.terminate()
                site.wait(30)
            shutil.rmtree(folder, ignore_errors=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=1300)
    parser.add_argument("--beyond", default="2600",
                        help="larger sizes to try, comma-separated ('' for none); one process "
                             "keeps up to about 3,000 devices, beyond that use --processes 2")
    parser.add_argument("--steady-s", type=float, default=30.0)
    parser.add_argument("--no-site", action="store_true",
                        help="no site controller; measure site-wide commands to the last ack")
    parser.add_argument("--rounds", type=int, default=10,
                        help="site-wide commands timed with --no-site")
    parser.add_argument("--processes", type=int, default=1, help="gridminer fleet --processes")
    parser.add_argument("--state-on-disk", action="store_true",
                        help="the devices' state folders on disk (default: /dev/shm, so that "
                             "1,300 devices' fsyncs do not queue on one shared disk)")
    args = parser.parse_args()
    sizes = [args.devices] + [int(x) for x in args.beyond.split(",") if x.strip()]
    print(f"fleet emulator, telemetry 1/s a device, {os.cpu_count()} cores, "
          f"{args.processes} fleet process(es), state on "
          f"{'disk' if args.state_on_disk else 'tmpfs'}; steady window {args.steady_s:g} s")
    for n in sizes:
        r = run_size(n, args.steady_s, not args.no_site, args.processes, not args.state_on_disk,
                     args.rounds)
        if "failed" in r:
            print(f"\n{n} devices: not online after {r['connect_s']} s; {r['failed']}")
            continue
        real_time = (r["late_p99_ms"] < REAL_TIME_LATE_MS
                     and r["telemetry_per_s"] >= 0.98 * r["online"] and r["online"] == n)
        print(f"\n{n} devices: all online in {r['connect_s']} s "
              f"(fleet process start to online {r['start_s']} s); {r['online']} online")
        print(f"  fleet   CPU {r['fleet_cpu_pct']:6.1f} %  RSS {r['fleet_rss_mb']:7.1f} MB  "
              f"per device: {1000 * r['fleet_cpu_pct'] / n:.2f} m% CPU, "
              f"{1024 * r['fleet_rss_mb'] / n:.1f} KB")
        print(f"  broker  CPU {r['broker_cpu_pct']:6.1f} %  RSS {r['broker_rss_mb']:7.1f} MB")
        if "site_cpu_pct" in r:
            print(f"  site    CPU {r['site_cpu_pct']:6.1f} %  RSS {r['site_rss_mb']:7.1f} MB")
        else:
            print(f"  site controller: {r['site']}")
        print(f"  telemetry delivered {r['telemetry_per_s']:.0f}/s for {r['online']} devices; "
              f"control ticks late p99 {r['late_p99_ms']:.1f} ms -> "
              f"{'real time' if real_time else 'NOT real time'}")
        if "burst_s" in r:
            burst = r["burst_s"]
            print(f"  site-wide command to the last device's ack over {len(burst)} commands: "
                  f"p50 {percentile(burst, 0.5):.2f} s, p99 {percentile(burst, 0.99):.2f} s, "
                  f"max {max(burst):.2f} s")
            print("    each: " + ", ".join(f"{x:.2f}" for x in burst))
    return 0


if __name__ == "__main__":
    sys.exit(main())
