"""A small fleet for site-controller tests: devices running the device's real grid code
(GridLink + GridSession) on a plant stand-in whose power moves toward its target at its ramp,
with an efficiency (J/TH) and an optional loss (power drawn above the target, as a PSU's)."""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.grid.link import GridLink, LinkSettings
from agent.grid.session import GridPolicy, GridSession


@dataclass
class Decision:
    applied_w: float
    limited_by: str | None = None
    eta_s: float | None = None


class PlantSink:
    """A miner stand-in: caps, a target clamped to them, power following at the ramp."""

    def __init__(self, min_w: float, max_w: float, ramp_w_s: float, j_th: float,
                 loss_frac: float = 0.0) -> None:
        self.min_w, self.max_w, self.ramp_max_w_s, self.j_th = min_w, max_w, ramp_w_s, j_th
        self.loss_frac = loss_frac
        self.target_w = max_w  # the default: full power
        self.ramp_w_s = ramp_w_s
        self.power_w = 0.0
        self.mode = "mining"
        self.energy_wh = 0.0
        self.ops: list[tuple[str, Any, Any]] = []
        self._last_s = time.monotonic()
        self._lock = threading.Lock()

    def apply(self, op: str, power_w: Any, ramp_w_s: Any) -> Decision:
        with self._lock:
            self.ops.append((op, power_w, ramp_w_s))
            self.ramp_w_s = min(self.ramp_max_w_s, ramp_w_s or self.ramp_max_w_s)
            self.target_w = {"curtail": self.min_w, "standby": 0.0,
                             "resume": self.max_w}.get(op, power_w)
            self.mode = {"curtail": "curtailed", "standby": "standby"}.get(op, "mining")
            eta = abs(self.target_w - self.power_w) / self.ramp_w_s
            return Decision(self.target_w, None, eta)

    def caps(self) -> dict[str, Any]:
        return {"min_w": self.min_w, "max_w": self.max_w, "ramp_max_w_s": self.ramp_max_w_s,
                "chips": 4, "chip_model": "BM1370",
                "hashrate_max_ghs": self.max_w / self.j_th * 1000}

    def advance(self) -> None:
        with self._lock:
            now = time.monotonic()
            dt, self._last_s = now - self._last_s, now
            goal = self.target_w * (1 + self.loss_frac)
            step = self.ramp_w_s * (1 + self.loss_frac) * dt
            self.power_w += max(-step, min(step, goal - self.power_w))
            self.energy_wh += self.power_w * dt / 3600

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"mode": self.mode, "power_w": self.power_w, "target_w": self.target_w,
                    "hashrate_ghs": self.power_w / (1 + self.loss_frac) / self.j_th * 1000,
                    "energy_wh": self.energy_wh}


class FleetDevice:
    """One device on the broker, serviced by `Fleet`'s thread."""

    def __init__(self, name: str, sink: PlantSink, broker_url: str, site: str,
                 keys: dict[bytes, Ed25519PublicKey], state_dir: Path) -> None:
        self.name = name
        self.sink = sink
        self.link = GridLink(LinkSettings(broker_url, site, name, state_dir=str(state_dir),
                                          reconnect_min_s=0.2, reconnect_max_s=1.0),
                             rng=random.Random(name))
        self.session = GridSession(self.link, sink, keys, state_dir, sink.snapshot,
                                   GridPolicy(restart_spread_s=0.0, telemetry_period_s=0.25),
                                   rng=random.Random(3))
        self.running = True


class Fleet:
    """Devices driven by one control thread (each session serviced every 20 ms)."""

    def __init__(self) -> None:
        self.devices: dict[str, FleetDevice] = {}
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="fleet", daemon=True)

    def add(self, device: FleetDevice) -> FleetDevice:
        with self._lock:
            self.devices[device.name] = device
        device.link.start()
        return device

    def start(self) -> Fleet:
        self._thread.start()
        return self

    def kill(self, name: str) -> None:
        """Take a device off the broker (its offline status published) and stop serving it."""
        with self._lock:
            device = self.devices.pop(name)
        device.link.stop()

    def _loop(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                devices = list(self.devices.values())
            try:
                for device in devices:
                    device.sink.advance()
                    device.session.service()
            except BaseException as exc:  # surfaced by the test
                self.errors.append(exc)
                return
            self._stop.wait(0.02)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for device in list(self.devices.values()):
            device.link.stop()
        assert not self.errors, self.errors
