"""The agent's pool client against the lab pool over real loopback TCP (and TLS): shares mined
here with the SHA-256d engine, checked by the pool with hashlib on its own; version rolling on
and off, a block change, failover and the way back, and a pool that misbehaves."""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.chain.work import Share, Work, hash_difficulty
from agent.clock import SystemClock
from agent.hashing import scan, sha256d
from agent.pool import PoolEndpoint, PoolMining, PoolTiming
from hil.broker import CertificateAuthority
from hil.pool import LabPool
from tests.support.polling import wait_until

DIFFICULTY = 2.0**-14  # ~16 k hashes a share
FAST = PoolTiming(failover_after_s=0.6, retry_min_s=0.05, retry_max_s=0.2,
                  connect_timeout_s=2.0, silence_timeout_s=30.0, status_period_s=0)


def find_share(work: Work, difficulty: float, version_bits: int = 0, start: int = 0) -> Share:
    """Mine `work` until a nonce meets `difficulty` (with `version_bits` rolled in)."""
    target = int(0xFFFF * 2**208 / difficulty)
    header = work.header(0, version_bits)
    for base in range(start, 2**32, 1 << 20):
        found = scan(header, base, 1 << 20, target)
        if found:
            nonce = found[0]
            value = int.from_bytes(sha256d(work.header(nonce, version_bits)), "little")
            return Share(work, nonce, version_bits, hash_difficulty(value), 0, 0.0)
    raise AssertionError("no share")


class Miner:
    """The agent's pool client and work source, without a chain."""

    def __init__(self, *pools: LabPool, timing: PoolTiming = FAST, user: str = "bc1q.rig",
                 **options: Any) -> None:
        endpoints = [PoolEndpoint.from_url(p.url, user, **options) for p in pools]
        self.mining = PoolMining(endpoints, SystemClock(), timing=timing)
        self.source = self.mining.work
        self.mining.start()

    def work(self, pool: int | None = None, timeout_s: float = 5.0) -> Work:
        """Pool work (from pool index `pool`, when given)."""
        def ready() -> bool:
            state = self.source.state
            return state is not None and state.template is not None and \
                (pool is None or state.active == pool)
        wait_until(ready, timeout_s, "pool work")
        return self.source.next_work(time.monotonic())

    def figures(self, pool: int = 0) -> dict[str, Any]:
        return self.mining.client.snapshot()[pool]

    def stop(self) -> None:
        self.mining.stop()


@pytest.fixture
def miners(no_leaks) -> Iterator[Callable[..., Miner]]:
    made: list[Miner] = []
    pools: list[LabPool] = []

    def make(*lab: LabPool, **kw: Any) -> Miner:
        pools.extend(lab)
        m = Miner(*lab, **kw)
        made.append(m)
        return m

    yield make
    for m in made:
        m.stop()
    for p in pools:
        p.stop()


def lab(**kw: Any) -> LabPool:
    kw.setdefault("difficulty", DIFFICULTY)
    return LabPool(**kw).start()


def test_shares_with_rolled_version_bits_are_accepted(miners):
    pool = lab()
    m = miners(pool, suggest_difficulty=0.001)
    work = m.work()
    assert work.version_mask == 0x1FFFE000
    miner = pool.miners[0]
    assert miner.configure_params == [["version-rolling"], {"version-rolling.mask": "1fffe000"}]
    assert miner.user_agent.startswith("gridminer") and miner.suggested == 0.001
    for bits in (0x00002000, 0x0D880000, 0x1FFFE000):
        m.source.submit(find_share(work, DIFFICULTY, bits))
    wait_until(lambda: pool.counts["accepted"] == 3, 5, "three shares accepted")
    assert [s.params for s in pool.shares] == [6, 6, 6]
    assert [s.version_bits for s in pool.shares] == [0x00002000, 0x0D880000, 0x1FFFE000]
    wait_until(lambda: m.figures()["accepted"] == 3, 5, "three acceptances counted")
    figures = m.figures()
    assert figures["rejected_total"] == 0 and figures["difficulty"] == DIFFICULTY
    assert figures["version_mask"] == 0x1FFFE000 and figures["active"]
    telemetry = m.source.figures()
    assert telemetry["pool"] == pool.url and telemetry["pool_accepted"] == 3
    assert telemetry["pool_rejected"] == 0 and telemetry["pool_hashrate_ghs"] > 0
    assert pool.counts["invalid"] == 0


