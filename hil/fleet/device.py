"""One virtual device: the agent's grid session and governor on a lumped plant, one MQTT link.

What runs is the agent's own code: `GridLink` (in its external-loop mode: the fleet's loop drives
the socket), `GridSession` (command checks, signatures, replay state in the device's state folder,
acks, status, telemetry, fallback), the `Governor` with its `Envelope`, and the runtime's
`GovernorSink` and `readout`. In place of the chain driver and the board link there is the
`LumpedPlant`; `tick(now_s)` is the runtime's control tick (read the board, ask the governor,
actuate), `service(now_s)` its pass of the grid session (`serve_commands(now_s)` that pass's
first step alone). Every method runs on the fleet's loop
thread.
"""

from __future__ import annotations

import functools
import json
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.chain.board import BoardSample
from agent.clock import SystemClock
from agent.config import AgentConfig, config_from_mapping
from agent.control import readout
from agent.control.envelope import Actuation
from agent.control.governor import Governor
from agent.control.runtime import VCORE_SETTLE_S, GovernorSink
from agent.grid.link import GridLink, LinkSettings
from agent.grid.session import GridPolicy, GridSession
from hil.fleet.mix import DeviceSpec
from hil.fleet.plant import LumpedPlant

log = logging.getLogger(__name__)


@dataclass
class ChainFigures:
    """What the chain driver would tell the governor and telemetry (agent.chain.stats)."""

    state: str
    hashrate_ghs: float
    hw_errors: int
    chips_ok: int
    reset_pending: str | None = None


@functools.cache
def _config(table_key: str) -> AgentConfig:
    """The agent's configuration of a model (the same for each of its units)."""
    return config_from_mapping(json.loads(table_key))


class VirtualDevice:
    """See the module docstring. `settings` is the device's link (its `device` is the id)."""

    def __init__(self, spec: DeviceSpec, settings: LinkSettings,
                 keys: dict[bytes, Ed25519PublicKey], policy: GridPolicy, rng: random.Random,
                 control_period_s: float = 1.0) -> None:
        self.spec = spec
        self.period_s = control_period_s
        clock = SystemClock()
        self.config = _config(spec.config_key(control_period_s))
        self.governor = Governor(self.config, clock)
        self.plant = LumpedPlant(spec.family, spec.chips, spec.power_gain,
                                 random.Random(rng.getrandbits(64)))
        self.link = GridLink(settings, clock=clock, rng=random.Random(rng.getrandbits(64)),
                             external_loop=True)
        Path(settings.state_dir).mkdir(parents=True, exist_ok=True)
        self.session = GridSession(self.link, GovernorSink(self.governor, self.request_tick),
                                   keys, settings.state_dir, self.snapshot, policy, clock,
                                   random.Random(rng.getrandbits(64)))
        self.actuation: Actuation | None = None
        self.sample: BoardSample | None = None
        self.energy_wh = 0.0
        self.tick_due_s: float | None = None  # the next control tick (monotonic)
        self.timer_s: float | None = None  # when the fleet loop's timer for it runs
        self.tick_requested = False  # a command changed the target: tick at once
        self._last_tick_s: float | None = None

    @property
    def device(self) -> str:
        return self.spec.device

    # ---- the control tick -----------------------------------------------------------------
    def request_tick(self) -> None:
        self.tick_requested = True

    def tick(self, now_s: float) -> float:
        """One control period: the plant up to now, its sample to the governor, the governor's
        actuation to the plant. Returns when the next tick is due."""
        self.tick_requested = False
        last = self._last_tick_s
        self._last_tick_s = now_s
        plant = self.plant
        plant.step(0.0 if last is None else now_s - last)
        sample = plant.sample(now_s)
        if self.sample is not None and self.sample.power_w is not None and last is not None:
            self.energy_wh += self.sample.power_w * min(now_s - last, 5.0) / 3600.0
        self.sample = sample
        reading: Any = sample  # agent.control.sensors.BoardReading
        act = self.governor.update(now_s, reading, self._chain(now_s))
        self.actuation = act
        on = act.chain_power_on and plant.trip_reason is None
        plant.chain_powered = on
        plant.vcore_set_mv = act.vcore_mv if on else 0.0
        plant.freq_mhz = act.freq_mhz if on else 0.0
        plant.fan_pct = act.fan_pct
        plant.actuated()
        self.governor.applied(freq_mhz=act.freq_mhz if on else None, vcore_mv=act.vcore_mv,
                              fan_pct=act.fan_pct, chain_power_on=on)
        if "vcore_first" in act.limits:
            return now_s + VCORE_SETTLE_S  # the frequency follows once the voltage settled
        due = self.tick_due_s if self.tick_due_s is not None else now_s
        return due + self.period_s if due + self.period_s > now_s else now_s + self.period_s

    def _chain(self, now_s: float) -> ChainFigures:
        plant = self.plant
        state = "mining" if plant.hashing else ("starting" if plant.chain_powered else "idle")
        return ChainFigures(state, plant.hashrate_ghs(), 0,
                            self.spec.chips if plant.chain_powered else 0)

    def serve_commands(self, now_s: float) -> None:
        """The grid session's commands only: checked, persisted, applied, acked."""
        self.session.serve_commands(now_s)

    def service(self, now_s: float) -> float:
        """The grid session's pass (commands, acks, telemetry); seconds until it is due again."""
        return self.session.service(now_s)

    # ---- figures --------------------------------------------------------------------------
    @property
    def fresh(self) -> bool:
        """The latest sample is a current measurement (no older than a tick and the envelope's
        `sensor_stale_s`), as the runtime judges its board link's."""
        if self.sample is None:
            return False
        age_s = time.monotonic() - self.sample.ts_s
        return age_s <= self.period_s + self.governor.sensor_stale_s

    def snapshot(self) -> dict[str, Any]:
        """The telemetry snapshot, as the runtime builds it (agent.control.readout)."""
        sample, plant = self.sample, self.plant
        chain = self._chain(sample.ts_s if sample is not None else 0.0)
        return readout.snapshot(self.actuation, chain, readout.measured(sample, self.fresh),
                                freq_mhz=plant.freq_mhz, energy_wh=self.energy_wh,
                                fresh=self.fresh)

    @property
    def power_w(self) -> float:
        """The true power drawn now (what a meter at the device would show)."""
        return self.plant.power_w
