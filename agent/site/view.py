"""A live view of a site: the latest status and telemetry of each device, as a table or JSON lines
(`gridminer operator watch`)."""

from __future__ import annotations

import json
import queue
import time
from typing import Any, TextIO

from agent.grid.telemetry import decode_map, jsonable
from agent.site.client import Operator


class SiteView:
    """The latest status and telemetry per device of a site, as a table."""

    COLUMNS = ("device", "state", "mode", "power_w", "setpoint_w", "temp_c", "last_seen_s")

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}

    def update(self, topic: str, payload: bytes, now_s: float) -> str | None:
        parts = topic.split("/")
        if len(parts) != 4 or parts[3] not in ("status", "telemetry"):
            return None
        data = decode_map(payload)
        if data is None:
            return None
        row = self.rows.setdefault(parts[2], {"device": parts[2]})
        if parts[3] == "status":
            row["state"] = data.get("state")
            row["mode"] = data.get("mode", row.get("mode"))
        else:
            for key in ("mode", "power_w", "setpoint_w", "temp_c", "target_w"):
                row[key] = data.get(key)
            row["seen_s"] = now_s
        return parts[3]

    def table(self, now_s: float) -> list[dict[str, Any]]:
        out = []
        for name in sorted(self.rows):
            row = dict(self.rows[name])
            seen = row.pop("seen_s", None)
            row["last_seen_s"] = round(now_s - seen, 1) if seen is not None else None
            out.append({k: row.get(k) for k in self.COLUMNS})
        return out

    def render(self, now_s: float) -> str:
        rows = self.table(now_s)
        cells = [[_cell(r[c]) for c in self.COLUMNS] for r in rows]
        widths = [max([len(c)] + [len(row[i]) for row in cells])
                  for i, c in enumerate(self.COLUMNS)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(self.COLUMNS, widths, strict=True))]
        lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
        return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if isinstance(value, float) else str(value)


def watch(op: Operator, site: str, prefix: str, out: TextIO, *, count: int | None,
          interval_s: float, as_json: bool, timeout_s: float | None) -> int:
    view = SiteView()
    op.subscribe([f"{prefix}/{site}/+/status", f"{prefix}/{site}/+/telemetry"])
    printed = 0
    next_print = time.monotonic() + interval_s
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while count is None or printed < count:
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            break
        try:
            topic, payload, _, received = op.messages.get(timeout=max(0.0, next_print - now))
            view.update(topic, payload, received)
            if time.monotonic() < next_print:
                continue
        except queue.Empty:
            pass
        now = time.monotonic()
        next_print = now + interval_s
        if not view.rows:
            continue
        if as_json:
            for row in view.table(now):
                out.write(json.dumps(jsonable(row)) + "\n")
        else:
            if out.isatty():
                out.write("\x1b[H\x1b[2J")
            out.write(view.render(now) + "\n\n")
        out.flush()
        printed += 1
    return printed