@pytest.mark.parametrize("configure", ["refuse", "error"])
def test_a_pool_that_refuses_version_rolling_gets_five_params_and_no_bits(miners, configure):
    pool = lab(configure=configure)
    m = miners(pool)
    work = m.work()
    assert work.version_mask == 0
    m.source.submit(find_share(work, DIFFICULTY))
    m.source.submit(find_share(work, DIFFICULTY, 0x2000))  # rolled: not allowed, not sent
    wait_until(lambda: pool.counts["accepted"] == 1, 5, "a share accepted")
    assert [s.params for s in pool.shares] == [5]
    assert m.source.outside_mask == 1 and pool.counts["invalid"] == 0


def test_a_block_change_makes_old_work_stale_at_once(miners):
    pool = lab()
    m = miners(pool)
    old = m.work()
    assert not m.source.clean_pending(time.monotonic())
    pool.new_block()
    wait_until(lambda: m.source.clean_pending(time.monotonic()), 5, "clean work")
    new = m.source.next_work(time.monotonic())
    assert new.clean and new.origin.job_id != old.origin.job_id
    assert new.header80[4:36] != old.header80[4:36]  # the next block's prevhash
    m.source.submit(find_share(old, DIFFICULTY))
    m.source.submit(find_share(new, DIFFICULTY))
    wait_until(lambda: pool.counts["accepted"] == 1, 5, "a share accepted")
    wait_until(lambda: m.figures()["dropped"].get("stale") == 1, 5, "a stale drop")
    assert pool.counts["stale"] == 0 and len(pool.shares) == 1  # the stale one never went out


def test_failover_to_the_next_pool_and_back_and_no_share_crosses(miners):
    first, second = lab(), lab(configure="refuse")
    m = miners(first, second)
    from_first = m.work(pool=0)
    first.go_down()
    t0 = time.monotonic()
    from_second = m.work(pool=1, timeout_s=5.0)
    assert time.monotonic() - t0 < 3.0
    assert from_second.version_mask == 0  # the second pool's grant, not the first's
    m.source.submit(find_share(from_first, DIFFICULTY))  # its pool is gone: never sent
    m.source.submit(find_share(from_second, DIFFICULTY))
    wait_until(lambda: second.counts["accepted"] == 1, 5, "a share at the second pool")
    wait_until(lambda: m.figures(0)["dropped"].get("stale") == 1, 5, "a stale drop")
    assert len(second.shares) == 1 and first.shares == []
    first.come_up()
    back = m.work(pool=0, timeout_s=5.0)
    assert back.version_mask == 0x1FFFE000
    # the second pool is let go once the first has work again
    wait_until(lambda: not second.connected(), 5, "the second pool let go")
    m.source.submit(find_share(back, DIFFICULTY, 0x4000))
    wait_until(lambda: first.counts["accepted"] == 1, 5, "a share at the first pool")
    assert first.counts["invalid"] == second.counts["invalid"] == 0
    assert m.figures(0)["connect_failures"] >= 1


@pytest.fixture
def tls_pool(tmp_path: Path) -> tuple[LabPool, str]:
    """A lab pool behind TLS with a certificate from a throwaway CA (and that CA's file)."""
    ca = CertificateAuthority(tmp_path)
    cert = ca.issue("pool", server=True)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert.cert_file, cert.key_file)
    return lab(tls=context), ca.ca_file


