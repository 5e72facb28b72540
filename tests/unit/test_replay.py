"""Replay state: atomic persistence, last seq per kid, duplicates answered with the original ack."""

from __future__ import annotations

import errno
import json
import os

import pytest

from agent.grid.replay import ReplayGuard, StateFile


def test_state_file_round_trip_is_atomic_and_private(tmp_path) -> None:
    store = StateFile(tmp_path / "s" / "grid.json")
    assert store.load() is None
    store.save({"a": 1})
    store.save({"a": 2})
    assert store.load() == {"a": 2}
    assert not (tmp_path / "s" / "grid.json.tmp").exists()
    assert os.stat(tmp_path / "s" / "grid.json").st_mode & 0o077 == 0


def test_a_leftover_temp_file_from_a_crash_does_not_matter(tmp_path) -> None:
    store = StateFile(tmp_path / "grid.json")
    store.save({"a": 1})
    (tmp_path / "grid.json.tmp").write_text('{"a": 2')  # killed mid-write
    assert store.load() == {"a": 1}
    store.save({"a": 3})
    assert store.load() == {"a": 3}


def test_corrupt_file_raises_and_can_be_quarantined(tmp_path) -> None:
    store = StateFile(tmp_path / "grid.json")
    (tmp_path / "grid.json").write_text("{not json")
    with pytest.raises(ValueError):
        store.load()
    bad = store.quarantine()
    assert bad.exists() and store.load() is None


def test_guard_orders_seq_per_kid() -> None:
    guard = ReplayGuard()
    assert guard.lookup(b"k1", b"a" * 16, 5, 0) == ("new", None)
    guard.record(b"k1", b"a" * 16, 5, {"result": "accepted"})
    assert guard.lookup(b"k1", b"b" * 16, 5, 0)[0] == "replayed"
    assert guard.lookup(b"k1", b"b" * 16, 4, 0)[0] == "replayed"
    assert guard.lookup(b"k1", b"b" * 16, 6, 0)[0] == "new"
    assert guard.lookup(b"k2", b"b" * 16, 1, 0)[0] == "new"  # other kid, own sequence
    assert guard.lookup(b"k1", b"a" * 16, 5, 0) == ("duplicate", {"result": "accepted"})
    assert guard.lookup(b"k1", b"a" * 16, 9, 0)[0] == "replayed"  # an id is used once


def test_guard_survives_a_restart_through_json(tmp_path) -> None:
    guard = ReplayGuard(recent_max=2)
    for i in range(3):
        guard.record(b"k", bytes([i]) * 16, 10 + i, {"id": bytes([i]) * 16, "applied_w": 1.5})
    store = StateFile(tmp_path / "g.json")
    store.save(guard.to_json())
    again = ReplayGuard(recent_max=2)
    again.load_json(json.loads((tmp_path / "g.json").read_text()))
    assert again.last_seq == {b"k": 12}
    assert again.lookup(b"k", bytes([2]) * 16, 12, 0) == (
        "duplicate", {"id": bytes([2]) * 16, "applied_w": 1.5})
    assert again.lookup(b"k", bytes([0]) * 16, 10, 0)[0] == "replayed"  # out of the recent window


def test_floor_after_lost_state_refuses_commands_issued_before_it() -> None:
    guard = ReplayGuard()
    guard.floor_ms = 1000
    assert guard.lookup(b"k", b"a" * 16, 1, 999)[0] == "replayed"
    assert guard.lookup(b"k", b"a" * 16, 1, 1000)[0] == "new"
    guard.record(b"k", b"a" * 16, 1, {})
    assert guard.lookup(b"k", b"b" * 16, 2, 5)[0] == "new"  # the kid has a seq again


def test_short_writes_still_write_the_whole_document(tmp_path) -> None:
    def trickle(fd: int, data: memoryview) -> int:
        return os.write(fd, bytes(data[:3]))  # a write may take fewer bytes than it was given

    store = StateFile(tmp_path / "grid.json", writer=trickle)
    doc = {"last_seq": {"6b": 12}, "recent": ["x" * 50]}
    store.save(doc)
    assert store.load() == doc


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO])
def test_a_failed_write_raises_and_keeps_the_previous_document(tmp_path, code: int) -> None:
    StateFile(tmp_path / "grid.json").save({"a": 1})

    def failing(fd: int, data: memoryview) -> int:
        os.write(fd, bytes(data[:2]))
        raise OSError(code, os.strerror(code))

    with pytest.raises(OSError) as raised:
        StateFile(tmp_path / "grid.json", writer=failing).save({"a": 2})
    assert raised.value.errno == code
    assert StateFile(tmp_path / "grid.json").load() == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.json"]  # no half-written temp


def test_a_zero_length_write_is_an_error_not_a_hang(tmp_path) -> None:
    store = StateFile(tmp_path / "grid.json", writer=lambda fd, data: 0)
    with pytest.raises(OSError):
        store.save({"a": 1})
    assert store.load() is None


def test_a_leftover_temp_file_readable_by_others_never_holds_the_new_document(tmp_path) -> None:
    leftover = tmp_path / "grid.json.tmp"
    leftover.write_text("{}")
    leftover.chmod(0o644)
    spy = os.open(leftover, os.O_RDONLY)  # someone who could read the leftover keeps it open
    try:
        StateFile(tmp_path / "grid.json").save({"secret": 1})
        assert b"secret" not in os.pread(spy, 4096, 0)
    finally:
        os.close(spy)
    assert os.stat(tmp_path / "grid.json").st_mode & 0o077 == 0
