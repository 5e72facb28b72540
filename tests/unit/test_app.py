"""`gridminer agent` start-up (agent/app.py): a chain the config leaves open is probed and
the config derived for it; a grid link in development mode runs without an operator key."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from driver_fake import FakeBoard, FakeChainPort

from agent.app import acknowledge_old_trip, build_grid, check_bridge, detect_chain, preflight
from agent.clock import FakeClock
from agent.config import config_from_mapping
from agent.control.governor import Governor
from agent.errors import BoardLinkError, ChainError, ConfigError

PORTS = {"chain": {"port": "/dev/ttyUSB0"}, "board": {"port": "/dev/ttyACM0"}}


class PowerBoard(FakeBoard):
    """The board link's reset line, chain power and core voltage, and a trip latch."""

    def __init__(self, chain: FakeChainPort, can_power: bool = True) -> None:
        super().__init__(chain)
        self.can_power = can_power
        self.powered = True
        self.trip: str | None = None
        self.cause_remains = False
        self.calls: list[tuple[str, object]] = []

    def read_sample(self) -> SimpleNamespace:
        return SimpleNamespace(chain_powered=self.powered, uptime_ms=60_000,
                               bridge_state="tripped" if self.trip else "active",
                               trip_reason=self.trip)

    def set_vcore_mv(self, mv: int) -> int:
        self.calls.append(("vcore", mv))
        return mv

    def set_chain_power(self, on: bool) -> bool:
        if not self.can_power:
            raise BoardLinkError("board link chain_power: bridge error hardware")
        self.calls.append(("power", on))
        self.powered = on
        self.chain.hung = not on  # an unpowered chain answers nothing
        if on:
            self.chain.reset()
        return on

    def reset_chain(self) -> None:
        super().reset_chain()
        self.chain.hung = not self.powered

    def clear_trip(self, reason: str) -> None:
        if self.cause_remains or reason != self.trip:
            raise BoardLinkError("board link clear_trip: bridge error tripped")
        self.trip = None


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


BRIDGE_INFO = {"protocol": 1, "channels": 4, "heartbeat_timeout_ms": 5000, "trip_temp_dc": 900,
               "vr_trip_temp_dc": 1200, "board_trip_temp_dc": 1000, "vcore_min_mv": 1000,
               "vcore_max_mv": 1500, "family": "BM1370"}


@pytest.mark.parametrize(("section", "values", "info", "message"), [
    ("envelope", {"max_vcore_mv": 1600}, {}, "envelope.max_vcore_mv: 1600 mV is above the 1500"),
    ("envelope", {}, {"vcore_min_mv": 1100}, "envelope.min_vcore_mv: 1000 mV is below the 1100"),
    ("envelope", {"max_chip_temp_soft_c": 85, "max_chip_temp_hard_c": 95}, {},
     "envelope.max_chip_temp_hard_c: 95 C is not below the 90 C"),
    ("envelope", {}, {"vr_trip_temp_dc": 1000}, "envelope.max_vr_temp_c: 105 C is not below"),
    ("envelope", {}, {"heartbeat_timeout_ms": 400}, "trips after 400 ms without a request"),
    ("chain", {"family": "BM1366"}, {}, "chain.family: BM1366, but the bridge"),
])
def test_an_envelope_the_bridge_would_refuse_is_refused_naming_both(section, values, info,
                                                                     message):
    raw = {**PORTS, "chain": {"port": "/dev/ttyUSB0", "family": "BM1370", "chips": 4}}
    raw[section] = {**raw.get(section, {}), **values}
    with pytest.raises(ConfigError, match=message):
        check_bridge(config_from_mapping(raw), {**BRIDGE_INFO, **info}, "/dev/ttyACM0")
    check_bridge(config_from_mapping({**PORTS, "chain": {"port": "/dev/ttyUSB0", "chips": 4}}),
                 BRIDGE_INFO)  # the defaults fit the bridge's


def test_an_unpowered_chain_left_to_the_probe_is_powered_through_the_board_first():
    """After a clean stop the chain is unpowered: a probe without power finds nothing, so the
    board powers it (at the envelope's lowest core voltage) and the probe finds the chips."""
    port = FakeChainPort("BM1370", 4)
    board = PowerBoard(port)
    board.set_chain_power(False)
    cfg = detect_chain(config_from_mapping(PORTS), port, board, FakeClock(),
                       sample=board.read_sample())
    assert (cfg.chain.family, cfg.chain.chips) == ("BM1370", 4)
    assert board.calls[-2:] == [("vcore", 1000), ("power", True)]


def test_a_failed_detection_leaves_the_chain_unpowered_as_it_was_found():
    port = FakeChainPort("BM1370", 4)
    board = PowerBoard(port)
    board.set_chain_power(False)
    cfg = config_from_mapping({**PORTS, "governor": {"default_target_w": 500}})
    with pytest.raises(ConfigError, match=r"governor\.default_target_w: 500"):
        detect_chain(cfg, port, board, FakeClock(), sample=board.read_sample(),
                     bridge=BRIDGE_INFO)
    assert board.calls[-1] == ("power", False) and not board.powered


def test_a_board_that_cannot_power_the_chain_is_named_when_nothing_answers():
    port = FakeChainPort("BM1370", 4)
    board = PowerBoard(port, can_power=False)
    board.powered = False
    port.hung = True  # no power: nothing answers
    with pytest.raises(ChainError, match=r"unpowered and did not power it .*hardware"):
        detect_chain(config_from_mapping(PORTS), port, board, FakeClock(),
                     sample=board.read_sample())


def test_a_trip_latched_before_the_start_is_acknowledged_and_one_that_lasts_is_kept():
    port = FakeChainPort("BM1370", 4)
    board = PowerBoard(port)
    board.trip = "heartbeat_timeout"
    sample = acknowledge_old_trip(board)
    assert board.trip is None and sample.bridge_state == "active"
    assert ("power", True) not in board.calls  # acknowledged, not powered
    board.trip, board.cause_remains = "chip_over_temp", True
    sample = acknowledge_old_trip(board)
    assert board.trip == "chip_over_temp" and sample.trip_reason == "chip_over_temp"


def test_preflight_refuses_a_target_no_chain_the_probe_may_find_can_draw():
    cfg = config_from_mapping({**PORTS, "chain": {"port": "x", "family": "BM1397"},
                               "governor": {"default_target_w": 3000}})
    with pytest.raises(ConfigError, match=r"default_target_w: 3000 .* 256 x BM1397"):
        preflight(cfg)
    assert preflight(config_from_mapping({**PORTS, "governor": {"default_target_w": 3000}})) \
        is None  # a long BM1370 chain may draw it: checked once the chips are counted
