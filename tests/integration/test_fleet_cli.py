"""`gridminer fleet` as a process: it announces the fleet online, takes fault commands on stdin,
rejects bad lines and bad mix files with a reason, and stops cleanly on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from tests.integration.conftest import KID, OPERATOR_KEY, Observer

ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def _fleet(broker_url: str, tmp_path: Path, *extra: str) -> Iterator[subprocess.Popen[str]]:
    """`gridminer fleet` for the length of a `with`, killed on the way out if still running."""
    pub = tmp_path / "site_pub.pem"
    pub.write_bytes(OPERATOR_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    os.chmod(pub, 0o644)
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "fleet", "--broker", broker_url, "--site", "site-a",
         "--operator-key", str(pub), "--kid", KID, "--state-dir", str(tmp_path / "state"),
         "--restart-spread-s", "0", "--status-period-s", "0", *extra],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def _online(proc: subprocess.Popen[str]) -> int:
    """How many devices the fleet's first line announces online."""
    assert proc.stdout is not None
    first = json.loads(proc.stdout.readline())
    assert first["event"] == "online", first
    return int(first["online"])


def _stop_cleanly(proc: subprocess.Popen[str]) -> None:
    """SIGTERM: the fleet exits 0 within 15 s."""
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err


def _answer(proc: subprocess.Popen[str], line: str) -> dict[str, Any]:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(line + "\n")
    proc.stdin.flush()
    return json.loads(proc.stdout.readline())


def test_fleet_process_takes_faults_on_stdin_and_stops_cleanly(mosquitto, tmp_path):
    with _fleet(mosquitto.url, tmp_path, "--devices", "4", "--seed", "3") as proc:
        assert _online(proc) == 4
        killed = _answer(proc, '{"op": "kill", "share": 0.25}')
        assert killed["ok"] and len(killed["ids"]) == 1
        figures = _answer(proc, '{"op": "figures"}')["figures"]
        assert (figures["dead"], figures["online"]) == (1, 3)
        bad = _answer(proc, "kill everything")
        assert not bad["ok"] and "not JSON" in bad["error"]
        unknown = _answer(proc, '{"op": "trip", "ids": ["nope"]}')
        assert not unknown["ok"] and "nope" in unknown["error"]
        both = _answer(proc, '{"op": "cut", "share": 0.5, "ids": []}')
        assert not both["ok"] and "share" in both["error"]
        _stop_cleanly(proc)
    # every device said offline: the killed one by its Will, the others on the clean stop
    obs = Observer(mosquitto, ["gridminer/site-a/+/status"])
    try:
        states: dict[str, str] = {}
        deadline = time.monotonic() + 5
        while len(states) < 4 and time.monotonic() < deadline:
            topic, msg, _ = obs.wait_for(lambda t, m, r: r, deadline - time.monotonic())
            states[topic.split("/")[2]] = msg["state"]
    finally:
        obs.close()
    assert set(states.values()) == {"offline"} and len(states) == 4


def test_fleet_refuses_a_bad_mix_file_with_the_key_named(mosquitto, tmp_path):
    mix = tmp_path / "mix.toml"
    mix.write_text('[[model]]\nname = "a"\nfamily = "BM1370"\nrating_w = 9000\nshare = 1\n')
    with _fleet(mosquitto.url, tmp_path, "--devices", "2", "--mix", str(mix)) as proc:
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert "model[0].rating_w: 9000 is out of range [10, 4000]" in err


def test_fleet_over_two_processes_acts_as_one(mosquitto, tmp_path):
    with _fleet(mosquitto.url, tmp_path, "--devices", "6", "--processes", "2") as proc:
        assert _online(proc) == 6
        # a share of each process, and ids wherever they run
        killed = _answer(proc, '{"op": "kill", "share": 0.34}')
        assert killed["ok"] and len(killed["ids"]) == 2
        ids = _answer(proc, '{"op": "cut", "share": 1.0}')["ids"]
        assert len(ids) == 4 and not set(ids) & set(killed["ids"])
        restored = _answer(proc, json.dumps({"op": "restore", "ids": ids[:3]}))
        assert sorted(restored["ids"]) == sorted(ids[:3])
        figures = _answer(proc, '{"op": "figures"}')["figures"]
        assert (figures["devices"], figures["dead"], figures["cut"]) == (6, 2, 1)
        assert not _answer(proc, '{"op": "revive", "ids": ["x"]}')["ok"]
        _stop_cleanly(proc)