def test_tls(miners, tls_pool):
    pool, ca_file = tls_pool
    assert pool.url.startswith("stratum+ssl://")
    m = miners(pool, ca_file=ca_file)
    work = m.work()
    m.source.submit(find_share(work, DIFFICULTY, 0x2000))
    wait_until(lambda: pool.counts["accepted"] == 1, 5, "a share accepted")


def test_tls_with_an_unknown_certificate_authority_fails_and_says_so(miners, tls_pool):
    pool, _ = tls_pool
    m = miners(pool)  # the system CAs do not know the lab's
    wait_until(lambda: m.figures()["connect_failures"] >= 1, 5, "a connect failure")
    assert "certificate" in (m.figures()["last_error"] or "").lower()
    assert m.source.state is None or m.source.state.template is None


def test_a_misbehaving_pool_is_survived(miners):
    pool = lab()
    m = miners(pool, extranonce_subscribe=True)
    m.work()
    pool.send_raw(b"garbage\n{\"id\": null, \"method\": \"mining.notify\", \"params\": [1]}\n"
                  + b"x" * 600_000 + b"\n[]\n")
    pool.show_message("maintenance at noon")
    pool.ping()
    pool.get_version()
    wait_until(lambda: pool.counts["pongs"] == 1, 5, "a pong")
    wait_until(lambda: any(isinstance(r, str) and r.startswith("gridminer")
                           for r in pool.miners[0].replies), 5, "the version reply")
    bad = m.figures()["bad_lines"]
    assert bad["not JSON"] == 1 and bad["mining.notify: params"] == 1
    assert bad["line too long"] == 1 and bad["not a JSON object"] == 1
    assert m.figures()["messages"] == ["maintenance at noon"]
    # it goes on: fractional difficulty, a new mask, a new extranonce1
    pool.set_difficulty(DIFFICULTY * 1.5)
    wait_until(lambda: m.source.state.difficulty == DIFFICULTY * 1.5, 5, "the new difficulty")
    pool.set_version_mask(0x00FFE000)
    wait_until(lambda: m.source.state.template.version_mask == 0x00FFE000, 5,
               "the new mask")
    assert pool.miners[0].extranonce_subscribed
    en1 = pool.set_extranonce()
    wait_until(lambda: m.source.state.template.extranonce1.hex() == en1, 5,
               "the new extranonce1")
    work = m.source.next_work(time.monotonic())
    m.source.submit(find_share(work, DIFFICULTY * 1.5, 0x00802000))
    wait_until(lambda: pool.counts["accepted"] == 1, 5, "a share accepted")
    assert pool.shares[-1].required == DIFFICULTY * 1.5


def test_client_reconnect_is_followed_within_the_pool(miners):
    pool = lab()
    m = miners(pool)
    m.work()
    pool.reconnect(None, pool.port, 0)
    wait_until(lambda: pool.counts["connections"] == 2, 5, "the reconnection")
    m.source.submit(find_share(m.work(), DIFFICULTY))
    wait_until(lambda: pool.counts["accepted"] == 1, 5, "a share accepted")
    assert m.figures()["redirects"] == 1
    pool.reconnect("evil.example.net", 3333, 0)  # elsewhere: refused
    wait_until(lambda: m.figures()["bad_lines"].get("client.reconnect to another domain") == 1,
               5, "the refused redirect")
    assert pool.counts["connections"] == 2


def test_refused_authorization_fails_over(miners):
    first, second = lab(authorize=False), lab()
    m = miners(first, second)
    m.work(pool=1, timeout_s=5.0)
    assert m.figures(0)["auth_failures"] >= 1
    assert first.counts["auth_refused"] >= 1


def test_a_pool_that_hangs_up_on_configure_is_asked_again_without_it(miners):
    pool = lab(configure="drop")
    m = miners(pool)
    work = m.work(timeout_s=5.0)
    assert work.version_mask == 0
    assert pool.counts["configures"] == 1 and pool.counts["connections"] == 2
    m.source.submit(find_share(work, DIFFICULTY))
    wait_until(lambda: pool.counts["accepted"] == 1, 5, "a share accepted")
