"""`gridminer agent` start-up (agent/app.py): a chain the config leaves open is probed and
the config derived for it; a grid link in development mode runs without an operator key."""

from __future__ import annotations

from types import SimpleNamespace

from driver_fake import FakeBoard, FakeChainPort

from agent.app import build_grid, detect_chain
from agent.clock import FakeClock
from agent.config import config_from_mapping
from agent.control.governor import Governor

PORTS = {"chain": {"port": "/dev/ttyUSB0"}, "board": {"port": "/dev/ttyACM0"}}


def test_an_open_chain_is_probed_and_the_governor_sized_for_it():
    port = FakeChainPort("BM1366", 6)
    cfg = detect_chain(config_from_mapping(PORTS), port, FakeBoard(port), FakeClock())
    assert (cfg.chain.family, cfg.chain.chips) == ("BM1366", 6)
    pinned = config_from_mapping({**PORTS, "chain": {"port": "/dev/ttyUSB0",
                                                     "family": "BM1366", "chips": 6}})
    assert cfg == pinned  # every family- and count-dependent default derived again
    assert Governor(cfg, FakeClock()).caps()["chips"] == 6


def test_a_pinned_chain_is_not_probed():
    port = FakeChainPort("BM1370", 4)
    cfg = config_from_mapping({**PORTS, "chain": {"port": "/dev/ttyUSB0", "chips": 1,
                                                  "family": "BM1370"}})
    assert detect_chain(cfg, port, FakeBoard(port), FakeClock()) is cfg
    assert port.written == []


def test_insecure_dev_runs_the_grid_link_without_an_operator_key(tmp_path):
    cfg = config_from_mapping({**PORTS, "grid": {
        "broker_url": "mqtt://127.0.0.1:1883", "site": "s1", "device": "d1",
        "state_dir": str(tmp_path), "insecure_dev": True}})
    clock = FakeClock()
    runtime = SimpleNamespace(governor=Governor(cfg, clock), snapshot=dict,
                              notify_grid=lambda: None, request_tick=lambda: None)
    session, link = build_grid(cfg, runtime, clock)
    assert link.settings.insecure_dev is True
    assert session.checker.policy.keys == {}  # every command is rejected: bad_signature
