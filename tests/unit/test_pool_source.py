"""Pool work on the control thread: headers from the active pool's job with a fresh extranonce2
each, local work while no pool has any, shares filtered and handed on with rolled & mask; and the
chain driver under it: the pool's mask goes to register 0xA4, stale work is replaced at once."""

from __future__ import annotations

from typing import Any

import pytest
from driver_fake import FakeBoard, FakeChainPort

from agent.chain.driver import ChainDriver
from agent.chain.settings import ChainSettings
from agent.chain.work import LocalWorkSource, Share, Work, hash_difficulty
from agent.clock import FakeClock
from agent.pool import PoolWork, PoolWorkSource, work_source
from agent.pool.client import PoolState
from agent.pool.header import Job, words_swapped
from agent.pool.session import JobTemplate, ShareRequest
from firmware_bridge import asic
from hil.pool import MAINNET_791433 as V1
from hil.pool import PoolJob, dsha

MASK = 0x1FFFE000


def job(job_id: str = "1", ntime: int = V1["ntime"], prev: str = V1["prevhash"]) -> Job:
    return Job(job_id, words_swapped(bytes.fromhex(prev)), bytes.fromhex(V1["coinb1"]),
               bytes.fromhex(V1["coinb2"]), tuple(bytes.fromhex(b) for b in V1["branch"]),
               V1["version"], int(V1["nbits"], 16), ntime, True)


def template(session: int = 1, size: int = 4, mask: int = MASK, difficulty: float = 1.0,
             the_job: Job | None = None, pool: int = 0) -> JobTemplate:
    return JobTemplate(pool, session, the_job or job(), bytes.fromhex("0a0b0c0d"), size,
                       difficulty, mask, mask != 0)


def state(t: JobTemplate | None, urgent: bool = True, difficulty: float | None = None,
          url: str = "stratum+tcp://lab:3333") -> PoolState:
    return PoolState(t.pool if t else None, url if t else None, t,
                     difficulty if difficulty is not None else (t.difficulty if t else None),
                     urgent)


class Sink:
    def __init__(self) -> None:
        self.shares: list[ShareRequest] = []

    def __call__(self, share: ShareRequest) -> None:
        self.shares.append(share)


def source(clock: FakeClock | None = None) -> tuple[PoolWorkSource, Sink]:
    src = PoolWorkSource(LocalWorkSource(clock or FakeClock()))
    sink = Sink()
    src.submit_to = sink
    return src, sink


def test_headers_come_from_the_job_with_a_new_extranonce2_each():
    src, _ = source()
    t = template()
    src.on_state(state(t))
    assert src.clean_pending(0.0)
    works = [src.next_work(0.0) for _ in range(5)]
    assert not src.clean_pending(0.0)
    assert works[0].clean and not any(w.clean for w in works[1:])
    origins = [w.origin for w in works]
    assert all(isinstance(o, PoolWork) for o in origins)
    assert [o.extranonce2.hex() for o in origins] == [
        "00000000", "01000000", "02000000", "03000000", "04000000"]
    for w, o in zip(works, origins, strict=True):
        assert w.header80 == t.job.header(t.extranonce1, o.extranonce2)
        assert w.version_mask == MASK and o.job_id == "1" and o.session == 1
    assert len({w.header80 for w in works}) == 5


def test_a_repeated_job_under_a_new_id_never_repeats_a_header():
    """ESP-Miner #1587: the counter runs per pool and extranonce1, not per notify."""
    src, _ = source()
    src.on_state(state(template(the_job=job("1"))))
    first = {src.next_work(0.0).header80 for _ in range(3)}
    src.on_state(state(template(the_job=job("2")), urgent=False))
    second = {src.next_work(0.0).header80 for _ in range(3)}
    assert not first & second


def test_when_extranonce2_runs_out_ntime_moves_on():
    src, _ = source()
    t = template(size=1)
    src.on_state(state(t))
    works = [src.next_work(0.0) for _ in range(258)]
    assert works[255].origin.extranonce2 == b"\xff" and works[255].origin.ntime == t.job.ntime
    assert works[256].origin.extranonce2 == b"\x00"
    assert works[256].origin.ntime == t.job.ntime + 1
    assert len({w.header80 for w in works}) == 258


def test_local_work_while_no_pool_has_work_and_its_shares_are_not_sent():
    src, sink = source()
    work = src.next_work(0.0)
    assert work.origin is None and src.local_jobs == 1
    src.submit(Share(work, 1, 0, 5.0, 0, 0.0))
    assert src.local_shares == 1 and sink.shares == []
    src.on_state(state(template()))
    assert src.next_work(0.0).origin is not None
    src.on_state(state(None))  # the pool is gone
    assert src.clean_pending(0.0)
    assert src.next_work(0.0).origin is None


