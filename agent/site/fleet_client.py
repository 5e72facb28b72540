"""The site controller's MQTT 5 client toward its devices: the operator client (signed commands
with Message Expiry) kept connected for good: it connects in the background, reconnects, and
subscribes again to the fleet's status, telemetry and acks (and the meter) on every connect."""

from __future__ import annotations

import queue
from typing import Any

from paho.mqtt.subscribeoptions import SubscribeOptions

from agent.site.client import BrokerOptions, Operator


class FleetClient(Operator):
    """An `Operator` that stays up: `start()` returns at once, `drain()` hands over what came."""

    def __init__(self, options: BrokerOptions, topics: list[str]) -> None:
        super().__init__(options)
        self.topics = list(topics)
        self.connects = 0
        self._client.reconnect_delay_set(0.5, 5)  # type: ignore[arg-type]
        self._client.on_disconnect = self._on_disconnect

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def start(self) -> FleetClient:
        """Connect in the background; paho's thread keeps reconnecting."""
        self._client.connect_async(self.address.host, self.address.port, keepalive=15,
                                   clean_start=True)
        self._client.loop_start()
        return self

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        super()._on_connect(client, userdata, flags, reason, props)
        if reason.is_failure:
            return
        self.connects += 1
        client.subscribe([(t, SubscribeOptions(qos=1)) for t in self.topics])

    def ask_status(self, topic: str) -> None:
        """Subscribe to one device's status topic again: the broker sends its retained status
        anew (a burst of retained statuses beyond the broker's queue for this client, Mosquitto's
        `max_queued_messages`, is dropped, and a device republishes only when its status
        changes)."""
        self._client.subscribe(topic, options=SubscribeOptions(qos=1))

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any,
                       props: Any) -> None:
        self._connected.clear()

    def drain(self, limit: int = 100_000) -> list[tuple[str, bytes, float]]:
        """What arrived since the last call: (topic, payload, monotonic receive time)."""
        out: list[tuple[str, bytes, float]] = []
        while len(out) < limit:
            try:
                topic, payload, _, received_s = self.messages.get_nowait()
            except queue.Empty:
                break
            out.append((topic, payload, received_s))
        return out
