"""What every lab run does around its scenario (hil.rig.lifecycle): every part is stopped, in
order, whatever the run did and whichever part fails to stop; a child that keeps exiting by
itself is started again a bounded number of times, then the run ends with a verdict."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest

from hil.rig.lifecycle import ExitLimit, RunLifecycle
from hil.rig.options import RigError


class _Part:
    def __init__(self, name: str, stopped: list[str], fails: bool = False) -> None:
        self.name, self.stopped, self.fails = name, stopped, fails

    def close(self) -> None:
        self.stopped.append(self.name)
        if self.fails:
            raise OSError(f"{self.name} would not close")


class _Run(RunLifecycle):
    name = "test run"

    def __init__(self, out_dir: Path, parts: list[Any], fails: bool) -> None:
        self.console = io.StringIO()
        super().__init__(out_dir, self.console)
        self.parts, self.fails = parts, fails

    def _run(self) -> dict[str, Any]:
        assert self.work.is_dir()  # the children's folder exists before anything starts
        self.note("playing")
        if self.fails:
            raise RigError("the broker did not start")
        return {"passed": True}

    def _parts(self) -> list[tuple[Any, str]]:
        return [(p, "close") for p in self.parts]


@pytest.mark.parametrize("fails", [False, True])
def test_every_part_is_stopped_in_order_whatever_the_run_and_the_parts_did(tmp_path, fails):
    stopped: list[str] = []
    parts = [_Part("agent", stopped), None, _Part("emulator", stopped, fails=True),
             _Part("broker", stopped)]
    run = _Run(tmp_path / "out", parts, fails)
    if fails:
        with pytest.raises(RigError, match="the broker did not start"):
            run.run()
    else:
        assert run.run() == {"passed": True}
    assert stopped == ["agent", "emulator", "broker"]
    console = run.console.getvalue()
    assert "test run teardown: OSError: emulator would not close" in console
    assert "playing" in console and run.events[0]["text"] == "playing"


class _Child:
    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.code: int | None = None
        self.killed = False

    def exited(self) -> int | None:
        return self.code


def test_a_child_that_keeps_exiting_is_restarted_up_to_the_limit_then_judged(tmp_path):
    log = tmp_path / "site.log"
    log.write_text("starting\nsite: no meter on the topic\n")
    child = _Child(log)
    limit = ExitLimit("the site controller", 2)
    notes: list[str] = []
    assert not limit.check(child, notes.append)  # running
    child.code = -9
    child.killed = True  # by the run (a fault): not its own exit
    assert not limit.check(child, notes.append)
    child.killed = False
    child.code = 1
    assert limit.check(child, notes.append) and limit.check(child, notes.append)
    assert notes[-1] == ("site controller exited by itself (status 1); restarting it "
                         "(2 of at most 2)")
    with pytest.raises(RigError, match=r"the site controller exited by itself 3 times \(last "
                                       r"status 1\); giving up \(log .*site\.log\):\n"
                                       r"(.|\n)*no meter on the topic"):
        limit.check(child, notes.append)
    assert limit.exits == 3


def test_a_child_that_exits_while_starting_is_judged_at_once(tmp_path):
    log = tmp_path / "agent.log"
    log.write_text("config: broker.url: required\n")
    child = _Child(log)
    child.code = 2
    with pytest.raises(RigError, match=r"the agent exited with status 2 (.|\n)*broker\.url"):
        ExitLimit("the agent", 5).check(child, print, fatal=True)
