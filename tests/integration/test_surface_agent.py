"""The HTTP listener of `gridminer agent --http` on the emulated hash board, read by the tools
that miners run: the real pyasic finds and classifies it and reads the same figures the agent
publishes as telemetry; Prometheus' own parser reads /metrics, whose counters only grow."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from prometheus_client.parser import text_string_to_metric_families

from hil.broker import Mosquitto
from tests.integration.conftest import KID, OPERATOR_KEY, Observer, operator_for
from tests.support.agent_process import ROOT, start_agent, stop_process
from tests.support.polling import poll_until

pyasic = pytest.importorskip("pyasic")

HTTP_PORT = 80  # pyasic looks for AxeOS on port 80 only


def _free_loopback_address() -> str | None:
    """A loopback address of its own (127.x.y.z) whose port 80 this process may bind (None:
    it may not, e.g. not root)."""
    rng = random.Random()
    for _ in range(20):
        ip = f"127.{rng.randint(1, 254)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
        with socket.socket() as s:
            try:
                s.bind((ip, HTTP_PORT))
            except PermissionError:
                return None
            except OSError:
                continue
            return ip
    return None


@dataclass
class Home:
    ip: str
    broker: Mosquitto
    emu_status: Path
    observer: Observer
    agent: subprocess.Popen[bytes]
    tmp: Path

    def url(self, path: str) -> str:
        return f"http://{self.ip}:{HTTP_PORT}{path}"

    def get(self, path: str, method: str = "GET") -> tuple[int, bytes]:
        request = urllib.request.Request(self.url(path), method=method)
        try:
            with urllib.request.urlopen(request, timeout=5) as reply:
                return reply.status, reply.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def telemetry(self) -> list[dict[str, Any]]:
        """Every telemetry map received so far, in order."""
        obs = self.observer
        while not obs.messages.empty():
            obs.seen.append(obs.messages.get())
        return [m for t, m, _ in obs.seen if t.endswith("/telemetry") and isinstance(m, dict)]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Home]:
    """Broker, emulated 4-chip board, and `gridminer agent --http <loopback>:80` on it."""
    ip = _free_loopback_address()
    if ip is None:
        pytest.skip("binding port 80 (where pyasic looks) needs root or CAP_NET_BIND_SERVICE")
    tmp = tmp_path_factory.mktemp("surface")
    pem = tmp / "operator.pub.pem"
    pem.write_bytes(OPERATOR_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    status = tmp / "emu.json"
    emu = subprocess.Popen([sys.executable, "-m", "agent", "emulate", "--chips", "4",
                            "--status-file", str(status)], cwd=ROOT, stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, text=True)
    with Mosquitto() as broker, open(tmp / "agent.err", "w") as err:
        agent = None
        observer = None
        try:
            assert emu.stdout is not None
            info = json.loads(emu.stdout.readline())
            observer = Observer(broker, ["gridminer/s1/d1/telemetry"])
            agent = start_agent(tmp, info["chain"], info["board"], broker.url, pem, KID, err,
                                "--http", f"{ip}:{HTTP_PORT}",
                                "--nonce-difficulty", repr(info["difficulty"]))
            found = Home(ip, broker, status, observer, agent, tmp)
            steady = poll_until(lambda: _steady(found.telemetry()[-6:]), 90)
            assert steady, (tmp / "agent.err").read_text()[-2000:]
            yield found
        finally:
            if agent is not None:
                stop_process(agent, 20)
            if observer is not None:
                observer.close()
            stop_process(emu, 10)
            if emu.stdout is not None:
                emu.stdout.close()


def _spread(values: list[Any]) -> float:
    """(max - min) / max of positive figures; 1.0 when any is missing."""
    if not values or not all(isinstance(v, int | float) and v > 0 for v in values):
        return 1.0
    return (max(values) - min(values)) / max(values)


def _steady(recent: list[dict[str, Any]]) -> bool:
    """Three seconds of telemetry at a settled load: power within 2 %, hashrate within 15 %."""
    return (len(recent) == 6 and all(m.get("mode") == "mining" for m in recent)
            and _spread([m.get("power_w") for m in recent]) < 0.02
            and _spread([m.get("hashrate_ghs") for m in recent]) < 0.15)


def _bracket(values: list[float], measured: float, rel: float) -> bool:
    """`measured` lies within the span of `values`, widened by `rel` of its ends."""
    return min(values) * (1 - rel) <= measured <= max(values) * (1 + rel)


def test_pyasic_finds_the_listener_and_reads_the_agents_own_figures(home: Home) -> None:
    async def read() -> tuple[Any, Any]:
        miner = await pyasic.get_miner(home.ip)
        assert miner is not None, "pyasic found nothing"
        return miner, await miner.get_data()

    before = len(home.telemetry())
    miner, data = asyncio.run(read())
    # telemetry around the read: the messages just before it and the ones that came during it
    assert poll_until(lambda: len(home.telemetry()) >= before + 2, 5)
    around = home.telemetry()[max(0, before - 2):]
    assert type(miner).__name__ == "BitAxeGamma"  # BM1370, the emulated chips
    info = json.loads(home.get("/api/system/info")[1])
    assert data.mac == info["macAddr"] and len(data.mac) == 17  # hass-miner's device id
    rates = [m["hashrate_ghs"] for m in around]
    assert _bracket(rates, data.hashrate.into(data.hashrate.unit.GH).rate, 0.05), (rates, data)
    powers = [m["power_w"] for m in around]
    assert _bracket(powers, float(data.wattage), 0.03), (powers, data.wattage)
    temps = [m["temp_c"] for m in around]
    (board,) = data.hashboards
    assert _bracket(temps, float(board.chip_temp), 0.03), (temps, board)
    assert board.chips == 4
    vr_c = json.loads(home.emu_status.read_text())["plant"]["vr_temp_c"]
    assert abs(float(board.temp) - vr_c) <= 2.0, (board.temp, vr_c)
    assert data.fans and data.fans[0].speed > 0


def _scrape(home: Home) -> dict[tuple[str, tuple[tuple[str, str], ...]], tuple[str, float]]:
    """/metrics through prometheus_client's parser: {(sample name, labels): (type, value)}."""
    status, body = home.get("/metrics")
    assert status == 200
    return {(s.name, tuple(sorted(s.labels.items()))): (family.type, s.value)
            for family in text_string_to_metric_families(body.decode())
            for s in family.samples}


