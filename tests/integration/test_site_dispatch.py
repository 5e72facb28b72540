"""`gridminer site` on a real Mosquitto, dispatching a few devices that run the device's grid code
(GridLink + GridSession) on a plant stand-in. What is asserted is what the grid operator sees:
the operator CLI's ack from device `site`, the site's retained status and caps, the site's
telemetry tracking the target; and what the devices do with the site's signed commands."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.grid import cose
from tests.integration.conftest import KID, OPERATOR_KEY, Observer
from tests.support.agent_process import stop_process
from tests.support.site_fleet import Fleet, FleetDevice, PlantSink

ROOT = Path(__file__).parents[2]
SITE = "s1"
SITE_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
SITE_KID = "site-key"
#: four 1 kW devices, best J/TH first; one draws 4 % over its target (PSU losses)
DEVICES = {"d1": (20.0, 0.0), "d2": (25.0, 0.04), "d3": (30.0, 0.0), "d4": (35.0, 0.0)}


def _write_keys(folder: Path) -> dict[str, Path]:
    paths = {"grid_pub": folder / "grid.pub.pem", "grid": folder / "grid.pem",
             "site": folder / "site.pem"}
    paths["grid_pub"].write_bytes(cose.public_pem(OPERATOR_KEY.public_key()))
    paths["grid"].write_bytes(cose.private_pem(OPERATOR_KEY))
    paths["site"].write_bytes(cose.private_pem(SITE_KEY))
    paths["grid_pub"].chmod(0o644)
    for name in ("grid", "site"):
        paths[name].chmod(0o600)
    return paths


def _gridminer(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=30)


class SiteProcess:
    """`gridminer site` as a user starts it; `online` waits for its one line on stdout."""

    def __init__(self, broker_url: str, keys: dict[str, Path], state_dir: Path,
                 err: Path, *extra: str, site: str = SITE) -> None:
        self._err = open(err, "a")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "site", "--broker", broker_url, "--site", site,
             "--operator-key", str(keys["grid_pub"]), "--kid", KID, "--key", str(keys["site"]),
             "--key-kid", SITE_KID, "--state-dir", str(state_dir), "--ramp-w-s", "1500",
             *extra],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=self._err, text=True)
        self.lines: list[str] = []
        self._online = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            self._online.set()

    def wait_online(self, timeout_s: float = 20.0) -> str:
        assert self._online.wait(timeout_s), f"site not online; stdout {self.lines}"
        return self.lines[0]

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(5)
        self._close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            stop_process(self.proc, 10)
        self._close()

    def _close(self) -> None:
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._err.close()


@pytest.fixture
def site_rig(mosquitto, tmp_path) -> Iterator[dict[str, Any]]:
    keys = _write_keys(tmp_path)
    trusted = {SITE_KID.encode(): SITE_KEY.public_key()}
    fleet = Fleet()
    for name, (j_th, loss) in DEVICES.items():
        fleet.add(FleetDevice(name, PlantSink(100, 1000, 500, j_th, loss), mosquitto.url, SITE,
                              trusted, tmp_path / name))
    fleet.start()
    obs = Observer(mosquitto, [f"gridminer/{SITE}/site/status",
                               f"gridminer/{SITE}/site/telemetry", f"gridminer/{SITE}/+/ack"])
    sites: list[SiteProcess] = []

    def start_site(*extra: str, site: str = SITE) -> SiteProcess:
        controller = SiteProcess(mosquitto.url, keys, tmp_path / f"{site}-state",
                                 tmp_path / f"{site}.err", *extra, site=site)
        sites.append(controller)
        return controller

    try:
        yield {"keys": keys, "fleet": fleet, "obs": obs, "start_site": start_site,
               "broker": mosquitto}
    finally:
        for site in sites:
            site.stop()
        obs.close()
        fleet.stop()


def _setpoint(broker_url: str, keys: dict[str, Path], power_w: int) -> str:
    done = _gridminer("operator", "setpoint", "--broker", broker_url, "--site", SITE,
                      "--device", "site", "--power-w", str(power_w), "--for", "15m",
                      "--key", str(keys["grid"]), "--kid", KID)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _tracks(obs: Observer, power_w: float, tolerance_w: float, hold: int,
            timeout_s: float) -> dict[str, Any]:
    """Wait for `hold` site telemetry messages in a row with power within tolerance."""
    in_a_row = 0
    last: dict[str, Any] = {}

    def close_enough(topic: str, msg: Any, retained: bool) -> bool:
        nonlocal in_a_row, last
        if not topic.endswith("site/telemetry"):
            return False
        last = msg
        in_a_row = in_a_row + 1 if abs(msg.get("power_w", -1e9) - power_w) <= tolerance_w else 0
        return in_a_row >= hold

    obs.wait_for(close_enough, timeout_s=timeout_s)
    return last


def _rejections(obs: Observer) -> list[Any]:
    return [m for t, m, _ in obs.seen if t.endswith("/ack") and "/site/" not in t
            and isinstance(m, dict) and m.get("result") == "rejected"]


def _until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_the_operator_dispatches_the_site_like_one_device(site_rig) -> None:
    obs, fleet, keys = site_rig["obs"], site_rig["fleet"], site_rig["keys"]
    site = site_rig["start_site"]()
    line = site.wait_online()
    assert line.startswith(f"site {SITE} online as gridminer/{SITE}/site: 4 devices")
    _, status, _ = obs.wait_for(
        lambda t, m, r: t.endswith("site/status") and m.get("state") == "online", timeout_s=10)
    assert status["caps"] == {"min_w": 0, "max_w": 4000, "ramp_max_w_s": 1500, "chips": 16,
                              "chip_model": "site", "hashrate_max_ghs": status["caps"][
                                  "hashrate_max_ghs"]}
    assert status["caps"]["hashrate_max_ghs"] == pytest.approx(
        sum(1000 / j * 1000 for j, _ in DEVICES.values()), rel=1e-3)

    out = _setpoint(site_rig["broker"].url, keys, 1800)
    assert out.startswith("site: accepted, 1800 W")
    last = _tracks(obs, 1800, 18, hold=3, timeout_s=20)  # within 1 %, PSU losses trimmed away
    assert last["target_w"] == pytest.approx(1800)
    assert last["devices"] == 4 and last["devices_total"] == 4
    assert last["flex_up_w"] == pytest.approx(4000 - last["power_w"], abs=60)
    # the efficient machines carry the load; the least efficient one is put in standby
    sinks = {name: d.sink for name, d in fleet.devices.items()}
    assert sinks["d1"].target_w == pytest.approx(1000, abs=30)
    assert sinks["d4"].target_w == 0.0 and sinks["d4"].mode == "standby"
    assert sinks["d1"].target_w > sinks["d3"].target_w
    assert _rejections(obs) == []

    # a device goes offline: its share moves to the others at once
    fleet.kill("d1")
    _tracks(obs, 1800, 18, hold=3, timeout_s=20)
    assert sum(d.sink.power_w for d in fleet.devices.values()) == pytest.approx(1800, abs=40)

    # the curtail of the site goes to every device on the site-wide topic
    done = _gridminer("operator", "curtail", "--broker", site_rig["broker"].url, "--site", SITE,
                      "--device", "site", "--key", str(keys["grid"]), "--kid", KID)
    assert done.returncode == 0 and done.stdout.startswith("site: accepted"), done.stdout
    _until(lambda: all(d.sink.mode == "curtailed" for d in fleet.devices.values()), 10,
           "every device curtailed")
    assert _rejections(obs) == []
    # SIGTERM: the site says it is offline and exits 0; the devices hold their commands
    site.proc.send_signal(signal.SIGTERM)
    assert site.proc.wait(10) == 0
    obs.wait_for(lambda t, m, r: t.endswith("site/status") and m.get("state") == "offline",
                 timeout_s=5)


def test_a_killed_site_controller_continues_from_where_the_fleet_is(site_rig) -> None:
    obs, fleet, keys = site_rig["obs"], site_rig["fleet"], site_rig["keys"]
    site = site_rig["start_site"]()
    site.wait_online()
    _setpoint(site_rig["broker"].url, keys, 2500)
    _tracks(obs, 2500, 25, hold=2, timeout_s=20)
    site.kill()
    powers: list[float] = []
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            powers.append(sum(d.sink.power_w for d in fleet.devices.values()))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    again = site_rig["start_site"]()
    again.wait_online()
    # the active command survived: the site goes on tracking it with no new one
    last = _tracks(obs, 2500, 25, hold=3, timeout_s=20)
    sampling.set()
    sampler.join(2)
    assert last["setpoint_w"] == 2500
    assert max(powers) - min(powers) < 150, "the fleet stepped when the controller came back"
    assert _rejections(obs) == []  # its own seq went on above the killed one's
    out = _setpoint(site_rig["broker"].url, keys, 1200)
    assert out.startswith("site: accepted, 1200 W")
    _tracks(obs, 1200, 12, hold=2, timeout_s=20)


def test_two_sites_share_a_broker_under_client_ids_that_name_them(site_rig) -> None:
    """Every site controller is device `site`: on a broker two sites share, each connects under
    a client id of its own (`--client-id`), so neither takes the other's session over."""
    obs, keys = site_rig["obs"], site_rig["keys"]
    obs.client.subscribe([("gridminer/s2/site/status", 1)])
    first = site_rig["start_site"]("--client-id", f"{SITE}.site")
    second = site_rig["start_site"]("--client-id", "s2.site", site="s2")
    first.wait_online()
    obs.wait_for(lambda t, m, r: t == "gridminer/s2/site/status" and m.get("state") == "online",
                 timeout_s=20)
    _setpoint(site_rig["broker"].url, keys, 1800)
    _tracks(obs, 1800, 18, hold=3, timeout_s=20)
    assert first.proc.poll() is None and second.proc.poll() is None
    # no session was taken over: neither site's will ("offline") was published
    assert [m.get("state") for t, m, _ in obs.seen if t.endswith("site/status")
            and m.get("state") != "online"] == []


