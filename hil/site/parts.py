"""The parts a site run starts besides the broker: a fleet (`gridminer fleet` as its own process,
driven over its JSON-lines stdin/stdout), the site controller (`gridminer site` as its own
process, so it can be SIGKILLed and started again), the site meter (the fleet's true power
published on a topic, as a meter at the point of connection would) and the counter of the
commands sent to devices (one MQTT client on every device's `cmd` topic)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.grid.broker import parse_broker_url, release_sockets
from agent.grid.contract import SITE_DEVICE
from hil.child import JsonLineChild
from hil.fleet.fleet import lab_state_dir
from hil.rig.options import PREFIX, RigClock, RigError
from hil.rig.process import AgentProcess, log_tail


def key_pair(work: Path, name: str) -> tuple[Path, Path]:
    """A fresh Ed25519 key in WORK: (NAME.pem (0600), NAME.pub.pem)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from agent.grid import cose

    key = Ed25519PrivateKey.generate()
    priv, pub = work / f"{name}.pem", work / f"{name}.pub.pem"
    fd = os.open(priv, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(cose.private_pem(key))
    pub.write_bytes(cose.public_pem(key.public_key()))
    return priv, pub


def state_dir(path: Path) -> Path:
    """A private state folder (the agent refuses one others can read)."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


class FleetProcess:
    """`gridminer fleet` with its fault and figure requests on stdin, answers on stdout."""

    def __init__(self, python: str, work: Path, *, devices: int, broker_url: str, site: str,
                 trust_pub: Path, trust_kid: str, seed: int, restart_spread_s: float,
                 processes: int = 1, control_period_s: float = 1.0) -> None:
        self.site = site
        self.log_path = work / f"fleet-{site}.log"
        self.state_dir = lab_state_dir(f"gridminer-fleet-{site}-")  # tmpfs: see lab_state_dir
        self.command = [
            python, "-m", "agent", "fleet", "--devices", str(devices), "--broker", broker_url,
            "--site", site, "--operator-key", str(trust_pub), "--kid", trust_kid,
            "--state-dir", str(self.state_dir), "--seed", str(seed),
            "--restart-spread-s", f"{restart_spread_s:g}", "--status-period-s", "0",
            "--control-period-s", f"{control_period_s:g}",
            *(["--processes", str(processes)] if processes > 1 else [])]
        self.child = JsonLineChild(self.command, name=f"the fleet of site {site}",
                                   error=RigError, cwd=work, log_path=self.log_path,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self._sampling = threading.Event()
        self._sampler: threading.Thread | None = None
        self.stalls = 0  # figures requests the fleet did not answer in time

    def wait_online(self, timeout_s: float) -> dict[str, Any]:
        """The fleet's "online" event (every device online)."""
        try:
            return self.child.wait_event("online", timeout_s)
        except RigError as exc:
            raise RigError(f"{exc}:\n{log_tail(self.log_path)}") from None

    def request(self, cmd: dict[str, Any], timeout_s: float = 10.0) -> dict[str, Any]:
        """One request line and its answer (RigError when the fleet does not answer in time;
        an answer that comes later is dropped)."""
        answer = self.child.ask(cmd, timeout_s)
        if not answer.get("ok"):
            raise RigError(f"the fleet of site {self.site} refused {cmd}: {answer.get('error')}")
        return answer

    def sample(self, clock: RigClock, period_s: float,
               on_sample: Callable[[float, dict[str, Any]], None]) -> None:
        """From now on, the fleet's figures every `period_s` in a thread of their own:
        `on_sample(rig time, figures)`; a fleet too busy to answer leaves a gap (`stalls`)."""
        self._sampling.clear()

        def run() -> None:
            next_s = time.monotonic()
            while not self._sampling.is_set() and self.child.proc.poll() is None:
                try:
                    figs = self.figures()
                except RigError:
                    self.stalls += 1
                    continue
                # stamped with the instant the figures hold for, not the time they came back
                # (a busy fleet answers late, and by a varying delay)
                on_sample(float(figs["at_monotonic_s"]) - clock.t0, figs)
                next_s += period_s
                time.sleep(max(0.0, next_s - time.monotonic()))
                next_s = max(next_s, time.monotonic() - period_s)

        self._sampler = threading.Thread(target=run, name=f"fleet-{self.site}-figures",
                                         daemon=True)
        self._sampler.start()

    def stop_sampling(self) -> None:
        self._sampling.set()
        if self._sampler is not None:
            self._sampler.join(15.0)
            self._sampler = None

    def figures(self) -> dict[str, Any]:
        return dict(self.request({"op": "figures"})["figures"])

    def kill(self, ids: list[str]) -> list[str]:
        return list(self.request({"op": "kill", "ids": ids})["ids"])

    def stop(self) -> None:
        self.stop_sampling()
        self.child.stop(timeout_s=15.0)
        shutil.rmtree(self.state_dir, ignore_errors=True)


class SiteProcess(AgentProcess):
    """`gridminer site` as a user runs it; SIGKILLed and started again on cue, its log kept."""

    def __init__(self, python: str, work: Path, *, broker_url: str, site: str,
                 grid_pub: Path, grid_kid: str, site_key: Path, site_kid: str,
                 ramp_w_s: float, meter_topic: str | None) -> None:
        super().__init__(work / "site.toml", work, python)  # no config file: flags only
        self.log_path = work / "site.log"
        self.args = ["--broker", broker_url, "--site", site, "--operator-key", str(grid_pub),
                     "--kid", grid_kid, "--key", str(site_key), "--key-kid", site_kid,
                     "--state-dir", str(state_dir(work / "site-state")),
                     "--ramp-w-s", f"{ramp_w_s:g}"]
        if meter_topic:
            self.args += ["--meter-topic", meter_topic]

    @property
    def command(self) -> list[str]:
        return [self.python, "-m", "agent", "site", *self.args]


class MqttTap:
    """A plain MQTT client of the rig: publishes the site meter's readings and counts the
    commands sent to devices (every `PREFIX/SITE/DEVICE/cmd` and the site-wide `all/cmd`,
    not those to device `site`) by site, on the rig clock."""

    def __init__(self, broker_url: str, clock: RigClock, sites: list[str]) -> None:
        address = parse_broker_url(broker_url)
        self.clock = clock
        self.commands: dict[str, list[float]] = {s: [] for s in sites}
        self._lock = threading.Lock()
        self._client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                                   client_id=f"hil-site-tap-{secrets.token_hex(3)}",
                                   protocol=mqtt.MQTTv5)
        self._client.on_message = self._on_message
        self._connected = threading.Event()
        self._client.on_connect = lambda *a: self._connected.set()
        self._client.connect(address.host, address.port, keepalive=30)
        self._client.loop_start()
        if not self._connected.wait(10.0):
            self.close()
            raise RigError(f"the rig's MQTT tap could not connect to {broker_url}")
        self._client.subscribe([(f"{PREFIX}/{s}/+/cmd", 0) for s in sites])

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        parts = message.topic.split("/")
        if len(parts) == 4 and parts[2] != SITE_DEVICE and parts[1] in self.commands:
            with self._lock:
                self.commands[parts[1]].append(round(self.clock.now(), 3))

    def publish_meter(self, topic: str, power_w: float) -> None:
        self._client.publish(topic, json.dumps({"power_w": round(power_w, 1)}), qos=0)

    def command_times(self, site: str) -> list[float]:
        with self._lock:
            return list(self.commands[site])

    def close(self) -> None:
        try:
            self._client.disconnect()
        finally:
            self._client.loop_stop()
            release_sockets(self._client)