def test_metrics_parse_in_base_units_and_counters_only_grow(home: Home) -> None:
    first = _scrape(home)
    assert first[("gridminer_energy_joules_total", ())][0] == "counter"
    assert first[("gridminer_hashes_total", ())][0] == "counter"
    assert ("gridminer_shares_total", (("result", "accepted"),)) in first
    assert first[("gridminer_mode", (("mode", "mining"),))][1] == 1.0
    power = first[("gridminer_power_watts", ())][1]
    assert _bracket([m["power_w"] for m in home.telemetry()[-4:]], power, 0.03)
    hz = first[("gridminer_frequency_hertz", ())][1]
    assert 1e8 < hz < 1e9  # MHz figures exported in hertz
    op = operator_for(home.broker, home.tmp).connect()
    try:
        _signed, replies = op.send("s1", "d1", "ping", timeout_s=5.0)
        assert replies and replies[0].ok, replies
    finally:
        op.close()
    energy_0 = first[("gridminer_energy_joules_total", ())][1]
    assert poll_until(lambda: _scrape(home)[("gridminer_energy_joules_total", ())][1]
                      > energy_0 + 50.0, 10)  # a ~70 W board: a second or so
    second = _scrape(home)
    counters = {k: v for k, (kind, v) in first.items() if kind == "counter"}
    assert len(counters) >= 8
    for sample, value in counters.items():
        assert second[sample][1] >= value, sample
    assert second[("gridminer_hashes_total", ())][1] > counters[("gridminer_hashes_total", ())]
    accepted = ("gridminer_commands_total", (("result", "accepted"),))
    assert second[accepted][1] == counters[accepted] + 1


def test_anything_but_reading_is_refused_and_the_agent_mines_on(home: Home) -> None:
    for method, path in (("POST", "/api/system/restart"), ("PATCH", "/api/system"),
                         ("POST", "/api/system/pause"), ("DELETE", "/metrics"),
                         ("PUT", "/api/system/pools/0")):
        status, body = home.get(path, method)
        assert status == 405, (method, path, status)
        assert "read-only" in json.loads(body)["error"]
    status, body = home.get("/api/system/wifi/scan")
    assert status == 404 and "no such path" in json.loads(body)["error"]
    status, body = home.get("/")
    assert status == 200 and b"AxeOS-compatible" in body
    with socket.create_connection((home.ip, HTTP_PORT), timeout=5) as raw:
        raw.sendall(b"\x16\x03\x01 not http at all\r\n\r\n")
        reply = b""
        while chunk := raw.recv(4096):  # answered, then closed
            reply += chunk
        assert b"400" in reply and b"Bad request" in reply
    # clients that connect and say nothing hold up neither the listener nor the control loop
    idle = [socket.create_connection((home.ip, HTTP_PORT), timeout=5) for _ in range(4)]
    try:
        started = time.monotonic()
        status, body = home.get("/api/system/info")
        assert status == 200 and time.monotonic() - started < 2.0
        count = len(home.telemetry())
        assert poll_until(lambda: len(home.telemetry()) >= count + 3, 5)
        assert home.telemetry()[-1]["mode"] == "mining"
    finally:
        for s in idle:
            s.close()
