"""The home side on the control thread (a runtime tick hook): what the home broker sent is
handled (Home Assistant's birth, the owner's commands, the meter), the device is announced to
Home Assistant on every connection and birth (or removed, with discovery off), the local target
is decided and applied, and the state goes out every `state_period_s` and after each command.

Every message is handled on its own: a bad one is refused with a logged reason (rate-limited)
and counted in `counters`, and the others are served.
"""

from __future__ import annotations

import json
import logging
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.control.alerts import AlertLog
from agent.home import discovery
from agent.home.discovery import OFF, ON, Topics
from agent.home.link import Message
from agent.home.meter import MeterError, MeterReader
from agent.home.target import LocalTarget
from agent.surface.view import DeviceView

log = logging.getLogger("gridminer.home")

ANNOUNCE_SPREAD_S = 2.0  # after Home Assistant's birth, announce within this (its advice)


@dataclass(frozen=True)
class HomeSettings:
    device_id: str
    name: str
    topics: Topics
    discovery: bool = True  # False: the device is removed from Home Assistant
    local_control: bool = False
    meter_topic: str | None = None
    state_period_s: float = 5.0


class HomeSession:
    """See the module docstring. `link` is an `agent.home.link.HomeLink` (or a fake)."""

    def __init__(self, link: Any, settings: HomeSettings, latest: Callable[[], DeviceView | None],
                 target: LocalTarget, clock: Any, reader: MeterReader | None = None,
                 rng: random.Random | None = None) -> None:
        self.link = link
        self.settings = settings
        self.latest = latest
        self.target = target
        self.reader = reader or MeterReader()
        self.rng = rng or random.Random()
        self.counters: Counter[str] = Counter()
        self._alerts = AlertLog(log, clock)
        self._connects_seen = 0
        self._announce_due_s: float | None = None
        self._state_due_s = 0.0

    # ---- the tick -------------------------------------------------------------------------
    def service(self, now_s: float) -> None:
        view = self.latest()
        for msg in self.link.drain():
            self._handle(now_s, msg, view)
        if self.link.connects != self._connects_seen and view is not None:
            self._connects_seen = self.link.connects
            self._announce_due_s = now_s
        self.target.service(now_s, view.power_w if view is not None else None)
        if view is None or not self.link.connected:
            return
        if self._announce_due_s is not None and now_s >= self._announce_due_s:
            self._announce_due_s = None
            self._announce(view)
            self._state_due_s = now_s
        if now_s >= self._state_due_s:
            self._state_due_s = now_s + self.settings.state_period_s
            self._publish_state(view)

    # ---- inbound --------------------------------------------------------------------------
    def _handle(self, now_s: float, msg: Message, view: DeviceView | None) -> None:
        t = self.settings.topics
        try:
            if msg.topic == t.birth:
                if msg.payload.strip() == b"online":
                    self._announce_due_s = now_s + self.rng.uniform(0.0, ANNOUNCE_SPREAD_S)
            elif msg.topic == self.settings.meter_topic:
                export_w = self.reader.export_w(msg.payload)
                follower = self.target.follower
                if follower is not None:
                    follower.observe(now_s, export_w, view.power_w if view else None)
                self.counters["meter"] += 1
            elif msg.topic in (t.set_power, t.set_mining) and self.settings.local_control:
                self._command(msg)
                self._state_due_s = now_s  # show the owner the new state at once
            else:
                self.counters["ignored"] += 1
        except MeterError as exc:
            self.counters["meter_refused"] += 1
            self._alerts.warn("meter", f"meter reading on {msg.topic} refused: {exc}")
        except ValueError as exc:
            self.counters["command_refused"] += 1
            self._alerts.warn("command", f"local command on {msg.topic} refused: {exc}")

    def _command(self, msg: Message) -> None:
        text = msg.payload.decode("utf-8", "replace").strip()
        if msg.topic == self.settings.topics.set_mining:
            if text not in (ON, OFF):
                raise ValueError(f"{text[:20]!r} is neither {ON} nor {OFF}")
            self.target.mining = text == ON
            log.info("local control: mining %s", text)
        else:
            try:
                power_w = float(text)
            except ValueError:
                raise ValueError(f"{text[:20]!r} is not a power in W") from None
            if power_w != power_w or power_w in (float("inf"), float("-inf")):
                raise ValueError(f"{text[:20]!r} is not a power in W")
            kept = self.target.set_limit(power_w)
            log.info("local control: power limit %.1f W (asked %.1f W)", kept, power_w)
        self.counters["commands"] += 1

    # ---- outbound -------------------------------------------------------------------------
    def _announce(self, view: DeviceView) -> None:
        s = self.settings
        if not s.discovery:
            self.link.publish(s.topics.discovery, b"", retain=True)  # removes the device
            log.info("Home Assistant discovery off: device %s removed", s.device_id)
            return
        payload = discovery.config_payload(
            view, s.device_id, s.name, s.topics,
            follows_surplus=self.target.follower is not None, local_control=s.local_control)
        self.link.publish(s.topics.discovery, payload, retain=True)
        self.counters["announced"] += 1

    def _publish_state(self, view: DeviceView) -> None:
        follower = self.target.follower
        doc = discovery.state(view, control=self.target.controller,
                              surplus_w=follower.surplus_w if follower is not None else None,
                              power_limit_w=self.target.limit_w or self.target.max_w,
                              mining=self.target.mining)
        self.link.publish(self.settings.topics.state, json.dumps(doc, separators=(",", ":")))
