"""The lab's JSON-line child process (hil.child) against a real child: answers matched to their
request, events kept, a late answer never taken for the next one, an exited or silent child
named with its log, and stop() ending a child that ignores the end of its input."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from hil.child import JsonLineChild
from hil.errors import HilError

# A child that speaks the protocol: "hello" answers with an event first and a line that is not
# JSON; "slow" is answered only when the next request comes (after that one's answer is due);
# "quit" exits with status 3; the end of stdin is ignored (only a signal stops it).
CHILD = r"""
import json, signal, sys
print("starting", file=sys.stderr, flush=True)
late = None
for line in sys.stdin:
    cmd = json.loads(line)
    op = cmd["op"]
    if late is not None:
        print(json.dumps({"ok": True, "op": late}), flush=True)
        late = None
    if op == "slow":
        late = op
    elif op == "quit":
        sys.exit(3)
    elif op == "hello":
        print("not json", flush=True)
        print(json.dumps([1, 2]), flush=True)
        print(json.dumps({"event": "online", "n": cmd.get("n", 0)}), flush=True)
        print(json.dumps({"ok": True, "op": op, "n": cmd.get("n", 0)}), flush=True)
    else:
        print(json.dumps({"ok": False, "op": op, "error": "unknown op"}), flush=True)
signal.pause()  # the end of stdin: wait for a signal
"""


@pytest.fixture
def child(tmp_path: Path):
    c = JsonLineChild([sys.executable, "-c", CHILD], name="the test child", error=HilError,
                      cwd=tmp_path, log_path=tmp_path / "child.log")
    yield c
    c.stop(timeout_s=5.0)


def test_an_answer_is_matched_to_its_request_and_events_are_kept(child):
    assert child.ask({"op": "hello", "n": 1}, 10.0) == {"ok": True, "op": "hello", "n": 1}
    assert child.wait_event("online", 10.0) == {"event": "online", "n": 1}
    assert child.ask({"op": "hello", "n": 2}, 10.0)["n"] == 2
    assert child.wait_event("online", 0.0)["n"] == 2  # the latest of its kind
    refusal = child.ask({"op": "explode"}, 10.0)
    assert refusal == {"ok": False, "op": "explode", "error": "unknown op"}


def test_an_answer_that_comes_after_its_request_timed_out_is_not_taken_for_the_next(child):
    with pytest.raises(HilError, match=r"the test child did not answer slow within 0\.2 s"):
        child.ask({"op": "slow"}, 0.2)
    # the child now answers "slow" and then "hello": the caller gets hello's
    assert child.ask({"op": "hello", "n": 7}, 10.0) == {"ok": True, "op": "hello", "n": 7}


def test_a_child_that_exits_is_named_with_its_status_and_log(child, tmp_path):
    log = tmp_path / "child.log"
    t0 = time.monotonic()
    with pytest.raises(HilError, match=rf"the test child exited \(3\) \(log {log}\)"):
        child.ask({"op": "quit"}, 30.0)  # told at once, not after the timeout
    assert time.monotonic() - t0 < 15.0
    with pytest.raises(HilError, match=rf"the test child exited \(3\) \(log {log}\)"):
        child.wait_event("online", 10.0)
    with pytest.raises(HilError, match=r"exited \(3\)"):
        child.ask({"op": "hello"}, 10.0)
    assert "starting" in log.read_text()


def test_a_child_silent_past_its_deadline_is_an_error_not_a_hang(child):
    t0 = time.monotonic()
    with pytest.raises(HilError, match=r"the test child not online within 0\.3 s"):
        child.wait_event("online", 0.3)
    assert time.monotonic() - t0 < 5.0


def test_stop_ends_a_child_that_ignores_the_end_of_its_input(child):
    child.ask({"op": "hello"}, 10.0)
    child.stop(timeout_s=5.0)
    assert child.proc.returncode is not None
    assert child.proc.stdout is not None and child.proc.stdout.closed


def test_a_command_that_cannot_start_leaves_no_log_open(tmp_path):
    with pytest.raises(OSError):
        JsonLineChild([str(tmp_path / "no-such-program")], name="x", error=HilError,
                      log_path=tmp_path / "x.log")
