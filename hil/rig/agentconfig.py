"""The agent's config file for a rig run (DIR/rig/agent.toml): the rig's ports, broker and key,
with the scenario's `[device.agent.SECTION]` overrides merged on top, written by a small TOML
writer (`dump_toml`) whose output is read back before it is used.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from hil.rig.home import METER_FIELD, METER_TOPIC
from hil.rig.options import DEVICE, KID, PREFIX, SITE
from hil.scenario import Scenario


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`base` with `extra`'s keys on top, tables merged key by key."""
    out = dict(base)
    for k, v in extra.items():
        nested = isinstance(v, dict) and isinstance(out.get(k), dict)
        out[k] = deep_merge(out[k], v) if nested else v
    return out


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {value!r} as TOML")


def dump_toml(data: dict[str, Any]) -> str:
    """A two-level TOML writer (sections of scalars, lists and inline tables; a list of tables
    is an array of tables, [[section]])."""
    lines = []
    for section, tables in data.items():
        array = isinstance(tables, list)
        for table in tables if array else [tables]:
            lines.append(f"[[{section}]]" if array else f"[{section}]")
            for key, value in table.items():
                lines.append(f"{key} = {_toml_value(value)}")
            lines.append("")
    text = "\n".join(lines)
    tomllib.loads(text)  # what we write must read back
    return text


def write_agent_config(scenario: Scenario, work: Path, *, broker_url: str, pub: Path, chain: str,
                       board: str, nonce_difficulty: float | None, log_level: str,
                       pools: list[dict[str, Any]] | None = None) -> Path:
    """WORK/agent.toml for the agent of this run: its links, the broker, the operator key, and
    the lab pools to mine to (`pools`, [[pool]] entries)."""
    dev = scenario.device
    cfg: dict[str, Any] = {
        "chain": {"port": chain, "family": dev.family, "chips": dev.chips},
        "board": {"port": board},
        "grid": {
            "broker_url": broker_url, "site": SITE, "device": DEVICE, "prefix": PREFIX,
            "operator_keys": [{"kid": KID, "path": str(pub)}],
            "state_dir": str(work / "agent-state"),
            "insecure_no_tls": True, "restart_spread_s": 1.0, "telemetry_period_s": 1.0,
        },
        "log": {"level": log_level, "status_period_s": 10.0},
    }
    if nonce_difficulty is not None:
        cfg["chain"]["nonce_difficulty"] = nonce_difficulty
    if scenario.home is not None:  # the home's broker is the rig's; its meter a Shelly's
        cfg["home"] = {"broker_url": broker_url, "device_id": "hil_home", "state_period_s": 1.0}
        cfg["surplus"] = {"meter_topic": METER_TOPIC, "meter_field": METER_FIELD}
    cfg = deep_merge(cfg, dev.agent)
    if pools:
        cfg["pool"] = pools
    path = work / "agent.toml"
    path.write_text("# written by `gridminer hil run` for this run\n" + dump_toml(cfg),
                    encoding="utf-8")
    return path
