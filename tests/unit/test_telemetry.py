"""Telemetry numbering, the outage buffer and the status map."""

from __future__ import annotations

import math

import cbor2

from agent.grid.contract import SEQ_MODULO
from agent.grid.telemetry import TelemetryBuffer, caps_map, encode, status_map

SNAP = {"mode": "mining", "power_w": 1234.5678, "target_w": 1300.0, "temp_c": math.nan,
        "hw_err": 3, "chips_ok": 4}


def drain(buf: TelemetryBuffer) -> list[dict]:
    out = []
    while (msg := buf.peek()) is not None:
        out.append(msg)
        buf.pop()
    return out


def test_message_carries_the_snapshot_and_leaves_unknowns_out() -> None:
    buf = TelemetryBuffer(10)
    buf.produce(SNAP, 42, {"setpoint_w": 1300, "cmd_id": b"i" * 16})
    msg = cbor2.loads(encode(drain(buf)[0]))
    assert msg["v"] == 1 and msg["seq"] == 0 and msg["ts"] == 42 and msg["lost"] == 0
    assert msg["power_w"] == 1234.568 and msg["setpoint_w"] == 1300 and msg["cmd_id"] == b"i" * 16
    assert "temp_c" not in msg and "energy_wh" not in msg


def test_seq_wraps_at_2_to_the_32() -> None:
    buf = TelemetryBuffer(10)
    buf.seq = SEQ_MODULO - 2
    for _ in range(3):
        buf.produce(SNAP, 0)
    assert [m["seq"] for m in drain(buf)] == [SEQ_MODULO - 2, SEQ_MODULO - 1, 0]


def test_full_buffer_drops_the_oldest_and_counts_them() -> None:
    buf = TelemetryBuffer(5)
    for i in range(12):
        buf.produce(SNAP, i)
    msgs = drain(buf)
    assert [m["seq"] for m in msgs] == [7, 8, 9, 10, 11]
    assert all(m["lost"] == 7 for m in msgs)
    assert msgs[0]["seq"] - 0 == msgs[0]["lost"]  # the gap is exactly what was dropped


def test_status_map_has_caps_and_state() -> None:
    caps = {"min_w": 100, "max_w": 3000.0, "ramp_max_w_s": 500, "chips": 4,
            "chip_model": "BM1370", "hashrate_max_ghs": 4000.0, "junk": 1}
    status = status_map("online", 7, "0.1.0", caps, "mining", 99)
    assert status == {"v": 1, "state": "online", "bd": 7, "fw": "0.1.0", "mode": "mining",
                      "ts": 99, "caps": {k: v for k, v in caps.items() if k != "junk"}}

    class Caps:
        min_w, max_w, ramp_max_w_s = 1.0, 2.0, 3.0

    assert caps_map(Caps()) == {"min_w": 1.0, "max_w": 2.0, "ramp_max_w_s": 3.0}


def test_optional_keys_are_published_when_the_snapshot_has_them() -> None:
    buf = TelemetryBuffer()
    buf.produce({"mode": "tripped", "board": "lost", "mode_reason": "sensor_stale: 12 s",
                 "pool": "stratum+tcp://p:3333", "pool_accepted": 7}, 1)
    buf.produce({"mode": "mining"}, 2)
    first, second = buf.peek(), None
    buf.pop()
    second = buf.peek()
    assert first is not None and second is not None
    assert first["board"] == "lost" and first["mode_reason"] == "sensor_stale: 12 s"
    assert first["pool"] == "stratum+tcp://p:3333" and first["pool_accepted"] == 7
    assert "board" not in second and "pool" not in second  # absent, not null
