"""Exceptions of the pool client. A pool's bad line never raises out of the session that read it
(it is rejected with a reason and counted); these are for the package's own callers."""

from agent.errors import GridminerError


class PoolError(GridminerError):
    """Base of the pool client's errors."""


class RejectedLine(PoolError):
    """A line from a pool that is not a message the client can act on. `reason` is a short,
    stable key to count it under; the text adds the detail for the log."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