def test_a_site_whose_grid_link_gives_up_stops_dispatching_and_exits_3(
        site_rig, tmp_path, monkeypatch, capsys) -> None:
    """Another client keeps taking the site's client id (device `site`): the grid link gives up,
    and the controller, instead of dispatching a site the grid operator can no longer reach,
    exits 3 with one line naming the cause (a supervisor restarts it); the devices hold their
    last commands (bounded exp) meanwhile. `gridminer site` runs in this process (its signal
    handlers need the main thread) with the link's takeover back-off cut from 30 s to 1 s."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    import agent.cli.site as site_cli
    from agent.cli import main

    broker, obs, fleet, keys = site_rig["broker"], site_rig["obs"], site_rig["fleet"], \
        site_rig["keys"]
    build = site_cli.build

    def quick_to_give_up(args: Any) -> Any:
        controller = build(args)
        controller.link.settings.takeover_backoff_s = 1.0
        return controller

    monkeypatch.setattr(site_cli, "build", quick_to_give_up)
    intruder = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="site", protocol=mqtt.MQTTv5)
    intruder.reconnect_delay_set(0.1, 0.2)  # type: ignore[arg-type]
    returned = threading.Event()
    errors: list[BaseException] = []

    def operator_then_intruder() -> None:
        try:
            obs.wait_for(lambda t, m, r: t.endswith("site/status") and m.get("state") == "online",
                         timeout_s=15)
            _setpoint(broker.url, keys, 2000)
            _tracks(obs, 2000, 20, hold=2, timeout_s=20)
            intruder.connect_async("127.0.0.1", broker.port)
            intruder.loop_start()
            if not returned.wait(30):
                raise AssertionError("the site controller did not give up")
        except BaseException as exc:  # reported by the test; SIGTERM ends the controller
            errors.append(exc)
            os.kill(os.getpid(), signal.SIGTERM)

    driver = threading.Thread(target=operator_then_intruder, daemon=True)
    driver.start()
    try:
        code = main(["site", "--broker", broker.url, "--site", SITE,
                     "--operator-key", str(keys["grid_pub"]), "--kid", KID,
                     "--key", str(keys["site"]), "--key-kid", SITE_KID,
                     "--state-dir", str(tmp_path / "site-state"), "--ramp-w-s", "1500"])
    finally:
        returned.set()
        driver.join(10)
        intruder.loop_stop()
        intruder.disconnect()
    assert errors == []
    assert code == 3
    err = capsys.readouterr().err.splitlines()
    assert any(line.startswith("gridminer site: grid link: another client holds device id "
                               "'site'") for line in err), err
    # the devices hold the last commands the site sent them
    sinks = [d.sink for d in fleet.devices.values()]
    assert sum(s.target_w for s in sinks) == pytest.approx(2000, abs=100)
    assert all(s.ops[-1][0] in ("setpoint", "standby") for s in sinks)


def test_the_site_dispatches_the_fleet_emulator(site_rig, tmp_path) -> None:
    """The same with `gridminer fleet`: six virtual devices (real grid code and governor on a
    plant model) that trust the site's key; two of them are killed midway."""
    broker, obs, keys = site_rig["broker"], site_rig["obs"], site_rig["keys"]
    site_rig["fleet"].stop()  # the in-process devices leave; the emulator's come
    for name in DEVICES:
        obs.client.publish(f"gridminer/{SITE}/{name}/status", b"", qos=1, retain=True)
    pub = tmp_path / "site.pub.pem"
    pub.write_bytes(cose.public_pem(SITE_KEY.public_key()))
    pub.chmod(0o644)
    fleet = subprocess.Popen(
        [sys.executable, "-m", "agent", "fleet", "--devices", "6", "--broker", broker.url,
         "--site", SITE, "--operator-key", str(pub), "--kid", SITE_KID, "--seed", "2",
         "--state-dir", str(tmp_path / "emulated"), "--restart-spread-s", "0",
         "--status-period-s", "0"],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        text=True)
    try:
        assert fleet.stdout is not None and fleet.stdin is not None
        online = json.loads(fleet.stdout.readline())
        assert online["event"] == "online" and online["online"] == 6
        site = site_rig["start_site"]()
        assert ": 6 devices" in site.wait_online()
        _, status, _ = obs.wait_for(lambda t, m, r: t.endswith("site/status")
                                    and m.get("state") == "online", timeout_s=10)
        rating = status["caps"]["max_w"]
        assert rating == pytest.approx(online["rating_w"], rel=0.01)
        half = int(rating * 0.5)
        assert _setpoint(broker.url, keys, half).startswith(f"site: accepted, {half} W")
        _tracks(obs, half, 0.01 * rating, hold=3, timeout_s=30)
        fleet.stdin.write('{"op": "kill", "share": 0.34}\n')
        fleet.stdin.flush()
        assert len(json.loads(fleet.stdout.readline())["ids"]) == 2
        # they stop answering at once (their Wills come a keepalive later): the others make up
        obs.wait_for(lambda t, m, r: t.endswith("site/telemetry")
                     and m["power_w"] < half - 0.05 * rating, timeout_s=10)
        last = _tracks(obs, half, 0.01 * rating, hold=3, timeout_s=30)
        assert last["devices_total"] == 6
        assert _rejections(obs) == []
    finally:
        fleet.send_signal(signal.SIGTERM)
        try:
            fleet.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            fleet.kill()
            fleet.communicate()
