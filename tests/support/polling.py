"""Waiting in tests without a fixed sleep: poll a condition until it holds or a deadline passes.

`wait_until` fails the test (AssertionError naming what it waited for, and the timeout);
`poll_until` hands the outcome back for the test to assert on with its own message;
`wait_emulated` waits out a span of an emulator's own clock rather than of the wall clock.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def poll_until(cond: Callable[[], T], timeout_s: float, *, poll_s: float = 0.05) -> T:
    """Call `cond` every `poll_s` until it returns a truthy value or `timeout_s` has passed;
    return its last value (falsy on timeout, from a call made after the deadline)."""
    deadline = time.monotonic() + timeout_s
    while not (value := cond()) and time.monotonic() < deadline:
        time.sleep(poll_s)
    return value


def wait_until(cond: Callable[[], T], timeout_s: float, what: str | Callable[[], str], *,
               poll_s: float = 0.05, alive: subprocess.Popen[Any] | None = None) -> T:
    """`cond`'s first truthy value within `timeout_s`, else AssertionError "timed out after
    `timeout_s` s waiting for `what`" (a callable `what` is asked then, to show the state at
    the deadline). `alive` is a process the condition depends on: its exit fails the wait at
    once, with its exit code."""

    def check() -> T:
        value = cond()
        if not value and alive is not None and alive.poll() is not None:
            raise AssertionError(
                f"the process exited ({alive.returncode}) while waiting for {_text(what)}")
        return value

    if value := poll_until(check, timeout_s, poll_s=poll_s):
        return value
    raise AssertionError(f"timed out after {timeout_s:g} s waiting for {_text(what)}")


def wait_emulated(now_s: Callable[[], float], seconds: float, timeout_s: float = 30.0) -> None:
    """Wait until the emulated clock `now_s` (e.g. the emulator's `time_s`) has run `seconds`,
    however slowly it runs against the wall clock (an emulator short of CPU lags).
    AssertionError if it has not within `timeout_s` wall seconds."""
    end = now_s() + seconds
    wait_until(lambda: now_s() >= end, timeout_s,
               lambda: f"{seconds:g} emulated s (at {now_s():.2f} s of {end:.2f} s)", poll_s=0.01)


def _text(what: str | Callable[[], str]) -> str:
    return what() if callable(what) else what
