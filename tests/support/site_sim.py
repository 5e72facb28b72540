"""The site controller's loop with its MQTT sides faked, for the unit tests and
tests/bench/bench_site.py: the grid side (`FakeSiteLink`: the operator's signed commands in, the
site's acks, status and telemetry out) and the fleet (`FakeFleet`: simulated devices that answer
the site's commands, each checked against the device's caps, and publish status and telemetry),
stepped together on a FakeClock by `SiteSim`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cbor2
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.clock import FakeClock
from agent.grid.link import Inbound
from agent.site.controller import SiteController, SiteSettings, site_topics
from agent.site.sequence import SeqBlock
from agent.site.signer import CommandSigner

GRID = CommandSigner(Ed25519PrivateKey.from_private_bytes(bytes(range(32))), "grid")
SITE_SIGNER = CommandSigner(Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33))), "site-k")
TICK_S = 0.25


class FakeSiteLink:
    """The site's GridLink: inbound commands, what the session published, the status caps."""

    def __init__(self) -> None:
        self.topics = site_topics("s1")
        self.connected = True
        self.inbox: list[Inbound] = []
        self.sent: list[tuple[str, dict]] = []
        self.status: list[tuple[dict, str | None]] = []
        self.acked: list[int] = []
        self.on_inbound: Any = None
        self.started = False

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        self.started = False

    def drain(self) -> list[Inbound]:
        items, self.inbox = self.inbox, []
        return items

    def publish(self, topic, payload, qos=0, retain=False, correlation_data=None,
                user_properties=()) -> bool:
        self.sent.append((topic, cbor2.loads(payload)))
        return True

    def ack(self, msg: Inbound) -> None:
        self.acked.append(msg.mid)

    def set_status(self, caps, mode) -> None:
        self.status.append((caps, mode))

    def take_lost(self) -> int:
        return 0

    def acks(self) -> list[dict]:
        return [m for t, m in self.sent if "/ack" in t]

    def telemetry(self) -> list[dict]:
        return [m for t, m in self.sent if t.endswith("/telemetry")]


@dataclass
class SimDevice:
    min_w: float
    max_w: float
    ramp_w_s: float
    j_th: float
    power_w: float = 0.0
    target_w: float = 0.0
    moving_w_s: float = 0.0
    mode: str = "mining"
    online: bool = True
    answering: bool = True
    cap_w: float | None = None  # a thermal limit below max_w: it lags its setpoint


