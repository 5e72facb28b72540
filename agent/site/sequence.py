"""The site controller's `seq` for its own key: strictly increasing across restarts (SIGKILL
included) without a disk write per command. Values are reserved in blocks: the file holds the
highest value that may have been used, written before any value of the block goes out, and a
restart begins above it (and never below the wall clock in ms, as the operator's counter does)."""

from __future__ import annotations

import time
from pathlib import Path

from agent.errors import GridLinkError
from agent.grid.replay import StateFile


class SeqBlock:
    def __init__(self, path: str | Path, kid: bytes, block: int = 10_000) -> None:
        self.state = StateFile(path)
        self.key = kid.hex()
        self.block = block
        try:
            data = self.state.load() or {}
            reserved = int(data.get(self.key, -1))
        except (ValueError, TypeError) as exc:
            raise GridLinkError(f"seq state {self.state.path} unreadable ({exc}); move it aside "
                                "only if no command of this key can be replayed") from exc
        self._next = max(reserved + 1, int(time.time() * 1000))
        self._reserved = self._next - 1

    def next(self) -> int:
        """The next seq; OSError if its block cannot be reserved (then nothing may be sent)."""
        if self._next > self._reserved:
            reserved = self._next + self.block - 1
            self.state.save({self.key: reserved})
            self._reserved = reserved
        seq = self._next
        self._next += 1
        return seq
