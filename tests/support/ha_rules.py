"""Home Assistant's documented rules for MQTT device discovery, encoded for the tests: the keys
each platform requires (home-assistant.io `source/_integrations/mqtt.markdown`, `number.mqtt`,
`switch.mqtt`) and the units and state classes each sensor device class accepts (Home
Assistant's `homeassistant/components/sensor/const.py`: DEVICE_CLASS_UNITS,
DEVICE_CLASS_STATE_CLASSES), for the device classes a miner uses."""

from __future__ import annotations

import re
from typing import Any

#: units a numeric sensor device class accepts (DEVICE_CLASS_UNITS)
HA_UNITS = {
    "power": {"mW", "W", "kW", "MW", "GW", "TW"},
    "energy": {"J", "kJ", "MJ", "GJ", "mWh", "Wh", "kWh", "MWh", "GWh", "TWh", "cal", "kcal",
               "Mcal", "Gcal"},
    "temperature": {"°C", "°F", "K"},
    "voltage": {"V", "mV", "µV", "kV", "MV"},
    "current": {"A", "mA"},
    "frequency": {"Hz", "kHz", "MHz", "GHz"},
}
#: state classes each device class accepts (DEVICE_CLASS_STATE_CLASSES); enum takes none
HA_STATE_CLASSES = {
    "power": {"measurement"}, "energy": {"total", "total_increasing"},
    "temperature": {"measurement"}, "voltage": {"measurement"}, "current": {"measurement"},
    "frequency": {"measurement"}, "enum": set(),
}
STATE_CLASSES = {"measurement", "measurement_angle", "total", "total_increasing"}
NUMBER_DEVICE_CLASSES = {"power"}  # the ones this device uses; units as the sensor's
ENTITY_CATEGORIES = {"config", "diagnostic"}
#: platform: keys it requires (device-based discovery: every entity has `unique_id`)
HA_REQUIRED = {
    "sensor": {"platform", "unique_id"},  # state_topic may be shared at the root
    "number": {"platform", "unique_id", "command_topic"},
    "switch": {"platform", "unique_id", "command_topic"},
}
OBJECT_ID = re.compile(r"^[A-Za-z0-9_-]+$")


def ha_problems(topic: str, config: dict[str, Any]) -> list[str]:
    """What Home Assistant would refuse or misread in a device discovery message."""
    out = []
    m = re.fullmatch(r"([^/#+]+)/device/([^/]+)/config", topic)
    if m is None or not OBJECT_ID.match(m.group(2)):
        out.append(f"topic {topic} is not <prefix>/device/<object_id>/config")
    device, origin = config.get("device") or config.get("dev"), config.get("origin") or \
        config.get("o")
    if not device or not (device.get("identifiers") or device.get("connections")):
        out.append("device: needs identifiers or connections")
    if not origin or not origin.get("name"):
        out.append("origin: needs a name")
    cmps = config.get("components") or config.get("cmps") or {}
    if not cmps:
        out.append("no components")
    ids = [c.get("unique_id") for c in cmps.values()]
    if len(set(ids)) != len(ids):
        out.append("unique_id repeated")
    for oid, c in cmps.items():
        platform = c.get("platform")
        if not OBJECT_ID.match(oid):
            out.append(f"{oid}: bad object id")
        if platform not in HA_REQUIRED:
            out.append(f"{oid}: unexpected platform {platform}")
            continue
        missing = HA_REQUIRED[platform] - set(c)
        if missing:
            out.append(f"{oid}: missing {sorted(missing)}")
        if platform == "sensor" and "state_topic" not in c and "state_topic" not in config:
            out.append(f"{oid}: no state_topic")
        dc, unit, sc = c.get("device_class"), c.get("unit_of_measurement"), c.get("state_class")
        if c.get("entity_category") not in (None, *ENTITY_CATEGORIES):
            out.append(f"{oid}: entity_category {c['entity_category']}")
        if platform == "sensor":
            if sc is not None and sc not in STATE_CLASSES:
                out.append(f"{oid}: state_class {sc}")
            if dc == "enum":
                if unit is not None or sc is not None or not c.get("options"):
                    out.append(f"{oid}: an enum takes options, no unit, no state_class")
            elif dc is not None:
                if dc not in HA_UNITS:
                    out.append(f"{oid}: device_class {dc} not in the table")
                elif unit not in HA_UNITS[dc]:
                    out.append(f"{oid}: unit {unit} is not one of {dc}'s")
                if sc is not None and sc not in HA_STATE_CLASSES[dc]:
                    out.append(f"{oid}: state_class {sc} is not one of {dc}'s")
        if platform == "number":
            if dc not in NUMBER_DEVICE_CLASSES or unit not in HA_UNITS[dc]:
                out.append(f"{oid}: number device_class/unit {dc}/{unit}")
            if not c.get("min", 1) < c.get("max", 100) or c.get("step", 1) < 0.001:
                out.append(f"{oid}: min/max/step")
            if c.get("mode", "auto") not in ("auto", "box", "slider"):
                out.append(f"{oid}: mode")
    return out
