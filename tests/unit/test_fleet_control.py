"""The fleet's control lines (`gridminer fleet` on stdin): a busy device loop is an answer, not
a crash."""

from __future__ import annotations

import json

from hil.fleet.cli import handle_command


class BusyFleet:
    """A fleet whose device loop does not answer in time."""

    def figures(self) -> dict[str, object]:
        raise TimeoutError("the device loop did not answer in 10 s")

    def kill(self, share: float | None = None, ids: list[str] | None = None) -> list[str]:
        raise TimeoutError()


def test_a_busy_loop_gets_an_error_answer_for_figures_and_faults():
    figures = handle_command(BusyFleet(), json.dumps({"op": "figures"}))
    assert figures == {"ok": False, "op": "figures",
                       "error": "the device loop did not answer in 10 s"}
    kill = handle_command(BusyFleet(), json.dumps({"op": "kill", "share": 0.1}))
    assert kill == {"ok": False, "op": "kill", "error": "TimeoutError"}


def test_figures_take_no_keys():
    answer = handle_command(BusyFleet(), json.dumps({"op": "figures", "share": 1}))
    assert not answer["ok"] and "unknown key(s) share" in answer["error"]
