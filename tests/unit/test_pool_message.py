"""Pool lines: the shapes pools send (notes/stratum.md §1, V8 fixtures) parse; malformed ones
are rejected with a stable reason, never with another exception."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.pool.errors import RejectedLine
from agent.pool.header import Job
from agent.pool.message import (
    Reconnect,
    Reply,
    Request,
    SetDifficulty,
    SetExtranonce,
    SetVersionMask,
    ShowMessage,
    parse_configure_result,
    parse_line,
    parse_subscribe_result,
)

NOTIFY = ('{"id":null,"method":"mining.notify","params":["1f9a56282c",'
          '"bf44fd3513dc7b837d60e5c628b572b448d204a8000007490000000000000000","01","02",'
          '["4ea53a030256c37391b891b0d5060537df63944ce3fcd45121215596376bb3db"],'
          '"20000004","1705dd01","64658bd8",%s]}')


def reason(line: str | bytes) -> str:
    with pytest.raises(RejectedLine) as exc:
        parse_line(line.encode() if isinstance(line, str) else line)
    return exc.value.reason


@pytest.mark.parametrize("clean", ["false", "true"])
def test_notify_both_clean_flags(clean):
    job = parse_line((NOTIFY % clean).encode())
    assert isinstance(job, Job)
    assert job.job_id == "1f9a56282c" and job.clean is (clean == "true")
    assert job.version == 0x20000004 and job.nbits == 0x1705DD01 and job.ntime == 0x64658BD8
    assert job.prevhash.hex().startswith("35fd44bf")  # words swapped into header order
    assert job.coinb1 == b"\x01" and len(job.branch) == 1


def test_notify_with_ten_params_reads_the_clean_flag_last():
    obj = json.loads(NOTIFY % "true")
    obj["params"][8] = "extra"
    obj["params"].append(True)
    msg = parse_line(json.dumps(obj).encode())
    assert isinstance(msg, Job) and msg.clean is True


@pytest.mark.parametrize(("line", "value"), [
    ('{"id":null,"method":"mining.set_difficulty","params":[1638]}', 1638.0),
    ('{"id":null,"method":"mining.set_difficulty","params":[100.5]}', 100.5),
    ('{"id":null,"method":"mining.set_difficulty","params":[0.001]}', 0.001),
])
def test_set_difficulty_integer_and_fractional(line, value):
    assert parse_line(line.encode()) == SetDifficulty(value)


def test_the_other_notifications_of_v8():
    assert parse_line(b'{"params":["1fffe000"], "id":null, "method": "mining.set_version_mask"}'
                      ) == SetVersionMask(0x1FFFE000)
    assert parse_line(b'{"id":null,"method":"mining.set_extranonce","params":["deadbeef",8]}'
                      ) == SetExtranonce(bytes.fromhex("deadbeef"), 8)
    assert parse_line(b'{"id":null,"method":"client.show_message","params":["Welcome!"]}'
                      ) == ShowMessage("Welcome!")
    assert parse_line(b'{"id":10,"method":"client.get_version","params":[]}') == \
        Request("client.get_version", 10)
    assert parse_line(b'{"params":[],"id":42,"method":"mining.ping"}') == \
        Request("mining.ping", 42)
    assert parse_line(b'{"id":null,"method":"client.reconnect","params":[]}') == \
        Reconnect(None, None, 0.0)
    assert parse_line(b'{"id":null,"method":"client.reconnect",'
                      b'"params":["stratum.example.com","3334",10]}') == \
        Reconnect("stratum.example.com", 3334, 10.0)
    assert parse_line(b'{"id":7,"method":"mining.hashrate","params":[]}') == \
        Request("mining.hashrate", 7)


@pytest.mark.parametrize(("line", "code", "kind"), [
    ('{"id":4,"result":null,"error":[21,"Job not found",""]}', 21, "stale"),
    ('{"result":null,"error":[23,"Above target",null],"id":5}', 23, "low_difficulty"),
    ('{"reject-reason":"Above target 2","result":false,"error":null,"id":8}', None,
     "low_difficulty"),
    ('{"result":false,"error":"Stale","id":618}', None, "stale"),
    ('{"result":null,"error":"Stale","id":618}', None, "stale"),
    ('{"jsonrpc":"2.0","error":{"code":22,"message":"duplicate share","data":null},"id":42}', 22,
     "duplicate"),
    ('{"id":9,"result":null,"error":[24,"Unauthorized worker",null]}', 24, "unauthorized"),
    ('{"id":9,"result":null,"error":[25,"Not subscribed",null]}', 25, "not_subscribed"),
    ('{"id":9,"result":null,"error":[20,"Invalid version mask",null]}', 20, "other"),
])
def test_error_shapes_and_kinds(line, code, kind):
    msg = parse_line(line.encode())
    assert isinstance(msg, Reply) and msg.error is not None
    assert msg.error.code == code and msg.error.kind == kind


@pytest.mark.parametrize("req_id", [4, 5, 32769, 65536])
def test_true_results(req_id):
    assert parse_line(json.dumps({"id": req_id, "error": None, "result": True}).encode()) == \
        Reply(req_id, True, None)


def test_subscribe_results_in_any_order_and_sizes():
    assert parse_subscribe_result([[["mining.notify", "695482c0"]], "4de05269", 8]) == \
        (bytes.fromhex("4de05269"), 8)
    ocean = [[["mining.notify", "1e0a00001"], ["mining.set_difficulty", "1e0a00002"]],
             "1e0a0000", 8]
    assert parse_subscribe_result(ocean) == (bytes.fromhex("1e0a0000"), 8)
    nicehash = [[["mining.set_difficulty", "02187bbb75009a23a3"],
                 ["mining.notify", "02187bbb75009a23a3"]], "02187bbb75009a23a3", 3]
    assert parse_subscribe_result(nicehash) == (bytes.fromhex("02187bbb75009a23a3"), 3)
    with pytest.raises(RejectedLine):
        parse_subscribe_result([[["mining.notify", "x"]], "4de05269"])  # 2 items
    with pytest.raises(RejectedLine):
        parse_subscribe_result([[], "4de05269", 0])


def test_configure_results():
    assert parse_configure_result({"version-rolling": True,
                                   "version-rolling.mask": "1fffe000"}) == 0x1FFFE000
    assert parse_configure_result({"version-rolling": True,
                                   "version-rolling.mask": "18000000"}) == 0x18000000
    assert parse_configure_result({"version-rolling": False}) is None
    assert parse_configure_result({"version-rolling": True}) is None
    assert parse_configure_result({"version-rolling": "yes", "version-rolling.mask": "1"}) \
        is None
    assert parse_configure_result(None) is None


@pytest.mark.parametrize(("line", "why"), [
    ("not json", "not JSON"),
    ("[1,2]", "not a JSON object"),
    ('{"id":1}', "neither a method nor a reply"),
    ('{"id":"x","result":true,"error":null}', "reply id"),
    ('{"id":null,"method":5,"params":[]}', "method is not a string"),
    ('{"id":null,"method":"mining.notify","params":{}}', "mining.notify: params"),
    ('{"id":null,"method":"mining.notify","params":["1"]}', "mining.notify: params"),
    (NOTIFY.replace('"bf44fd35', '"zz44fd35') % "true", "mining.notify: prevhash"),
    (NOTIFY.replace('"20000004"', '"2000000400"') % "true", "mining.notify: version"),
    (NOTIFY.replace('"01","02"', '"0","02"') % "true", "mining.notify: coinb1"),
    (NOTIFY % '"yes"', "mining.notify: clean_jobs"),
    ('{"id":null,"method":"mining.set_difficulty","params":[0]}', "mining.set_difficulty: "
                                                                   "difficulty"),
    ('{"id":null,"method":"mining.set_difficulty","params":[-3]}', "mining.set_difficulty: "
                                                                    "difficulty"),
    ('{"id":null,"method":"mining.set_difficulty","params":[true]}', "mining.set_difficulty: "
                                                                      "difficulty"),
    ('{"id":null,"method":"mining.set_difficulty","params":[]}', "mining.set_difficulty: "
                                                                  "difficulty"),
    ('{"id":null,"method":"mining.set_version_mask","params":["xyz"]}',
     "mining.set_version_mask: mask"),
    ('{"id":null,"method":"mining.set_extranonce","params":["00",0]}',
     "mining.set_extranonce: extranonce2_size"),
    ('{"id":null,"method":"client.reconnect","params":["h",70000,0]}', "client.reconnect: port"),
    ('{"id":null,"method":"client.reconnect","params":["h",1,-1]}', "client.reconnect: wait"),
    ('{"id":null,"method":"mining.ping","params":[]}', "mining.ping: id"),
    (b'{"id":1,"result":"\xff"}', "not UTF-8"),
    ("[" * 100000, "not JSON"),
])
def test_malformed_lines_name_their_reason(line, why):
    assert reason(line) == why


@given(st.binary(max_size=300))
def test_any_bytes_parse_or_are_rejected(data):
    try:
        parse_line(data)
    except RejectedLine:
        pass


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=10)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=5), max_leaves=30),
       st.sampled_from(["mining.notify", "mining.set_difficulty", "mining.set_version_mask",
                        "mining.set_extranonce", "client.reconnect", "client.show_message",
                        "mining.ping", "client.get_version", None]))
def test_any_json_params_parse_or_are_rejected(params, method):
    obj = {"id": 1, "method": method, "params": params, "result": params, "error": params}
    try:
        parse_line(json.dumps(obj).encode())
    except RejectedLine:
        pass
