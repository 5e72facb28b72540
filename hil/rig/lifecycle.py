"""What every lab run does around its scenario (`hil.rig.runner`'s board, `hil.site.runner`'s
site): its run folder (DIR, the children's own in DIR/rig), the rig clock, the console, the
operator's view of the device (`live`, filled by `listener`); `run()` plays the scenario
(`_run`) and then stops every part it started (`_parts`) whatever happened, going on past a part
that fails to stop. `ExitLimit` is the verdict on a child that keeps exiting by itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from hil.rig.operator import Listener, Live
from hil.rig.options import RigClock, RigError
from hil.rig.process import AgentProcess, log_tail
from hil.rig.status import StatusLine


class RunLifecycle:
    """The frame of a lab run; a runner fills in `_run` (the scenario, returning its summary)
    and `_parts` (what to stop, in order)."""

    name = "rig"  # as the console names the run

    def __init__(self, out_dir: Path, progress: TextIO | None) -> None:
        self.out = out_dir.resolve()  # the children run in the run folder
        self.work = self.out / "rig"
        self.clock = RigClock()
        self.started_s = time.monotonic()  # the console's clock: it never restarts
        self.status = StatusLine(progress)
        self.live = Live()
        self.listener: Listener | None = None
        self.events: list[dict[str, Any]] = []

    def now(self) -> float:
        """Rig seconds (0 at the scenario's start)."""
        return self.clock.now()

    def elapsed(self) -> float:
        """Seconds since the run started (warm-up included), as the console shows them."""
        return time.monotonic() - self.started_s

    def note(self, text: str) -> None:
        """An event of the run, kept for the report and printed on the console."""
        self.events.append({"t_s": round(self.now(), 2), "text": text})
        self.status.print(f"[{self.elapsed():7.1f} s] {text}", line=True)

    def run(self) -> dict[str, Any]:
        """Play the scenario; returns the summary (also written to DIR)."""
        self.out.mkdir(parents=True, exist_ok=True)
        self.work.mkdir(parents=True, exist_ok=True)
        try:
            return self._run()
        finally:
            self._teardown()

    def _run(self) -> dict[str, Any]:
        raise NotImplementedError

    def _parts(self) -> list[tuple[Any, str]]:
        """(part, the name of its method that stops it) in the order to stop them; None parts
        (never started) are passed over."""
        raise NotImplementedError

    def _teardown(self) -> None:
        if self.listener is not None:
            self.listener.stop()
        for part, method in self._parts():
            if part is None:
                continue
            try:
                getattr(part, method)()
            except Exception as exc:  # teardown goes on: every part must be stopped
                self.status.print(f"{self.name} teardown: {type(exc).__name__}: {exc}",
                                  line=True)
        if self.listener is not None:
            self.listener.join(2.0)


class ExitLimit:
    """A child of the run (`the agent`, `the site controller`) that exits by itself, not killed
    by the run, is started again at most `limit` times; one exit more is the run's verdict."""

    def __init__(self, name: str, limit: int) -> None:
        self.name = name
        self.limit = limit
        self.exits = 0  # exits by itself so far

    def check(self, child: AgentProcess, note: Callable[[str], None], *,
              fatal: bool = False) -> bool:
        """True when `child` exited by itself and is to be started again (noted); RigError,
        with its log's tail, when it is `fatal` (starting up: any exit is) or one too many."""
        code = child.exited()
        if code is None or child.killed:
            return False
        if fatal:
            raise RigError(f"{self.name} exited with status {code} (log {child.log_path}):\n"
                           f"{log_tail(child.log_path)}")
        self.exits += 1
        if self.exits > self.limit:
            raise RigError(f"{self.name} exited by itself {self.exits} times (last status "
                           f"{code}); giving up (log {child.log_path}):\n"
                           f"{log_tail(child.log_path)}")
        note(f"{self.name.removeprefix('the ')} exited by itself (status {code}); restarting it "
             f"({self.exits} of at most {self.limit})")
        return True