class FakeFleet:
    """The FleetClient's place: devices simulated here, commands checked against their caps."""

    def __init__(self, devices: dict[str, SimDevice]) -> None:
        self.devices = devices
        self.connected = True
        self.inbox: list[tuple[str, bytes, float]] = []
        self.commands: list[dict] = []
        self.published = 0
        self.clock: FakeClock | None = None  # stamps the acks (set by SiteSim)
        self.asked: list[str] = []  # devices whose status was asked for again

    def start(self) -> FakeFleet:
        return self

    def close(self) -> None:
        pass

    def drain(self) -> list[tuple[str, bytes, float]]:
        items, self.inbox = self.inbox, []
        return items

    def publish_command(self, signed: Any) -> None:
        cmd = dict(signed.command)
        self.commands.append(cmd)
        self.published += 1
        names = list(self.devices) if cmd["dev"] == "*" else [cmd["dev"]]
        for name in names:
            self.apply(name, cmd)

    def apply(self, name: str, cmd: dict) -> None:
        dev = self.devices[name]
        if not dev.online:
            return
        if cmd.get("ramp_w_s") is not None:
            assert 1 <= cmd["ramp_w_s"] <= dev.ramp_w_s, cmd
        if dev.mode == "tripped":
            return  # it takes commands, but stays at 0 W until its trip is cleared
        dev.moving_w_s = cmd.get("ramp_w_s") or dev.ramp_w_s
        op = cmd["op"]
        if op == "setpoint":
            assert dev.min_w <= cmd["power_w"] <= dev.max_w, cmd  # never out_of_range
        dev.target_w = {"setpoint": cmd.get("power_w"), "curtail": dev.min_w, "standby": 0.0,
                        "resume": dev.max_w}[op]
        dev.mode = {"curtail": "curtailed", "standby": "standby"}.get(op, "mining")
        if dev.answering:  # accepted, with the end of the move it starts (spec section 4)
            eta_ms = round(1000 * abs(dev.target_w - dev.power_w) / dev.moving_w_s)
            ack = {"v": 1, "id": cmd["id"], "seq": cmd["seq"], "result": "accepted",
                   "applied_w": dev.target_w, "eta_ms": eta_ms, "ts": 0}
            received_s = self.clock.monotonic() if self.clock is not None else 0.0
            self.inbox.append((f"gridminer/s1/{name}/ack", cbor2.dumps(ack), received_s))

    def ask_status(self, topic: str) -> None:
        """A subscription to one status topic: the broker sends the retained status again."""
        name = topic.split("/")[2]
        self.asked.append(name)
        if name in self.devices:
            self.status(name)

    def status(self, name: str) -> None:
        dev = self.devices[name]
        caps = {"min_w": dev.min_w, "max_w": dev.max_w, "ramp_max_w_s": dev.ramp_w_s,
                "chips": 4, "chip_model": "BM1370", "hashrate_max_ghs": dev.max_w / dev.j_th * 1e3}
        state = "online" if dev.online else "offline"
        self.inbox.append((f"gridminer/s1/{name}/status",
                           cbor2.dumps({"v": 1, "state": state, "bd": 1, "fw": "x", "caps": caps,
                                        "mode": dev.mode, "ts": 0}), 0.0))

    def advance(self, dt_s: float) -> None:
        for dev in self.devices.values():
            if not dev.online:
                continue
            goal = dev.target_w if dev.cap_w is None else min(dev.target_w, dev.cap_w)
            step = dev.moving_w_s * dt_s
            dev.power_w += max(-step, min(step, goal - dev.power_w))

    def telemetry(self, group: int = 0, groups: int = 1) -> None:
        """Telemetry of every device (or of one `group` of `groups`, so a fleet's messages are
        spread over the telemetry period as real devices' are)."""
        for index, (name, dev) in enumerate(self.devices.items()):
            if dev.online and dev.answering and index % groups == group:
                msg = {"v": 1, "seq": 0, "ts": 0, "mode": dev.mode, "power_w": dev.power_w,
                       "target_w": dev.target_w, "hashrate_ghs": dev.power_w / dev.j_th * 1e3,
                       "energy_wh": 0.0}
                self.inbox.append((f"gridminer/s1/{name}/telemetry", cbor2.dumps(msg), 0.0))

    @property
    def power_w(self) -> float:
        return sum(d.power_w for d in self.devices.values() if d.online)


def four_devices(power_w: float = 1000.0) -> dict[str, SimDevice]:
    """Four 100..1000 W devices at 500 W/s, d0 the most efficient; all mining at `power_w`."""
    return {f"d{i}": SimDevice(100, 1000, 500, 20 + 5 * i, power_w, power_w)
            for i in range(4)}


class SiteSim:
    def __init__(self, tmp_path, devices: dict[str, SimDevice] | None = None,
                 clock: FakeClock | None = None, fleet: FakeFleet | None = None,
                 **settings: Any) -> None:
        self.tmp_path = tmp_path
        self.clock = clock or FakeClock()
        self.fleet = fleet or FakeFleet(devices or four_devices())
        self.fleet.clock = self.clock
        self.link = FakeSiteLink()
        self.mid = 0
        self.seq = 0
        self.powers: list[float] = []
        options = {"ramp_w_s": 1000.0, **settings}
        self.controller = SiteController(
            SiteSettings("s1", **options), self.link, self.fleet, SITE_SIGNER,
            SeqBlock(tmp_path / "seq.json", SITE_SIGNER.kid), {b"grid": GRID.key.public_key()},
            tmp_path / "state", self.clock)
        self.controller.start()
        self._ticks = 0
        for name in self.fleet.devices:
            self.fleet.status(name)

    def send(self, op: str = "setpoint", signer: CommandSigner = GRID, topic: str | None = None,
             **build: Any) -> None:
        self.seq += 1
        self.mid += 1
        signed = signer.build("s1", "site", op, seq=self.seq,
                              now_ms=int(self.clock.time() * 1000), **build)
        self.link.inbox.append(Inbound(topic or signed.topic, signed.payload, None, None, 0.0,
                                       self.mid, 1))

    def run(self, seconds: float) -> None:
        for _ in range(round(seconds / TICK_S)):
            self.clock.advance(TICK_S)
            self.fleet.advance(TICK_S)
            self.fleet.telemetry(self._ticks % 4, 4)  # each device once a second
            self._ticks += 1
            self.controller.step()
            self.powers.append(self.fleet.power_w)

    def online(self) -> SiteSim:
        self.run(3.0)
        assert self.link.started and self.controller.online
        return self

    def last_ack(self) -> dict:
        return self.link.acks()[-1]
