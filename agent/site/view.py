"""A live view of a site: the latest status and telemetry of each device, as a table or JSON lines
(`gridminer operator watch`). The pool columns appear once some device reports pool figures;
a site where no device has reported is said so instead of an empty table."""

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
    #: telemetry's optional pool figures (agent.grid.telemetry.OPTIONAL_FIELDS)
    POOL_COLUMNS = ("pool", "pool_accepted", "pool_rejected", "pool_stale", "pool_hashrate_ghs")

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
            for key in ("mode", "power_w", "setpoint_w", "temp_c", "target_w",
                        *self.POOL_COLUMNS):
                row[key] = data.get(key)
            row["seen_s"] = now_s
        return parts[3]

    @property
    def columns(self) -> tuple[str, ...]:
        """The table's columns: the pool's only when some device reports a pool figure."""
        pool = any(row.get(k) is not None for row in self.rows.values() for k in self.POOL_COLUMNS)
        return self.COLUMNS + self.POOL_COLUMNS if pool else self.COLUMNS

    def complete(self) -> bool:
        """Every device whose status says online has sent telemetry too."""
        return all("seen_s" in row for row in self.rows.values() if row.get("state") == "online")

    def table(self, now_s: float) -> list[dict[str, Any]]:
        columns = self.columns
        out = []
        for name in sorted(self.rows):
            row = dict(self.rows[name])
            seen = row.pop("seen_s", None)
            row["last_seen_s"] = round(now_s - seen, 1) if seen is not None else None
            out.append({k: row.get(k) for k in columns})
        return out

    def render(self, now_s: float) -> str:
        rows = self.table(now_s)
        columns = self.columns
        cells = [[_cell(r[c]) for c in columns] for r in rows]
        widths = [max([len(c)] + [len(row[i]) for row in cells])
                  for i, c in enumerate(columns)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
        lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
        return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if isinstance(value, float) else str(value)


FIRST_POLL_S = 0.1  # how often the first table looks again for the telemetry it waits for


def watch(op: Operator, site: str, prefix: str, out: TextIO, *, count: int | None,
          interval_s: float, as_json: bool, timeout_s: float | None,
          err: TextIO | None = None) -> int:
    """Print the site's table (or JSON lines) every `interval_s`, `count` times (None: until
    `timeout_s`, or forever); returns how many were printed. When no device has reported by the
    first one (no retained status, no telemetry), `err` is told so: at once for a set `count`
    (the caller exits), once for a live watch that goes on waiting. The first table waits (up to
    three intervals) for the telemetry of every device that is online."""
    view = SiteView()
    op.subscribe([f"{prefix}/{site}/+/status", f"{prefix}/{site}/+/telemetry"])
    printed = 0
    told_empty = False
    next_print = time.monotonic() + interval_s
    first_by = time.monotonic() + 3 * interval_s
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
            if not told_empty and err is not None:
                err.write(_nobody(site, prefix, interval_s, waiting=count is None) + "\n")
                err.flush()
                told_empty = True
            if count is not None:
                break
            continue
        if not printed and not view.complete() and now < first_by:
            next_print = min(first_by, now + FIRST_POLL_S)
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


def _nobody(site: str, prefix: str, waited_s: float, waiting: bool) -> str:
    text = (f"no device of site {site} has reported: no status retained on "
            f"{prefix}/{site}/+/status and no telemetry within {waited_s:g} s")
    return text + ("; waiting for one" if waiting else
                   " (is the site name right, and is an agent connected to this broker?)")
