"""The emulated board's own truth, sampled beside a test: what the chain really drew, and when.

`TruthSampler` reads the emulator's state every `period_s` on a thread, from `start()` (or
entering the `with`) to `stop()`: `samples` holds (emulated s, true board power W, chain
powered). `power()` gives the (s, W) pairs that `hil.report.largest_change_w` judges."""

from __future__ import annotations

import threading
from typing import Any


class TruthSampler:
    """See the module docstring."""

    def __init__(self, emu: Any, period_s: float = 0.05) -> None:
        self.emu = emu
        self.period_s = period_s
        self.samples: list[tuple[float, float, bool]] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._done.is_set():
            state = self.emu.state()
            self.samples.append((float(state["time_s"]), float(state["board_power_w"]),
                                 bool(state["chain_powered"])))
            self._done.wait(self.period_s)

    def start(self) -> TruthSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._done.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)

    def __enter__(self) -> TruthSampler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def power(self, start: int = 0, stop: int | None = None) -> list[tuple[float, float]]:
        """(emulated s, W) of samples[start:stop]."""
        return [(t, p) for t, p, _ in self.samples[start:stop]]

    def index_at(self, time_s: float, start: int = 0) -> int:
        """The first sample at or after emulated `time_s` (from `start`), or the count."""
        return next((i for i in range(start, len(self.samples))
                     if self.samples[i][0] >= time_s), len(self.samples))
