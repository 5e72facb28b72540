"""Home Assistant MQTT discovery, device-based: one retained config on
`<prefix>/device/<device_id>/config` naming the device, its origin, the shared state and
availability topics and every component, and the JSON state message the components read.

Sensors: power (W), energy (kWh, total_increasing), hottest chip and board temperature (degC),
hashrate (TH/s; Home Assistant has no device class for it), mode and who sets the target
(enums), the power setpoint (W), shares accepted and rejected, and the surplus the home meter
leaves over (W) when the agent follows it. With local control enabled, a `number` for the power
limit (W, within the envelope) and a `switch` for mining. A figure the agent does not have is
JSON null, which Home Assistant shows as unknown. An empty retained config removes the device.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from agent.grid.contract import MODES
from agent.surface.view import DeviceView

ORIGIN = {"name": "gridminer"}
#: who sets the governor's target (`agent.home.target`)
CONTROLLERS = ("grid", "local", "surplus", "default")
ON, OFF = "ON", "OFF"


@dataclass(frozen=True)
class Topics:
    """The device's topics on the home broker."""

    discovery: str  # <prefix>/device/<device_id>/config
    birth: str  # <prefix>/status: Home Assistant's online/offline
    state: str
    availability: str
    set_power: str  # the number's commands (W)
    set_mining: str  # the switch's commands (ON/OFF)

    @classmethod
    def for_device(cls, prefix: str, device_id: str, base: str) -> Topics:
        return cls(discovery=f"{prefix}/device/{device_id}/config", birth=f"{prefix}/status",
                   state=f"{base}/state", availability=f"{base}/availability",
                   set_power=f"{base}/set/power_w", set_mining=f"{base}/set/mining")


def _sensor(name: str, field: str, unit: str | None = None, device_class: str | None = None,
            state_class: str | None = "measurement", **extra: Any) -> dict[str, Any]:
    config: dict[str, Any] = {"platform": "sensor", "name": name,
                              "value_template": f"{{{{ value_json.{field} }}}}"}
    for k, v in (("unit_of_measurement", unit), ("device_class", device_class),
                 ("state_class", state_class)):
        if v is not None:
            config[k] = v
    config.update(extra)
    return config


def components(*, follows_surplus: bool, local_control: bool, min_w: float,
               max_w: float, topics: Topics) -> dict[str, dict[str, Any]]:
    """The components by object id (without `unique_id`, which `config` adds)."""
    cmps: dict[str, dict[str, Any]] = {
        "power": _sensor("Power", "power_w", "W", "power"),
        "energy": _sensor("Energy", "energy_kwh", "kWh", "energy", "total_increasing"),
        "chip_temp": _sensor("Hottest chip", "chip_temp_c", "°C", "temperature"),
        "board_temp": _sensor("Board temperature", "board_temp_c", "°C", "temperature"),
        "hashrate": _sensor("Hashrate", "hashrate_ths", "TH/s"),
        "setpoint": _sensor("Power setpoint", "target_w", "W", "power"),
        "shares_accepted": _sensor("Shares accepted", "shares_accepted",
                                   state_class="total_increasing"),
        "shares_rejected": _sensor("Shares rejected", "shares_rejected",
                                   state_class="total_increasing"),
        "mode": _sensor("Mode", "mode", device_class="enum", state_class=None,
                        options=list(MODES)),
        "control": _sensor("Target set by", "control", device_class="enum", state_class=None,
                           options=list(CONTROLLERS), entity_category="diagnostic"),
    }
    if follows_surplus:
        cmps["surplus"] = _sensor("Solar surplus", "surplus_w", "W", "power")
    if local_control:
        cmps["power_limit"] = {
            "platform": "number", "name": "Power limit", "command_topic": topics.set_power,
            "value_template": "{{ value_json.power_limit_w }}", "min": float(min_w),
            "max": float(max_w), "step": 1, "mode": "box", "unit_of_measurement": "W",
            "device_class": "power", "entity_category": "config"}
        cmps["mining"] = {
            "platform": "switch", "name": "Mining", "command_topic": topics.set_mining,
            "value_template": "{{ value_json.mining }}", "payload_on": ON, "payload_off": OFF,
            "state_on": ON, "state_off": OFF}
    return cmps


def config(view: DeviceView, device_id: str, name: str, topics: Topics, *,
           follows_surplus: bool, local_control: bool) -> dict[str, Any]:
    """The device discovery config."""
    ident = view.identity
    cmps = components(follows_surplus=follows_surplus, local_control=local_control,
                      min_w=view.min_w or 0.0, max_w=view.max_w or 0.0, topics=topics)
    for object_id, cmp in cmps.items():
        cmp["unique_id"] = f"{device_id}_{object_id}"
    return {
        "device": {"identifiers": [f"gridminer_{device_id}"], "name": name,
                   "manufacturer": "gridminer", "model": f"{ident.chips} x {ident.family}",
                   "sw_version": ident.version, "connections": [["mac", ident.mac.lower()]]},
        "origin": {**ORIGIN, "sw_version": ident.version},
        "availability": [{"topic": topics.availability}],
        "state_topic": topics.state,
        "qos": 1,
        "components": cmps,
    }


def config_payload(*args: Any, **kwargs: Any) -> str:
    """`config` as the JSON text to publish."""
    return json.dumps(config(*args, **kwargs), separators=(",", ":"))


def state(view: DeviceView, *, control: str, surplus_w: float | None,
          power_limit_w: float | None, mining: bool) -> dict[str, Any]:
    """The state message every component reads."""

    def rounded(value: float | None, digits: int) -> float | None:
        return None if value is None else round(value, digits)

    return {
        "power_w": rounded(view.power_w, 1),
        "energy_kwh": round(view.energy_j_total / 3.6e6, 6),
        "chip_temp_c": rounded(view.chip_temp_c, 1),
        "board_temp_c": rounded(view.board_temp_c, 1),
        "hashrate_ths": rounded(None if view.hashrate_ghs is None
                                else view.hashrate_ghs / 1000.0, 4),
        "target_w": rounded(view.target_w, 1),
        "shares_accepted": int(view.shares_total.get("accepted", 0)),
        "shares_rejected": int(view.shares_total.get("rejected", 0)),
        "mode": view.mode,
        "control": control,
        "surplus_w": rounded(surplus_w, 1),
        "power_limit_w": rounded(power_limit_w, 1),
        "mining": ON if mining else OFF,
    }
