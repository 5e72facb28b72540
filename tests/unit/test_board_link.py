"""Board-link framing and payloads (firmware_bridge.link), against tests/vectors/link.json."""

import json
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from firmware_bridge import link

VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "link.json").read_text())


@pytest.mark.parametrize("v", VECTORS["frames"], ids=lambda v: v["name"])
def test_worked_example_frames_are_byte_identical(v):
    payload = bytes.fromhex(v["payload"])
    assert link.encode(v["seq"], v["type"], payload).hex().upper() == v["hex"]
    (msg,) = link.Decoder().feed(bytes.fromhex(v["hex"]))
    assert (msg.seq, msg.typ, msg.payload) == (v["seq"], v["type"], payload)


def test_sensor_vector_decodes_to_the_documented_values():
    v = next(f for f in VECTORS["frames"] if f["name"] == "read_sensors reply")
    assert link.unpack_sensors(bytes.fromhex(v["payload"])) == v["decoded"]


def test_sensor_payload_round_trip_and_invalid_markers():
    s = {"state": 1, "trip_reason": 0, "chain_powered": True, "fan_pct": 40,
         "board_temp_dc": -55, "vr_temp_dc": None, "vin_mv": 12000, "iin_ma": 70000,
         "power_mw": 840000, "fan_rpm": None, "vcore_mv": 1150, "uptime_ms": 123456,
         "chip_temps_dc": [612, None, 598]}
    assert link.unpack_sensors(link.pack_sensors(s)) == s


def test_out_of_range_values_become_invalid_not_truncated():
    s = link.unpack_sensors(link.pack_sensors({"board_temp_dc": 40000, "vin_mv": 70000,
                                               "iin_ma": -1, "chip_temps_dc": [1.5]}))
    assert s["board_temp_dc"] is None and s["vin_mv"] is None and s["iin_ma"] is None
    assert s["chip_temps_dc"] == [None]


@pytest.mark.parametrize(
    "bad", [b"", bytes(26), bytes(27) + b"\x01", bytes(26) + b"\x09" + bytes(18)])
def test_malformed_sensor_payload_is_rejected(bad):
    with pytest.raises(ValueError):
        link.unpack_sensors(bad)


def test_encode_rejects_what_does_not_fit():
    with pytest.raises(ValueError):
        link.encode(256, 1)
    with pytest.raises(ValueError):
        link.encode(0, 1, bytes(link.MAX_PAYLOAD + 1))
    with pytest.raises(ValueError):
        link.pack_u16(70000)


def test_info_round_trip():
    info = {"family": "BM1370", "channels": 2, "heartbeat_timeout_ms": 5000, "trip_temp_dc": 900,
            "vr_trip_temp_dc": 1200, "board_trip_temp_dc": 1000, "vcore_min_mv": 1000,
            "vcore_max_mv": 1500}
    assert link.unpack_info(link.pack_info(info)) == {**info, "protocol": link.PROTOCOL_VERSION}


messages = st.tuples(st.integers(0, 255), st.integers(0, 255), st.binary(max_size=link.MAX_PAYLOAD))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.lists(messages, min_size=1, max_size=5),
       st.lists(st.integers(0, 600)))
def test_decoder_finds_every_frame_after_garbage(garbage, msgs, cuts):
    frames = [link.encode(*m) for m in msgs]
    stream = garbage + b"".join(frames)
    dec = link.Decoder()
    out = []
    last = 0
    for c in [*sorted(c % (len(stream) + 1) for c in cuts), len(stream)]:
        out += dec.feed(stream[last:c])
        last = c
    got = [(m.seq, m.typ, m.payload) for m in out]
    assert got[len(got) - len(msgs):] == [(s, t, bytes(p)) for s, t, p in msgs]


@settings(max_examples=300, deadline=None)
@given(st.data(), st.lists(messages, min_size=2, max_size=5))
def test_decoder_survives_a_damaged_frame(data, msgs):
    frames = [link.encode(*m) for m in msgs]
    k = data.draw(st.integers(0, len(frames) - 2))
    bad = bytearray(frames[k])
    if data.draw(st.booleans()):
        bit = data.draw(st.integers(0, len(bad) * 8 - 1))
        bad[bit // 8] ^= 0x80 >> (bit % 8)
    else:
        bad = bad[: data.draw(st.integers(1, len(bad) - 1))]
        # a frame cut short just where the next one begins with its missing bytes is whole again
        # (e.g. a frame ending in a5 before a5 5a ...): the stream holds it, not the next one
        assume(bytes(bad) + frames[k + 1][: len(frames[k]) - len(bad)] != frames[k])
    stream = b"".join(frames[:k]) + bytes(bad) + b"".join(frames[k + 1 :])
    dec = link.Decoder()
    got = [(m.seq, m.typ, m.payload) for m in dec.feed(stream)]
    want_after = [(s, t, bytes(p)) for s, t, p in msgs[k + 1 :]]
    assert got[: k] == [(s, t, bytes(p)) for s, t, p in msgs[:k]]
    assert got[len(got) - len(want_after):] == want_after


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=500))
def test_decoder_never_raises(data):
    dec = link.Decoder()
    out = dec.feed(data)
    assert dec.frames == len(out)
