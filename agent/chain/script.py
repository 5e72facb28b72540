"""A frame script: frames (and steps of the bring-up) that go to the chain one after another,
each after the pause the one before it asks for. It never waits: `run` sends what is due."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

Step = Callable[[float], None]  # called with the time it runs at


class FrameScript:
    """The queue of what is still to be sent, and when the next item is due (`due_s`)."""

    def __init__(self, write: Callable[[bytes], object]) -> None:
        self._write = write
        self._items: deque[tuple[bytes | Step, float]] = deque()
        self.due_s = 0.0

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        self._items.clear()

    def queue(self, frames: list[tuple[bytes, int]], now: float) -> None:
        """Frames with the pause after each in ms (as firmware_bridge.bringup lists them)."""
        if not self._items:
            self.due_s = now
        for frame, delay_ms in frames:
            self._items.append((frame, delay_ms / 1000.0))

    def queue_step(self, step: Step, delay_s: float = 0.0) -> None:
        self._items.append((step, delay_s))

    def run(self, now: float) -> None:
        """Send (or call) every item that is due by `now`."""
        while self._items and now >= self.due_s:
            item, delay_s = self._items.popleft()
            if callable(item):
                item(now)
            else:
                self._write(item)
            self.due_s = now + delay_s

    def done(self, now: float) -> bool:
        return not self._items and now >= self.due_s
