"""The AxeOS-compatible read API: the JSON of ESP-Miner's `GET /api/system/info` and
`GET /api/system/asic`, and the page at `/` (it says "AxeOS-compatible", which is what pyasic
looks for), built from a `DeviceView`.

ESP-Miner's names and units: hashrate in GH/s, input voltage and current in mV and mA, core
voltage in mV, frequency in MHz, temperatures in degC, fan in % and RPM. A figure the agent does
not have is left out rather than made up (pyasic reads a missing key as "unknown"); the pool
keys pyasic's config reader requires (`stratumURL`, `stratumPort`, `stratumUser`,
`autofanspeed`) and the ones it multiplies for the expected hashrate (`smallCoreCount`,
`asicCount`, `frequency`) are always there.
"""

from __future__ import annotations

import html
from typing import Any

from agent.surface.view import DeviceView

#: modes in which the chain does no useful work (the governor's `mode`)
PAUSED_MODES = ("standby", "tripped", "starting")


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _scaled(value: float | None, factor: float, digits: int = 1) -> float | None:
    return None if value is None else round(value * factor, digits)


def system_info(view: DeviceView) -> dict[str, Any]:
    """`GET /api/system/info`."""
    ident = view.identity
    info: dict[str, Any] = {
        "ASICModel": ident.family,
        "asicCount": ident.chips,
        "smallCoreCount": ident.small_cores,
        "hostname": ident.hostname,
        "macAddr": ident.mac,
        "version": ident.version,
        "uptimeSeconds": int(view.uptime_s),
        "stratumURL": ident.pool_host,
        "stratumPort": ident.pool_port,
        "stratumUser": ident.pool_user,
        "autofanspeed": 1,  # the governor's fan loop sets the fan
        "frequency": _rounded(view.freq_mhz, 2) or 0.0,
        "miningPaused": view.mode in PAUSED_MODES,
        "sharesAccepted": int(view.shares_total.get("accepted", 0)),
        "sharesRejected": int(view.shares_total.get("rejected", 0)),
        "totalHashes": view.hashes_total,
    }
    optional = {
        "hashRate": _rounded(view.hashrate_ghs, 3),
        "expectedHashrate": _rounded(view.expected_hashrate_ghs, 3),
        "power": _rounded(view.power_w, 3),
        "voltage": _scaled(view.input_v, 1000.0),
        "current": _scaled(view.input_a, 1000.0),
        "coreVoltageActual": _rounded(view.vcore_mv, 0),
        "temp": _rounded(view.chip_temp_c, 2),
        "vrTemp": _rounded(view.vr_temp_c, 2),
        "fanspeed": _rounded(view.fan_pct, 1),
        "fanrpm": _rounded(view.fan_rpm, 0),
        "maxPower": _rounded(view.max_w, 1),
    }
    info.update({k: v for k, v in optional.items() if v is not None})
    return info


def system_asic(view: DeviceView) -> dict[str, Any]:
    """`GET /api/system/asic`."""
    ident = view.identity
    return {"ASICModel": ident.family, "asicCount": ident.chips,
            "deviceModel": f"gridminer {ident.chips}x{ident.family}"}


def index_page(view: DeviceView | None) -> str:
    """The page at `/`: what this is (AxeOS-compatible, read-only) and where the data is."""
    if view is None:
        what = "starting"
    else:
        what = html.escape(f"{view.identity.chips} x {view.identity.family} on "
                           f"{view.identity.hostname}, {view.mode}")
    return ("<!doctype html>\n<html><head><meta charset=\"utf-8\">"
            "<title>gridminer (AxeOS-compatible API)</title></head>\n<body>"
            "<h1>gridminer</h1>"
            f"<p>{what}</p>"
            "<p>Read-only AxeOS-compatible API: <a href=\"/api/system/info\">/api/system/info</a>, "
            "<a href=\"/api/system/asic\">/api/system/asic</a>; Prometheus metrics: "
            "<a href=\"/metrics\">/metrics</a>. Nothing here changes the miner."
            "</p></body></html>\n")
