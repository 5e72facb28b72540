"""A start of the agent that fails after the chain driver came up (agent/app.py `run_agent`):
what it opened is closed and its threads stopped, so nothing keeps reading, or reopening, the
board's ports."""

from __future__ import annotations

from typing import Any

import pytest

import agent.control.governor
from agent.app import run_agent
from agent.config import config_from_mapping
from hil.hashboard import HashBoardEmulator


def test_a_start_failing_once_the_driver_runs_leaves_no_port_or_reader_behind(monkeypatch,
                                                                              no_leaks):
    def refuse(*_args: Any, **_kw: Any) -> None:
        raise RuntimeError("governor refused")

    monkeypatch.setattr(agent.control.governor, "Governor", refuse)
    with HashBoardEmulator("BM1370", 4, seed=5) as emu:
        config = config_from_mapping({
            "chain": {"port": emu.chain_path, "family": "BM1370", "chips": 4},
            "board": {"port": emu.board_path}})
        with pytest.raises(RuntimeError, match="governor refused"):
            run_agent(config)
    # no_leaks: no thread (the chain reader) left running, no file descriptor (a port) open
