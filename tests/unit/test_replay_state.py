"""The replay state as written on every command: encoded once per entry, undone exactly when it
could not be saved, and the ack path of a pass (`serve_commands`) apart from the rest."""

from __future__ import annotations

import json
import os

from agent.grid.replay import Encoded, ReplayGuard, StateFile
from tests.unit.test_grid_policy import Rig


def filled(recent_max: int = 3) -> ReplayGuard:
    guard = ReplayGuard(recent_max)
    for i in range(recent_max):
        guard.record(b"k1", bytes([i]) * 16, 10 + i, {"result": "accepted", "id": bytes([i]) * 16})
    guard.floor_ms = 1234
    return guard


def test_a_record_that_could_not_be_saved_is_undone_exactly_even_with_an_eviction() -> None:
    guard = filled()
    before = guard.to_json()
    undo = guard.record(b"k2", b"\x09" * 16, 1, {"result": "accepted"})  # evicts the oldest
    assert guard.lookup(b"k1", b"\x00" * 16, 10, 0) == ("replayed", None)
    undo()
    assert guard.to_json() == before
    assert guard.lookup(b"k2", b"\x09" * 16, 1, 2000) == ("new", None)  # its seq not used up
    assert guard.lookup(b"k1", b"\x00" * 16, 10, 0)[0] == "duplicate"


def test_the_encoded_state_is_the_state_after_every_kind_of_change() -> None:
    guard = filled()
    assert json.loads(guard.encoded()) == guard.to_json()
    guard.record(b"k1", b"\x07" * 16, 20, {"result": "accepted"})  # evicts
    guard.update_ack(b"\x07" * 16, {"result": "accepted", "applied_w": 700.0, "x": b"\x01"})
    assert json.loads(guard.encoded()) == guard.to_json()
    guard.record(b"k1", b"\x08" * 16, 21, {"result": "accepted"})()  # undone
    restored = ReplayGuard(3)
    restored.load_json(json.loads(guard.encoded()))
    assert restored.to_json() == guard.to_json()
    assert restored.lookup(b"k1", b"\x07" * 16, 20, 0) == (
        "duplicate", {"result": "accepted", "applied_w": 700.0, "x": b"\x01"})
    assert json.loads(ReplayGuard().encoded()) == ReplayGuard().to_json()


def test_an_encoded_part_is_saved_as_json_beside_the_other_keys(tmp_path) -> None:
    store = StateFile(tmp_path / "grid.json")
    store.save({"v": 1, "replay": Encoded('{"a":[1,2]}'), "text": "plain"})
    assert store.load() == {"v": 1, "replay": {"a": [1, 2]}, "text": "plain"}
    store.save({"replay": Encoded("{}")})
    assert store.load() == {"replay": {}}
    assert os.stat(tmp_path / "grid.json").st_mode & 0o777 == 0o600


def test_serve_commands_acks_with_the_replay_state_saved_and_leaves_the_rest_to_service(
    tmp_path,
) -> None:
    rig = Rig(tmp_path)
    rig.tick()
    rig.clock.advance(1.0)  # telemetry is due
    telemetry = len(rig.link.telemetry())
    rig.send(seq=5)
    rig.session.serve_commands()
    ack = rig.link.acks()[-1]
    assert ack["result"] == "accepted" and ack["applied_w"] is not None
    assert rig.sink.calls[-1][0] == "setpoint"
    saved = json.loads((tmp_path / "grid.json").read_text())
    assert saved["replay"]["last_seq"] == {b"op-1".hex(): 5}  # written before it acted
    assert "applied_w" not in saved["replay"]["recent"][-1]["ack"]
    assert len(rig.link.telemetry()) == telemetry  # not on the ack path
    rig.session.service()
    saved = json.loads((tmp_path / "grid.json").read_text())
    assert saved["replay"]["recent"][-1]["ack"]["applied_w"] == ack["applied_w"]
    assert len(rig.link.telemetry()) == telemetry + 1
    assert [c for c in rig.sink.calls if c[0] == "setpoint"] == [rig.sink.calls[-1]]  # once