def share_of(work: Work, bits: int = 0, difficulty: float = 2.0, nonce: int = 7) -> Share:
    return Share(work, nonce, bits, difficulty, 0, 0.0)


def test_shares_are_handed_on_with_rolled_and_mask_when_they_meet_the_difficulty():
    src, sink = source()
    src.on_state(state(template(difficulty=2.0)))
    work = src.next_work(0.0)
    src.submit(share_of(work, difficulty=1.9))
    assert src.below_target == 1 and sink.shares == []
    src.submit(share_of(work, bits=0x0D880000, difficulty=2.0))
    (req,) = sink.shares
    assert req == ShareRequest(0, 1, "1", work.origin.extranonce2, work.origin.ntime, 7,
                               0x0D880000, 2.0)
    src.submit(share_of(work, bits=0x1, difficulty=5.0))  # a bit the pool did not grant
    assert src.outside_mask == 1 and len(sink.shares) == 1
    # the pool lowered the difficulty since: the lower one counts
    src.on_state(state(template(difficulty=2.0), urgent=False, difficulty=0.5))
    src.submit(share_of(work, difficulty=0.6, nonce=8))
    assert len(sink.shares) == 2


def test_without_a_granted_mask_the_chips_roll_nothing_and_no_bits_are_sent():
    src, sink = source()
    src.on_state(state(template(mask=0)))
    work = src.next_work(0.0)
    assert work.version_mask == 0
    src.submit(share_of(work))
    assert sink.shares[0].version_bits == 0


def test_without_pools_the_agent_mines_local_work(caplog):
    config: Any = type("C", (), {"pools": ()})()
    with caplog.at_level("INFO", logger="gridminer.pool"):
        work, stop = work_source(config, FakeClock())
    assert isinstance(work, LocalWorkSource)
    stop()
    assert "no [[pool]] configured: mining local work" in caplog.text


# -- the chain driver under pool work -----------------------------------------------------------

def drive(src: PoolWorkSource, chips: int = 2) -> tuple[FakeClock, FakeChainPort, ChainDriver]:
    clock = FakeClock()
    port = FakeChainPort("BM1370", chips)
    settings = ChainSettings(family="BM1370", chips=chips, nonce_difficulty=2.0**-28,
                             ramp_step_mhz=25.0, ramp_interval_s=0.01, job_interval_s=5.0)
    drv = ChainDriver(port, settings, clock, src, board=FakeBoard(port), threaded=False)
    drv.bring_up(timeout_s=5.0)
    return clock, port, drv


def version_reg(port: FakeChainPort) -> int:
    return port.chips[0].regs[asic.REG_VERSION_ROLLING]


@pytest.mark.parametrize("mask", [MASK, 0x00FFE000, 0])
def test_the_chips_roll_what_the_pool_granted(mask):
    src, _ = source()
    src.on_state(state(template(mask=mask)))
    _, port, drv = drive(src)
    assert version_reg(port) == 0x90000000 | (mask >> 13)
    assert drv.jobs_sent == 1


def test_stale_work_is_replaced_at_once_and_the_new_mask_written_first():
    src, _ = source()
    src.on_state(state(template()))
    clock, port, drv = drive(src)
    sent = drv.jobs_sent
    clock.advance(0.1)
    drv.poll(clock.monotonic())
    assert drv.jobs_sent == sent  # the cadence is 5 s
    src.on_state(state(template(session=2, mask=0x18000000)))
    drv.poll(clock.monotonic())
    assert drv.jobs_sent == sent + 1
    assert version_reg(port) == 0x90000000 | (0x18000000 >> 13)
    last = port.commands[-1]
    assert last.kind == "job" and port.commands[-2].reg == asic.REG_VERSION_ROLLING


def test_a_verified_nonce_becomes_a_share_the_lab_pool_would_accept():
    """Through the driver: the share's fields rebuild, in the lab pool's own arithmetic, the
    header the chip hashed (version bits included)."""
    src, sink = source()
    t = template(difficulty=2.0**-30)
    src.on_state(state(t))
    clock, port, drv = drive(src)
    bits = 0x0D880000
    port.emit_nonce(0, version_bits=bits)
    drv.poll(clock.monotonic())
    assert drv.stats(clock.monotonic()).valid == 1
    (req,) = sink.shares
    assert req.version_bits == bits
    lab = PoolJob("1", V1["prevhash"], V1["coinb1"], V1["coinb2"], tuple(V1["branch"]),
                  V1["version"], V1["nbits"], V1["ntime"], 791433)
    header = lab.header("0a0b0c0d", req.extranonce2.hex(), f"{req.ntime:08x}",
                        f"{req.nonce:08x}", (lab.version & ~MASK) | (req.version_bits & MASK))
    value = int.from_bytes(dsha(header), "little")
    assert hash_difficulty(value) == pytest.approx(req.difficulty)
    assert req.difficulty >= 2.0**-28
