"""What a rig run is given and shares: `RigOptions` (scenario, run folder, speed, broker, target),
`RigTarget` (a real board's serial URLs), `RigError`, the rig's names on the broker, and
`RigClock` (rig seconds: 0 at scenario start, negative during warm-up).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from agent.errors import GridminerError
from hil.chain import DEFAULT_DIFFICULTY
from hil.scenario import Scenario

SITE = "hil"
DEVICE = "rig0"
KID = "hil-operator"
PREFIX = "gridminer"
TRUTH_PERIOD_S = 0.1
EMULATION_DIFFICULTY = DEFAULT_DIFFICULTY  # the emulator's default; the agent is told the same


class RigError(GridminerError):
    """The rig could not start or run a part (broker, emulator, agent); the message says which
    and where its log is."""


@dataclass(frozen=True)
class RigTarget:
    """A real board: pyserial URLs of the chain and board links (no emulator)."""

    chain: str
    board: str

    @classmethod
    def parse(cls, text: str) -> RigTarget:
        """`chain=URL,board=URL` (the `--hil-target` syntax)."""
        parts: dict[str, str] = {}
        for item in text.split(","):
            key, sep, value = item.partition("=")
            if not sep or key.strip() not in ("chain", "board") or not value.strip():
                raise RigError(
                    f"--hil-target {text!r}: expected chain=URL,board=URL "
                    "(e.g. chain=rfc2217://host:4001,board=rfc2217://host:4002)")
            parts[key.strip()] = value.strip()
        if set(parts) != {"chain", "board"}:
            raise RigError(f"--hil-target {text!r}: both chain= and board= are needed")
        return cls(parts["chain"], parts["board"])


@dataclass
class RigOptions:
    scenario: Scenario
    out_dir: Path
    speed: float = 1.0
    broker_url: str | None = None
    target: RigTarget | None = None
    progress: TextIO | None = None  # live status line (stderr by default in the CLI)
    python: str = sys.executable
    agent_log_level: str = "INFO"
    start_timeout_s: float = 60.0
    ack_grace_s: float = 10.0


class RigClock:
    """Rig seconds: `now()` is 0 at scenario start; `wall_t0` is that instant in Unix time.
    Started at setup, shifted once when the warm-up is over."""

    def __init__(self) -> None:
        self.t0 = 0.0  # monotonic time of scenario start
        self.wall_t0 = 0.0  # the same instant in Unix time

    def start(self) -> None:
        self.t0 = time.monotonic()
        self.wall_t0 = time.time()

    def shift(self, by_s: float) -> None:
        """Scenario start moves `by_s` later (the warm-up's end)."""
        self.t0 += by_s
        self.wall_t0 += by_s

    def now(self) -> float:
        return time.monotonic() - self.t0
