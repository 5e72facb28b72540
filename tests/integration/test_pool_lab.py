"""The lab pool itself, spoken to with hand-written JSON lines over a plain socket (not the agent's
client): it accepts the published mainnet share of its first job and rejects every share that is
not valid, counting each by what was wrong. Without that, "0 invalid shares" would prove nothing."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from hil.pool import MAINNET_791433, LabPool

SHARE = MAINNET_791433["published_share"]  # difficulty 683.5 on the first job


class RawMiner:
    def __init__(self, pool: LabPool) -> None:
        self.sock = socket.create_connection((pool.host, pool.port), timeout=5)
        self.buf = b""
        self.ids = iter(range(1, 1000))

    def call(self, method: str, params: list[Any]) -> dict[str, Any]:
        req_id = next(self.ids)
        self.sock.sendall(json.dumps({"id": req_id, "method": method,
                                      "params": params}).encode() + b"\n")
        while True:
            msg = self.read()
            if msg.get("id") == req_id:
                return msg

    def read(self) -> dict[str, Any]:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            assert chunk, "the pool hung up"
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def until(self, method: str) -> dict[str, Any]:
        while True:
            msg = self.read()
            if msg.get("method") == method:
                return msg

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def pool() -> Iterator[LabPool]:
    with LabPool(difficulty=683, extranonce1=SHARE["extranonce1"], extranonce2_size=8) as p:
        yield p


@pytest.fixture
def miner(pool: LabPool) -> Iterator[RawMiner]:
    m = RawMiner(pool)
    yield m
    m.close()


def submit(miner: RawMiner, job_id: str, **changes: str) -> dict[str, Any]:
    fields = {"extranonce2": SHARE["extranonce2"], "ntime": SHARE["ntime"],
              "nonce": SHARE["nonce"], **changes}
    params = ["w1", job_id, fields["extranonce2"], fields["ntime"], fields["nonce"]]
    if "bits" in fields:
        params.append(fields["bits"])
    return miner.call("mining.submit", params)


def test_the_published_share_is_accepted_and_every_bad_one_is_rejected(pool, miner):
    configured = miner.call("mining.configure", [["version-rolling"],
                                                 {"version-rolling.mask": "ffffffff"}])
    assert configured["result"] == {"version-rolling": True,
                                    "version-rolling.mask": "1fffe000"}
    sub = miner.call("mining.subscribe", ["raw/1"])
    assert sub["result"][1:] == [SHARE["extranonce1"], 8]
    assert miner.call("mining.authorize", ["w1", "x"])["result"] is True
    assert miner.until("mining.set_difficulty")["params"] == [683.0]
    job_id = miner.until("mining.notify")["params"][0]
    assert submit(miner, job_id, bits="00000000")["result"] is True
    assert submit(miner, job_id, bits="00000000")["error"][0] == 22  # duplicate
    assert submit(miner, job_id, bits="00002000")["error"][:2] == [23, "Above target"]
    assert submit(miner, job_id, nonce="0a029ed2")["error"][:2] == [23, "Above target"]
    assert submit(miner, job_id, bits="00000001")["error"][:2] == [20, "Invalid version mask"]
    assert submit(miner, job_id, ntime="647025b4")["error"][:2] == [20, "Ntime out of range"]
    assert submit(miner, job_id, extranonce2="01000000")["error"][:2] == \
        [20, "Invalid nonce2 length"]
    assert submit(miner, "zz")["error"][:2] == [21, "Job not found"]
    assert miner.call("mining.submit", ["w2", job_id, SHARE["extranonce2"], SHARE["ntime"],
                                        SHARE["nonce"]])["error"][0] == 24
    pool.new_block()
    assert miner.until("mining.notify")["params"][8] is True
    assert submit(miner, job_id, nonce="0a029ed3")["error"][:2] == [21, "Stale"]
    assert (pool.counts["accepted"], pool.counts["duplicate"], pool.counts["invalid"],
            pool.counts["stale"], pool.counts["unauthorized"]) == (1, 1, 5, 2, 1)
    assert pool.accepted_difficulty == 683.0


def test_a_higher_difficulty_makes_the_published_share_invalid(pool, miner):
    miner.call("mining.subscribe", ["raw/1"])
    miner.call("mining.authorize", ["w1", "x"])
    job_id = miner.until("mining.notify")["params"][0]
    pool.set_difficulty(684, notify=False)
    assert miner.until("mining.set_difficulty")["params"] == [684.0]
    # ckpool's rule: a job sent before the change counts at the lower of the two
    assert submit(miner, job_id)["result"] is True
    new = pool.new_job()
    miner.until("mining.notify")
    # the same fields on the new job (new branch) make another header: no share
    assert submit(miner, new.job_id, nonce="0a029ed4")["error"][0] == 23


def test_without_version_rolling_a_sixth_param_with_bits_is_invalid():
    with LabPool(configure="refuse", difficulty=683, extranonce1=SHARE["extranonce1"],
                 extranonce2_size=8) as pool:
        miner = RawMiner(pool)
        try:
            assert miner.call("mining.configure", [["version-rolling"], {}])["result"] == \
                {"version-rolling": False}
            miner.call("mining.subscribe", [])
            assert miner.call("mining.authorize", [""])["error"][0] == 24
            assert miner.call("mining.authorize", ["w1"])["result"] is True
            job_id = miner.until("mining.notify")["params"][0]
            assert submit(miner, job_id, bits="00002000")["error"][:2] == \
                [20, "Invalid version mask"]
            assert submit(miner, job_id)["result"] is True
        finally:
            miner.close()
    assert pool.counts["auth_refused"] == 1
    assert (pool.counts["accepted"], pool.counts["invalid"]) == (1, 1)


def test_a_rejected_burst_answers_valid_shares_with_its_code_and_every_verdict_is_counted(
        pool, miner):
    """The `reject` cue of a scenario: while it is on, a valid share gets the cue's error code
    (the agent counts it rejected); every verdict the pool wrote is marked answered, so the
    rig can compare the pool's counts with the agent's."""
    miner.call("mining.subscribe", ["raw/1"])
    miner.call("mining.authorize", ["w1", "x"])
    job_id = miner.until("mining.notify")["params"][0]
    pool.reject_shares(23, "Low difficulty share")
    assert submit(miner, job_id)["error"][:2] == [23, "Low difficulty share"]
    assert submit(miner, job_id, nonce="0a029ed2")["error"][:2] == [23, "Above target"]
    pool.accept_shares()
    assert submit(miner, job_id, extranonce2="0200000000000000")["error"][0] == 23  # not a share
    deadline = time.monotonic() + 5  # the pool counts a verdict once it is written
    while len(pool.shares) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert (pool.counts["rejected"], pool.counts["invalid"], pool.counts["accepted"]) == (1, 2, 0)
    assert pool.answered("rejected") == 1 and pool.answered("invalid") == 2
    assert pool.accepted_difficulty == 0.0

