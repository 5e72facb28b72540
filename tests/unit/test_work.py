"""Work source, job-slot table and nonce checks (agent/chain/work.py)."""

from __future__ import annotations

import hashlib

import pytest

from agent.chain.work import (
    DEFAULT_VERSION_MASK,
    DIFF1_TARGET,
    JobTable,
    LocalWorkSource,
    RecentNonces,
    Work,
    hash_difficulty,
    target_for,
)
from agent.clock import FakeClock

EASY = 2.0**-28  # about one nonce in 16 meets it


def sha256d(data: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


def find_nonce(work: Work, difficulty: float, version_bits: int = 0, start: int = 0) -> int:
    target = target_for(difficulty)
    for nonce in range(start, start + 100_000):
        if int.from_bytes(sha256d(work.header(nonce, version_bits)), "little") <= target:
            return nonce
    raise AssertionError("no nonce found")


def test_target_matches_difficulty_one_and_emulation_formula():
    assert target_for(1) == DIFF1_TARGET
    assert target_for(256) == DIFF1_TARGET // 256
    assert target_for(1e-12) == 2**256 - 1  # clamped
    assert target_for(0.5) == int(DIFF1_TARGET / 0.5)
    with pytest.raises(ValueError):
        target_for(0)


def test_spec_j4_header_has_difficulty_18():
    header = bytes.fromhex(
        "04000020fc102bd0ea11470daf05a8e133a8a8505e21a2122b7f01000000000000000000"
        "6d0359c451434605c52a5a9ce074340be47c2c63840731f9edf1db3f26b1cdd9a9f16f643aae051747896e27"
    )
    work = Work(header[:76] + bytes(4), 1, version_mask=0)
    rebuilt = work.header(0x276E8947)
    assert rebuilt == header
    assert int(hash_difficulty(int.from_bytes(sha256d(rebuilt), "little"))) == 18


def test_local_source_makes_valid_varying_headers():
    clock = FakeClock()
    source = LocalWorkSource(clock, seed=7, block_interval_s=600)
    first = source.next_work(clock.monotonic())
    clock.advance(5)
    second = source.next_work(clock.monotonic())
    assert len(first.header80) == 80 and first.header80[76:] == bytes(4)
    assert first.version == 0x20000000 and first.version & DEFAULT_VERSION_MASK == 0
    assert first.header80[36:68] != second.header80[36:68]  # merkle root per job
    assert first.header80[4:36] == second.header80[4:36]  # same block
    assert second.ntime - first.ntime == 5
    assert first.clean and not second.clean
    clock.advance(600)
    third = source.next_work(clock.monotonic())
    assert third.clean and third.header80[4:36] != first.header80[4:36]


def test_local_source_rejects_version_with_mask_bits():
    with pytest.raises(ValueError):
        LocalWorkSource(FakeClock(), version=0x20002000)


def test_job_ids_follow_the_chip_sequence():
    table = JobTable(job_id_step=24)
    ids = []
    for i in range(17):
        job_id = table.next_job_id()
        ids.append(job_id)
        table.put(job_id, Work(bytes(80), i), 0.0)
    assert ids[:16] == [24, 48, 72, 96, 120, 16, 40, 64, 88, 112, 8, 32, 56, 80, 104, 0]
    assert ids[16] == 24 and len(table) == 16


def test_nonce_verifies_against_its_job_with_rolled_version():
    clock = FakeClock()
    source = LocalWorkSource(clock)
    table = JobTable(job_id_step=24, sha256d=sha256d)
    work = source.next_work(clock.monotonic())
    table.put(24, work, 0.0)
    bits = 0x5 << 13
    target = target_for(EASY)
    nonce = 0
    while True:  # valid with the rolled version, invalid with the base version
        nonce = find_nonce(work, EASY, bits, start=nonce)
        if int.from_bytes(sha256d(work.header(nonce, 0)), "little") > target:
            break
        nonce += 1
    result = table.check(24, nonce, bits, target, 0.1)
    assert result.work is work and not result.stale
    assert table.check(24, nonce, 0, target, 0.1).work is None


def test_late_nonce_checked_against_previous_occupant_within_grace():
    clock = FakeClock()
    source = LocalWorkSource(clock)
    table = JobTable(job_id_step=24, grace_s=2.0, fallback_ids=0, sha256d=sha256d)
    old = source.next_work(0.0)
    table.put(24, old, 0.0)
    new = source.next_work(0.0)
    table.put(24, new, 1.0)  # id reused: slot replaced
    target = target_for(EASY)
    # a nonce that is valid only for the old header
    nonce = 0
    while True:
        nonce = find_nonce(old, EASY, start=nonce)
        new_hash = int.from_bytes(sha256d(new.header(nonce)), "little")
        if new_hash > target:
            break
        nonce += 1
    late = table.check(24, nonce, 0, target, 2.5)
    assert late.work is old and late.stale
    too_late = table.check(24, nonce, 0, target, 3.5)
    assert too_late.work is None


def test_fallback_to_job_sent_before_when_reported_id_is_stale():
    clock = FakeClock()
    source = LocalWorkSource(clock)
    table = JobTable(job_id_step=24, fallback_ids=3, sha256d=sha256d)
    works = []
    for _ in range(3):
        job_id = table.next_job_id()
        work = source.next_work(0.0)
        works.append((job_id, work))
        table.put(job_id, work, 0.0)
    (id0, w0), (id1, _), (id2, _) = works
    target = target_for(EASY)
    nonce = 0
    while True:
        nonce = find_nonce(w0, EASY, start=nonce)
        others = [table.get(i).header(nonce) for i in (id1, id2)]
        if all(int.from_bytes(sha256d(h), "little") > target for h in others):
            break
        nonce += 1
    result = table.check(id2, nonce, 0, target, 0.0)  # chip reports the newest id
    assert result.work is w0 and result.stale
    table.clear()
    assert table.check(id0, nonce, 0, target, 0.0).work is None


def test_duplicate_filter_remembers_recent_nonces():
    recent = RecentNonces(size=2)
    assert not recent.seen((1, 2, 3))
    assert recent.seen((1, 2, 3))
    recent.seen((4, 5, 6))
    recent.seen((7, 8, 9))
    assert not recent.seen((1, 2, 3))  # forgotten after `size` newer ones
