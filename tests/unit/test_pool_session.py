"""One pool connection's protocol without sockets: handshake order, replies matched by id,
version rolling granted or refused, jobs and staleness, difficulty, shares and their results,
and a pool's bad lines counted, never raised."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agent.errors import ConfigError
from agent.pool.endpoint import PoolEndpoint, parse_url, redirect_allowed
from agent.pool.session import (
    SUBMIT_REPLY_S,
    Failed,
    LineSplitter,
    Redirect,
    ShareRequest,
    StratumSession,
    WorkChanged,
)
from agent.pool.stats import PoolStats

PREV = "bf44fd3513dc7b837d60e5c628b572b448d204a8000007490000000000000000"
OTHER_PREV = "00" * 28 + "00000000"


def make(**options: Any) -> StratumSession:
    endpoint = PoolEndpoint.from_url("stratum+tcp://pool.example.com:3333", "bc1q.rig1",
                                     **options)
    session = StratumSession(endpoint, 0, 7, PoolStats(endpoint.url), 0.0, "gridminer/0.1.0")
    session.start()
    return session


def lines(session: StratumSession) -> list[dict[str, Any]]:
    return [json.loads(line) for line in session.output().splitlines()]


def feed(session: StratumSession, *objs: dict[str, Any], now: float = 1.0) -> list[Any]:
    return session.feed(b"".join(json.dumps(o).encode() + b"\n" for o in objs), now)


def notify(job_id: str, clean: bool = False, prev: str = PREV,
           ntime: str = "64658bd8") -> dict[str, Any]:
    return {"id": None, "method": "mining.notify",
            "params": [job_id, prev, "01000000", "ffffffff", [], "20000004", "1705dd01", ntime,
                       clean]}


def result(req_id: int, value: Any = True, error: Any = None) -> dict[str, Any]:
    return {"id": req_id, "result": value, "error": error}


GRANT = {"version-rolling": True, "version-rolling.mask": "1fffe000"}


def ready(session: StratumSession, configure: Any = GRANT, diff: float = 1.0) -> list[Any]:
    lines(session)
    return feed(session,
                {"id": None, "method": "mining.set_difficulty", "params": [diff]},
                result(1, configure), result(2, [[["mining.notify", "ab"]], "0a0b0c0d", 4]),
                result(3, True), notify("j1", clean=True))


def share(session: StratumSession, job_id: str = "j1", nonce: int = 1, bits: int = 0,
          difficulty: float = 10.0, en2: bytes = b"\0\0\0\1") -> ShareRequest:
    return ShareRequest(0, session.serial, job_id, en2, 0x64658BD8, nonce, bits, difficulty)


def test_handshake_is_configure_subscribe_authorize_back_to_back():
    s = make(suggest_difficulty=512.0, extranonce_subscribe=True)
    sent = lines(s)
    assert [m["method"] for m in sent] == ["mining.configure", "mining.subscribe",
                                          "mining.authorize"]
    assert [m["id"] for m in sent] == [1, 2, 3]
    assert sent[0]["params"] == [["version-rolling"], {"version-rolling.mask": "1fffe000"}]
    assert sent[1]["params"] == ["gridminer/0.1.0"]
    assert sent[2]["params"] == ["bc1q.rig1", "x"]
    feed(s, result(1, GRANT), result(2, [[["mining.notify", "ab"]], "0a0b0c0d", 4]))
    assert lines(s) == []  # nothing more before the authorization
    feed(s, result(3, True))
    after = lines(s)
    assert [(m["method"], m["params"]) for m in after] == [
        ("mining.suggest_difficulty", [512]), ("mining.extranonce.subscribe", [])]


def test_without_version_rolling_no_configure_is_sent():
    s = make(version_rolling=False)
    assert [m["method"] for m in lines(s)] == ["mining.subscribe", "mining.authorize"]


def test_notifications_before_the_replies_are_kept_and_ids_decide_what_a_reply_is():
    s = make()
    lines(s)
    # OCEAN sends set_difficulty before the configure reply (ESP-Miner #190), a notify early
    assert feed(s, {"id": None, "method": "mining.set_difficulty", "params": [0.5]},
                notify("j0", clean=True), result(1, GRANT)) == []
    assert s.rolling and s.version_mask == 0x1FFFE000 and s.template() is None
    feed(s, result(2, [[["mining.notify", "ab"]], "0a0b0c0d", 4]))
    events = feed(s, result(3, True))
    assert events == [WorkChanged(urgent=True)]
    t = s.template()
    assert t is not None and t.job.job_id == "j0" and t.difficulty == 0.5
    assert t.extranonce1 == bytes.fromhex("0a0b0c0d") and t.extranonce2_size == 4
    assert t.version_mask == 0x1FFFE000 and t.rolling


@pytest.mark.parametrize(("reply", "error"), [
    ({"version-rolling": False}, None),
    (None, [20, "Not supported.", None]),
    ({"version-rolling": True}, None),  # no mask: nothing granted
])
def test_a_pool_that_refuses_version_rolling_grants_no_bits(reply, error):
    s = make()
    lines(s)
    feed(s, result(1, reply, error), result(2, [[], "0a0b0c0d", 4]), result(3, True),
         notify("j1", clean=True))
    t = s.template()
    assert t is not None and t.version_mask == 0 and not t.rolling
    assert s.submit(share(s), 2.0) is None
    assert lines(s)[0]["params"] == ["bc1q.rig1", "j1", "00000001", "64658bd8", "00000001"]
    assert s.submit(share(s, nonce=2, bits=0x2000), 2.0) == "version bits outside the mask"


def test_a_configure_never_answered_means_no_rolling():
    s = make()
    lines(s)
    feed(s, result(2, [[], "0a0b0c0d", 4]), result(3, True), notify("j1", clean=True))
    assert not s.configure_answered
    t = s.template()
    assert t is not None and t.version_mask == 0 and not t.rolling
    s.submit(share(s), 2.0)
    assert len(lines(s)[0]["params"]) == 5


@pytest.mark.parametrize(("granted", "mask"), [
    ("ffffffff", 0x1FFFE000), ("18000000", 0x18000000), ("00003000", 0x00002000)])
def test_the_granted_mask_is_anded_with_what_the_chips_roll(granted, mask):
    s = make()
    ready(s, configure={"version-rolling": True, "version-rolling.mask": granted})
    assert s.version_mask == mask


def test_a_share_goes_out_with_six_params_and_its_result_is_counted():
    s = make()
    ready(s, diff=2.0)
    assert s.submit(share(s, bits=0x0D880000, difficulty=2.5), 2.0) is None
    sub = lines(s)[0]
    assert sub["method"] == "mining.submit"
    assert sub["params"] == ["bc1q.rig1", "j1", "00000001", "64658bd8", "00000001", "0d880000"]
    feed(s, result(sub["id"], True), now=3.0)
    snap = s.stats.snapshot(3.0)
    assert snap["submitted"] == 1 and snap["accepted"] == 1
    assert snap["accepted_difficulty"] == 2.0  # credited at the difficulty it was sent for
    assert snap["hashrate_ghs"] == pytest.approx(2.0 * 2**32 / 600 / 1e9, rel=1e-3)


@pytest.mark.parametrize(("error", "kind", "code"), [
    ([21, "Job not found", ""], "stale", 21), ([22, "Duplicate", None], "duplicate", 22),
    ([23, "Above target", None], "low_difficulty", 23),
    ([24, "Unauthorized worker", None], "unauthorized", 24),
    ([25, "Not subscribed", None], "not_subscribed", 25),
    ([20, "Invalid version mask", None], "other", 20)])
def test_rejections_are_counted_by_kind_and_code(error, kind, code):
    s = make()
    ready(s)
    s.submit(share(s), 2.0)
    sub = lines(s)[0]
    feed(s, result(sub["id"], None, error))
    snap = s.stats.snapshot(3.0)
    assert snap["rejected"] == {kind: 1} and snap["errors"] == {code: 1}
    assert snap["accepted"] == 0 and snap["stale"] == (1 if kind == "stale" else 0)


def test_shares_that_cannot_be_valid_are_not_sent():
    s = make()
    ready(s, diff=4.0)
    assert s.submit(share(s, difficulty=3.9), 2.0) == "below target"
    assert s.submit(share(s, job_id="nope"), 2.0) == "stale"
    assert s.submit(share(s, bits=0x1), 2.0) == "version bits outside the mask"
    other = ShareRequest(0, s.serial + 1, "j1", b"\0\0\0\1", 0x64658BD8, 1, 0, 10.0)
    assert s.submit(other, 2.0) == "stale"  # another connection's work
    assert s.submit(share(s), 2.0) is None
    assert s.submit(share(s), 2.0) == "duplicate"
    assert len(lines(s)) == 1
    assert s.stats.snapshot(2.0)["dropped"] == {
        "below target": 1, "stale": 2, "version bits outside the mask": 1, "duplicate": 1}


def test_clean_jobs_makes_earlier_jobs_stale_and_a_plain_notify_does_not():
    s = make()
    ready(s)
    assert feed(s, notify("j2")) == [WorkChanged(urgent=False)]
    assert s.submit(share(s, job_id="j1"), 2.0) is None  # still valid
    assert feed(s, notify("j3", clean=True)) == [WorkChanged(urgent=True)]
    assert s.submit(share(s, job_id="j2"), 2.0) == "stale"
    assert s.submit(share(s, job_id="j3"), 2.0) is None
    # a new prevhash is a new block even when the flag says otherwise (cgminer)
    assert feed(s, notify("j4", prev=OTHER_PREV)) == [WorkChanged(urgent=True)]
    assert s.submit(share(s, job_id="j3", nonce=9), 2.0) == "stale"


def test_a_difficulty_applies_to_later_jobs_and_old_jobs_keep_theirs():
    s = make()
    ready(s, diff=1.0)
    assert feed(s, {"id": None, "method": "mining.set_difficulty", "params": [8]}) == \
        [WorkChanged(urgent=False)]
    feed(s, notify("j2"))
    assert s.template().difficulty == 8.0
    assert s.submit(share(s, job_id="j1", difficulty=1.5), 2.0) is None  # min(1, 8)
    assert s.submit(share(s, job_id="j2", difficulty=1.5), 2.0) == "below target"
    # lowered: the old job's shares count at the new one
    feed(s, {"id": None, "method": "mining.set_difficulty", "params": [0.25]})
    assert s.submit(share(s, job_id="j2", nonce=3, difficulty=0.3), 2.0) is None


def test_set_version_mask_is_valid_at_once():
    s = make()
    ready(s)
    assert feed(s, {"id": None, "method": "mining.set_version_mask",
                    "params": ["00ffe000"]}) == [WorkChanged(urgent=True)]
    assert s.template().version_mask == 0x00FFE000
    assert s.submit(share(s, bits=0x10000000), 2.0) == "version bits outside the mask"
    assert s.submit(share(s, bits=0x00002000), 2.0) is None


def test_set_version_mask_without_negotiation_is_a_bad_line():
    s = make()
    ready(s, configure={"version-rolling": False})
    assert feed(s, {"id": None, "method": "mining.set_version_mask",
                    "params": ["1fffe000"]}) == []
    assert s.version_mask == 0
    assert s.stats.snapshot(1)["bad_lines"] == {
        "mining.set_version_mask: version rolling not negotiated": 1}


def test_set_extranonce_takes_effect_with_the_next_notify():
    s = make()
    ready(s)
    assert feed(s, {"id": None, "method": "mining.set_extranonce",
                    "params": ["0102030405", 3]}) == []
    assert s.template().extranonce1 == bytes.fromhex("0a0b0c0d")
    assert feed(s, notify("j2")) == [WorkChanged(urgent=True)]
    t = s.template()
    assert t.extranonce1 == bytes.fromhex("0102030405") and t.extranonce2_size == 3
    assert s.submit(share(s, job_id="j1"), 2.0) == "stale"  # built with the old extranonce1


def test_server_requests_are_answered():
    s = make()
    ready(s)
    assert feed(s, {"id": 42, "method": "mining.ping", "params": []},
                {"id": 10, "method": "client.get_version", "params": []},
                {"id": 11, "method": "mining.hashrate", "params": []},
                {"id": None, "method": "client.show_message", "params": ["hello miner"]}) == []
    assert lines(s) == [{"id": 42, "result": "pong", "error": None},
                        {"id": 10, "result": "gridminer/0.1.0", "error": None},
                        {"id": 11, "result": None, "error": [20, "Unsupported method", None]}]
    assert list(s.stats.messages) == ["hello miner"]
    assert s.stats.snapshot(1)["bad_lines"] == {"unknown method": 1}


def test_reconnect_is_an_event():
    s = make()
    ready(s)
    assert feed(s, {"id": None, "method": "client.reconnect",
                    "params": ["eu.example.com", 3334, 5]}) == [Redirect("eu.example.com", 3334,
                                                                        5.0)]


def test_refused_authorization_and_subscription_end_the_session():
    s = make()
    lines(s)
    events = feed(s, result(1, GRANT), result(2, [[], "00", 4]),
                  result(3, None, [24, "Unauthorized worker", None]))
    assert events == [Failed("worker 'bc1q.rig1' not authorized: Unauthorized worker")]
    assert s.stats.auth_failures == 1 and s.stats.snapshot(1)["errors"] == {24: 1}
    s = make()
    lines(s)
    assert isinstance(feed(s, result(2, None, [20, "go away", None]))[0], Failed)
    s = make()
    lines(s)
    assert isinstance(feed(s, result(2, [[], "00"]))[0], Failed)


def test_bad_lines_are_counted_and_the_session_goes_on():
    s = make()
    ready(s)
    junk = (b"garbage\n{\"id\":99,\"result\":true,\"error\":null}\n[]\n"
            b'{"id":null,"method":"mining.notify","params":["x"]}\n\n\r\n'
            b'{"id":null,"method":"mining.set_difficulty","params":["NaN"]}\n')
    assert s.feed(junk, 2.0) == []
    assert s.stats.snapshot(2)["bad_lines"] == {
        "not JSON": 1, "reply to no request": 1, "not a JSON object": 1,
        "mining.notify: params": 1, "mining.set_difficulty: difficulty": 1}
    assert s.template() is not None and s.submit(share(s), 3.0) is None


def test_an_overlong_line_is_skipped_to_its_end():
    split = LineSplitter(max_bytes=100)
    assert split.feed(b"a" * 150) == []
    assert split.feed(b"b" * 50 + b"\nok\n") == [b"ok"]
    assert split.overlong == 1
    assert split.feed(b"x" * 90 + b"y" * 20 + b"\nfine\n") == [b"fine"]
    assert split.overlong == 2
    assert split.feed(b"half") == [] and split.feed(b" line\n") == [b"half line"]


def test_unanswered_submits_are_counted():
    s = make()
    ready(s)
    s.submit(share(s), 2.0)
    s.submit(share(s, nonce=2), 2.0)
    s.expire(2.0 + SUBMIT_REPLY_S + 1)
    assert s.stats.unanswered == 2
    s.submit(share(s, nonce=3), 100.0)
    s.close()
    assert s.stats.unanswered == 3


@pytest.mark.parametrize(("url", "parsed"), [
    ("stratum+tcp://pool.example.com:3333", ("pool.example.com", 3333, False)),
    ("stratum+ssl://pool.example.com:443", ("pool.example.com", 443, True)),
    ("stratum+tcp://127.0.0.1:3333/", ("127.0.0.1", 3333, False)),
    ("stratum+tcp://[::1]:3333", ("::1", 3333, False)),
])
def test_pool_urls(url, parsed):
    assert parse_url(url) == parsed


@pytest.mark.parametrize("url", ["http://pool:3333", "stratum+tcp://pool", "pool:3333",
                                 "stratum+tcp://pool:99999", "stratum+tcp://po ol:1"])
def test_bad_pool_urls(url):
    with pytest.raises(ConfigError, match=r"pool\.url"):
        parse_url(url)


@pytest.mark.parametrize(("current", "target", "ok"), [
    ("stratum.example.com", None, True), ("stratum.example.com", "eu.example.com", True),
    ("stratum.example.com", "stratum.evil.com", False), ("127.0.0.1", "127.0.0.1", True),
    ("127.0.0.1", "10.0.0.1", False), ("example.com", "evil.com", False),
])
def test_reconnects_stay_in_the_pool_domain(current, target, ok):
    assert redirect_allowed(current, target) is ok
