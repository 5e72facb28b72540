"""The home of a `[home]` scenario (hil.scenario.HomeSpec): a roof, a house and the meter at its
grid connection. `HomeMeter.step` is called by the rig every truth sample: it records the roof,
the house, the miner's true power and the grid's, and publishes the meter's reading on the rig's
broker every `meter_interval_s` (scenario seconds) the way a Shelly Pro EM does
(`total_act_power`, W, import positive), except while the scenario keeps it silent."""

from __future__ import annotations

import json
import math
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.grid.broker import parse_broker_url, release_sockets
from hil.gridsim import SurplusCurve
from hil.scenario import HomeSpec

METER_TOPIC = "shellyproem50-hil/status/em1:0"
METER_FIELD = "total_act_power"


class HomeMeter:
    """The home's figures over the run and its meter on the broker (see the module docstring)."""

    def __init__(self, spec: HomeSpec, duration_s: float, speed: float, rated_w: float,
                 broker_url: str) -> None:
        self.spec = spec
        self.duration_s = duration_s
        self.speed = speed
        self.rated_w = rated_w
        self.curve = SurplusCurve(spec.day)
        self.record: dict[str, list[float]] = {
            "t_s": [], "hour": [], "roof_w": [], "house_w": [], "miner_w": [], "grid_w": []}
        self.published = 0
        self._next_s: float | None = None
        address = parse_broker_url(broker_url)
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="hil-home-meter")
        self._client.connect(address.host, address.port)
        self._client.loop_start()

    def hour(self, t_sc: float) -> float:
        """The hour of the home's day at scenario time `t_sc`."""
        day = self.spec.day
        k = min(1.0, max(0.0, t_sc / self.duration_s))
        return day.day_start_h + k * (day.day_end_h - day.day_start_h)

    def roof_w(self, hour: float) -> float:
        day = self.spec.day
        return self.rated_w * day.solar_pct / 100.0 * self.curve.solar(hour) \
            * self.curve.cloud_factor(hour)

    def house_w(self) -> float:
        return self.rated_w * self.spec.day.demand_pct / 100.0

    def silent(self, t_sc: float) -> bool:
        at = self.spec.silent_at_s
        return at is not None and at <= t_sc < at + self.spec.silent_s

    def step(self, t_s: float, t_sc: float, miner_w: float | None) -> None:
        """One sample at rig time `t_s` (scenario time `t_sc`) with the miner's true power."""
        hour = self.hour(t_sc)
        roof, house = self.roof_w(hour), self.house_w()
        miner = miner_w if miner_w is not None and math.isfinite(miner_w) else 0.0
        grid = house + miner - roof
        for name, value in (("t_s", t_s), ("hour", hour), ("roof_w", roof), ("house_w", house),
                            ("miner_w", miner), ("grid_w", grid)):
            self.record[name].append(round(value, 3))
        if self._next_s is None:
            self._next_s = t_s
        if t_s < self._next_s:
            return
        self._next_s += self.spec.meter_interval_s / self.speed
        if not self.silent(t_sc):
            payload = json.dumps({"id": 0, METER_FIELD: round(grid, 1)})
            self._client.publish(METER_TOPIC, payload, qos=0)
            self.published += 1

    def report(self) -> dict[str, Any]:
        """What the recording keeps (hil.report.home reads it)."""
        return {**self.record, "meter_topic": METER_TOPIC, "published": self.published,
                "silent": [self.spec.silent_at_s, self.spec.silent_s]
                if self.spec.silent_at_s is not None else None}

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
        release_sockets(self._client)
