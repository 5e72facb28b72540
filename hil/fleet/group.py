"""A fleet split over processes: `gridminer fleet --shard i/n` children, driven like one `Fleet`.

One Python process runs one loop on one core; a site's fleet next to its broker and site
controller answers a site-wide command faster split over the machine's cores. `FleetGroup`
starts the shards (each runs devices i, i+n, ... of the same seeded mix, so the ids and the
ratings are those of one fleet), talks to each over its stdin/stdout control lines (`cli`), and
offers `Fleet`'s API: `start`, `wait_online`, `figures`, `kill`, `revive`, `trip`, `clear_trip`,
`lag`, `clear_lag`, `cut`, `restore`, `stop`. A fault with `share` takes that share of each
shard; with `ids`, each shard takes its own.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from hil.child import JsonLineChild
from hil.fleet.fleet import FleetError

ROOT = Path(__file__).resolve().parents[2]
SUM_FIGURES = ("devices", "online", "dead", "cut", "tripped", "lagging", "power_w", "rating_w",
               "connects", "loop_errors")


class FleetGroup:
    """See the module docstring. `argv` are `gridminer fleet`'s options (without --shard)."""

    def __init__(self, argv: Sequence[str], processes: int = 2) -> None:
        if processes < 1:
            raise FleetError(f"processes {processes}: must be at least 1")
        self.argv = list(argv)
        self.processes = processes
        self.shards: list[JsonLineChild] = []
        self._lock = threading.RLock()  # a signal handler may ask while the main thread does

    @classmethod
    def for_site(cls, broker_url: str, site: str, operator_key: str, kid: str, state_dir: str,
                 devices: int = 1300, processes: int = 2, *extra: str) -> FleetGroup:
        """The group for `gridminer fleet --devices N --broker URL --site S --operator-key PEM
        --kid KID --state-dir DIR [extra options]`."""
        return cls(["--devices", str(devices), "--broker", broker_url, "--site", site,
                    "--operator-key", operator_key, "--kid", kid, "--state-dir", state_dir,
                    *extra], processes)

    def start(self) -> FleetGroup:
        for i in range(self.processes):
            shard = f"{i}/{self.processes}"
            self.shards.append(JsonLineChild(
                [sys.executable, "-m", "agent", "fleet", *self.argv, "--shard", shard,
                 "--status-period-s", "0"], name=f"fleet shard {shard}", error=FleetError,
                cwd=ROOT))
        return self

    def wait_online(self, timeout_s: float = 60.0) -> int:
        deadline = time.monotonic() + timeout_s
        for shard in self.shards:
            shard.wait_event("online", max(0.0, deadline - time.monotonic()))
        return int(self.figures()["online"])

    def stop(self, timeout_s: float = 30.0) -> None:
        with self._lock:
            for shard in self.shards:
                shard.terminate()  # all at once, then each waited for
            for shard in self.shards:
                shard.stop(timeout_s)
            self.shards = []

    def __enter__(self) -> FleetGroup:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- the control lines ------------------------------------------------------------------
    def _ask_all(self, cmd: dict[str, Any], timeout_s: float = 30.0) -> list[dict[str, Any]]:
        with self._lock:
            return [shard.ask(cmd, timeout_s) for shard in self.shards]

    def figures(self) -> dict[str, Any]:
        answers = self._ask_all({"op": "figures"})
        out: dict[str, Any] = {}
        for ans in answers:
            if not ans.get("ok"):
                raise FleetError(str(ans.get("error")))
            for key, value in ans["figures"].items():
                if key in SUM_FIGURES:
                    out[key] = round(out.get(key, 0) + value, 1)
                elif isinstance(value, int | float):
                    out[key] = max(out.get(key, value), value)
        return out

    def _fault(self, op: str, **args: Any) -> list[str]:
        cmd = {"op": op, **{k: v for k, v in args.items() if v is not None}}
        if "ids" in cmd:
            cmd["ids"] = list(cmd["ids"])
        answers = self._ask_all(cmd)
        errors = [str(a.get("error")) for a in answers if not a.get("ok")]
        if errors:
            raise FleetError(errors[0])
        return [i for a in answers for i in a["ids"]]

    def kill(self, share: float | None = None, ids: Iterable[str] | None = None) -> list[str]:
        return self._fault("kill", share=share, ids=ids)

    def revive(self, ids: Iterable[str]) -> list[str]:
        return self._fault("revive", ids=ids)

    def trip(self, share: float | None = None, ids: Iterable[str] | None = None,
             reason: str | None = None) -> list[str]:
        return self._fault("trip", share=share, ids=ids, reason=reason)

    def clear_trip(self, ids: Iterable[str] | None = None) -> list[str]:
        return self._fault("clear_trip", ids=ids)

    def lag(self, share: float | None = None, ids: Iterable[str] | None = None,
            tau_s: float | None = None) -> list[str]:
        return self._fault("lag", share=share, ids=ids, tau_s=tau_s)

    def clear_lag(self, ids: Iterable[str] | None = None) -> list[str]:
        return self._fault("clear_lag", ids=ids)

    def cut(self, share: float | None = None, ids: Iterable[str] | None = None) -> list[str]:
        return self._fault("cut", share=share, ids=ids)

    def restore(self, ids: Iterable[str] | None = None) -> list[str]:
        return self._fault("restore", ids=ids)
