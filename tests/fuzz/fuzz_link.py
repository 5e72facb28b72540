"""Fuzz the board link of firmware_bridge.link: the frame hunter (`Decoder`) and the payload
unpackers, plus the agent's consumer of the sensor reply (`agent.chain.board.sample_from_payload`).

`feed` and `resync` must never raise, nor anything inside them (the harness watches `_hunt`, which
the catch-all would hide); every byte fed is in a frame, in `discarded_bytes` or `pending()`. The
unpackers may raise only ValueError. A clean stream (frames made by `encode`, behind garbage
without A5) decodes to exactly those frames when fed whole, and in any chunking when no frame
holds A5 5A after its start. Packing the bridge's readings and unpacking them gives the values
back (those that do not fit their field as None).

Input: byte 0: mode (0: raw bytes, 1: clean frames, 2: sensor readings through pack/unpack);
byte 1: chunk size for `feed` (0: one piece); then the stream, the frame specs or the readings.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import harness

with harness.instrumented(__name__ == "__main__"):
    from agent.chain.board import sample_from_payload
    from firmware_bridge import link

KNOWN_BUGS: dict[str, harness.KnownBug] = {}

UNPACKERS = (link.unpack_sensors, link.unpack_status, link.unpack_info, link.unpack_u8,
             link.unpack_u16, link.unpack_error)


class Watched(harness.StreamWatch):
    """The bridge's frame `Decoder` run through the stream, with its accounting checked."""

    def __init__(self) -> None:
        super().__init__(link.Decoder(), flush=False)

    def run(self, stream: bytes, chunk: int) -> list[Any]:
        out = super().run(stream, chunk)
        d = self.parser
        assert d.pending() == 0 and d.frames == len(out), (d.pending(), d.frames, len(out))
        used = sum(link.OVERHEAD + len(m.payload) for m in out)
        assert used + d.discarded_bytes == self.fed, (used, d.discarded_bytes, self.fed)
        return out


def _unpack_all(payload: bytes) -> None:
    for fn in UNPACKERS:
        try:
            fn(payload)
        except ValueError:
            pass
    try:
        sample = sample_from_payload(payload, 1.0, 0.92)
    except ValueError:
        return
    assert len(sample.chip_temps_c) <= link.MAX_CHIP_CHANNELS, sample


def _raw(stream: bytes, chunk: int) -> None:
    for msg in Watched().run(stream, chunk):
        assert isinstance(msg, link.Message) and len(msg.payload) <= link.MAX_PAYLOAD, msg
        assert 0 <= msg.seq <= 255 and 0 <= msg.typ <= 255, msg
        repr(msg)
        _unpack_all(msg.payload)


def _clean(chunk: int, r: harness.Reader) -> None:
    prefix = r.take(r.u8() % 16).replace(b"\xa5", b"\0")
    frames: list[tuple[int, int, bytes]] = []
    while r.left and len(frames) < 16:
        seq, typ = r.u8(), r.u8()
        frames.append((seq, typ, r.take(r.u8() % (link.MAX_PAYLOAD + 1))))
    blobs = [link.encode(s, t, p) for s, t, p in frames]
    stream = prefix + b"".join(blobs)
    want = [(s, t, p) for s, t, p in frames]
    whole = [(m.seq, m.typ, bytes(m.payload)) for m in Watched().run(stream, 0)]
    assert whole == want, (whole, want)
    got = [(m.seq, m.typ, bytes(m.payload)) for m in Watched().run(stream, chunk)]
    if all(b.find(link.SOF, 1) < 0 for b in blobs):
        assert got == want, (got, want)
    for _, _, payload in frames:
        _unpack_all(payload)


def _field(r: harness.Reader) -> Any:
    """A reading as the bridge may hold it: missing, or an int around the field's range."""
    kind = r.u8() % 4
    if kind == 0:
        return None
    if kind == 1:
        return r.sint(2)
    if kind == 2:
        return r.uint(4)
    return r.sint(8)


def _sensors(r: harness.Reader) -> None:
    keys = ("board_temp_dc", "vr_temp_dc", "vin_mv", "iin_ma", "power_mw", "fan_rpm", "vcore_mv")
    reading: dict[str, Any] = {k: _field(r) for k in keys}
    reading.update(state=r.u8() % 3, trip_reason=r.u8() % 6, chain_powered=bool(r.u8() & 1),
                   fan_pct=_field(r), uptime_ms=r.uint(4),
                   chip_temps_dc=[_field(r) for _ in range(r.u8() % 10)])
    back = link.unpack_sensors(link.pack_sensors(reading))
    limits = {"board_temp_dc": (-32767, 32767), "vr_temp_dc": (-32767, 32767),
              "vin_mv": (0, 0xFFFE), "iin_ma": (0, 0xFFFFFFFE), "power_mw": (0, 0xFFFFFFFE),
              "fan_rpm": (0, 0xFFFE), "vcore_mv": (0, 0xFFFE), "fan_pct": (0, 100)}
    for k, (lo, hi) in limits.items():
        v = reading[k]
        want = v if isinstance(v, int) and lo <= v <= hi else None
        assert back[k] == want, (k, v, back[k])
    temps = [t if isinstance(t, int) and -32767 <= t <= 32767 else None
             for t in reading["chip_temps_dc"][: link.MAX_CHIP_CHANNELS]]
    assert back["chip_temps_dc"] == temps, (reading["chip_temps_dc"], back["chip_temps_dc"])
    assert (back["state"], back["trip_reason"], back["uptime_ms"]) == (
        reading["state"], reading["trip_reason"], reading["uptime_ms"])
    sample_from_payload(link.pack_sensors(reading), 0.0)


def test_one_input(data: bytes) -> None:
    r = harness.Reader(data)
    mode = r.u8() % 3
    chunk = r.u8()
    if mode == 0:
        _raw(r.rest(), chunk)
    elif mode == 1:
        _clean(chunk, r)
    else:
        _sensors(r)


# ---- seeds and dictionary -----------------------------------------------------------------------


def seeds() -> list[tuple[str, bytes]]:
    vectors = json.loads((harness.ROOT / "tests/vectors/link.json").read_text("utf-8"))
    out: list[tuple[str, bytes]] = []
    frames = [bytes.fromhex(f["hex"]) for f in vectors["frames"]]
    for i, blob in enumerate(frames):
        out.append((f"frame{i}", bytes((0, 0)) + blob))
    out.append(("all-frames", bytes((0, 0)) + b"".join(frames)))
    out.append(("all-frames-chunked", bytes((0, 5)) + b"\xa5\x00" + b"\xa5".join(frames)))
    for i, f in enumerate(vectors["frames"]):
        payload = bytes.fromhex(f["payload"])
        out.append((f"clean{i}", bytes((1, 3, 0, f["seq"], f["type"], len(payload))) + payload))
    out.append(("sensors", bytes((2, 0)) + bytes(range(1, 40))))
    return out


def dictionary() -> list[bytes]:
    return [link.SOF, b"\xa5\x5a\x00", b"\xa5\x5a\x1d", b"\xa5\x5a\x06", b"\xa5\x5a\x19",
            b"\xff\xff", b"\x00\x80", b"\xff\xff\xff\xff", b"\xc0"]


if __name__ == "__main__":
    harness.main("link", test_one_input, seeds, known=KNOWN_BUGS, dictionary=dictionary,
                 max_len=1024)
    sys.exit(0)
