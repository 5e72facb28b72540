"""`gridminer operator watch` through a real Mosquitto: a site where no device has reported is
said so at once (exit 2), and the pool's figures get columns once a device reports them."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from tests.integration.conftest import plain_settings

ROOT = Path(__file__).parents[2]
POOL = {"pool": "stratum+tcp://127.0.0.1:3333", "pool_accepted": 12, "pool_rejected": 1,
        "pool_stale": 0, "pool_hashrate_ghs": 480.5}


def watch(broker_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", "operator", "watch", "--broker", broker_url, *args],
        cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_watch_once_on_a_site_where_no_device_reported_says_so_at_once(mosquitto) -> None:
    started = time.monotonic()
    done = watch(mosquitto.url, "--site", "empty-site", "--once")
    took_s = time.monotonic() - started
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert "no device of site empty-site has reported" in done.stderr
    assert "gridminer/empty-site/+/status" in done.stderr
    assert took_s < 8.0  # the interval (1 s) and the interpreter's start, not the 10 s timeout


def test_pool_columns_appear_only_when_a_device_reports_pool_figures(
        mosquitto, tmp_path, device_factory) -> None:
    dev = device_factory(plain_settings(mosquitto, tmp_path), name="d")
    args = ("--site", "site-a", "--once", "--interval", "0.5")
    done = watch(mosquitto.url, *args)
    assert done.returncode == 0, done.stderr
    header = done.stdout.splitlines()[0].split()
    assert header[0] == "device" and "pool" not in header and "pool_accepted" not in header

    dev.snap = {**dev.snap, **POOL}
    deadline = time.monotonic() + 10.0
    while True:
        done = watch(mosquitto.url, *args, "--json")
        row = json.loads(done.stdout.splitlines()[0]) if done.returncode == 0 else {}
        if row.get("pool_accepted") is not None or time.monotonic() > deadline:
            break
    assert {k: row.get(k) for k in POOL} == POOL, done
    table = watch(mosquitto.url, *args)
    lines = table.stdout.splitlines()
    assert lines[0].split()[-5:] == list(POOL)
    assert lines[1].split()[-5:] == ["stratum+tcp://127.0.0.1:3333", "12", "1", "0", "480.5"]
