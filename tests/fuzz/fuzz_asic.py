"""Fuzz the BM13xx stream parsers of firmware_bridge.asic: `ResponseParser` (chip -> host, what
the agent reads) and `CommandParser` (host -> chip, what the emulated chain reads).

`feed`, `flush` and `resync` must never raise, and nothing may go wrong inside them either (their
catch-all would hide it by dropping the buffer, so the harness watches `_hunt`). Every byte fed is
accounted for: in a frame, in `discarded_bytes` or still `pending()`. Each frame decodes to fields
in range, and a nonce reply re-encodes to the bytes it came from. A clean stream (frames the
encoders made, behind garbage without a preamble byte, with no preamble inside a frame but the
last) decodes to exactly those frames, in any chunking.

Input: byte 0: bits 0-1 family, bits 2-3 reply length (None, 9, 11, None), bits 4-5 mode
(0: raw bytes to ResponseParser, 1: raw bytes to CommandParser, 2: clean reply stream,
3: clean command stream); byte 1: chunk size for `feed` (0: one piece); then the stream or the
frame specs.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import harness

with harness.instrumented(__name__ == "__main__"):
    from firmware_bridge import asic
    from firmware_bridge.chips import FAMILIES, profile

REPLY_LENS = (None, 9, 11, None)
KNOWN_BUGS: dict[str, harness.KnownBug] = {}


class Watched(harness.StreamWatch):
    """A BM13xx parser run through the stream, with its accounting checked."""

    def __init__(self, parser: Any) -> None:
        super().__init__(parser, flush=True)

    def run(self, stream: bytes, chunk: int) -> list[Any]:
        out = super().run(stream, chunk)
        self.check(out)
        return out

    def check(self, out: list[Any]) -> None:
        p = self.parser
        assert p.pending() == 0, f"resync left {p.pending()} bytes"
        assert p.frames == len(out), (p.frames, len(out))
        used = sum(len(f.raw) for f in out)
        assert used + p.discarded_bytes + p.pending() == self.fed, (
            used, p.discarded_bytes, p.pending(), self.fed)


def _check_reply(family: str, reply_len: int, f: Any) -> None:
    assert len(f.raw) == reply_len and f.raw[:2] == asic.PREAMBLE_REPLY, f.raw
    if isinstance(f, asic.RegisterReply):
        assert 0 <= f.value <= 0xFFFFFFFF and 0 <= f.chip_addr <= 255 and 0 <= f.reg <= 255
        if reply_len == 9:
            assert asic.register_reply(f.value, f.chip_addr, f.reg, reply_len) == f.raw, f
        return
    assert isinstance(f, asic.NonceReply), f
    assert 0 <= f.nonce <= 0xFFFFFFFF and 0 <= f.job_id <= 255, f
    assert 0 <= f.version_bits <= 0xFFFFFFFF, f
    if family != "BM1397" or reply_len == 9:
        again = asic.nonce_reply(family, f.nonce, f.job_id, f.small_core, f.version_bits,
                                 f.byte6, reply_len)
        assert again == f.raw, (f, again.hex(), f.raw.hex())


def _check_command(family: str, c: Any) -> None:
    assert c.raw[:2] == asic.PREAMBLE_CMD, c.raw
    assert c.kind in ("set_address", "write", "read", "chain_inactive", "job"), c.kind
    if c.kind != "job":
        assert len(c.raw) == (11 if c.kind == "write" else 7), c
        assert 0 <= c.value <= 0xFFFFFFFF, c
        return
    if profile(family).midstate_jobs:
        assert all(len(m) == 32 for m in c.midstates) and c.midstates, c.raw.hex()
    else:
        assert c.header80 is not None and len(c.header80) == 80, c.raw.hex()


def _raw(family: str, reply_len: int | None, commands: bool, stream: bytes, chunk: int) -> None:
    if commands:
        w = Watched(asic.CommandParser(family))
        for c in w.run(stream, chunk):
            _check_command(family, c)
    else:
        parser = asic.ResponseParser(family, reply_len)
        w = Watched(parser)
        for f in w.run(stream, chunk):
            _check_reply(family, parser.reply_len, f)


def _no_marker(data: bytes, marker: bytes) -> bytes:
    return data.replace(marker[:1], b"\0")


def _reply_frames(family: str, size: int, r: harness.Reader) -> list[bytes]:
    smask = 0x03 if family == "BM1397" else 0x07 if family == "BM1366" else 0x0F
    frames = []
    while r.left and len(frames) < 16:
        kind = r.u8()
        if kind & 1:
            frames.append(asic.register_reply(r.uint(4), r.u8(), r.u8(), size))
        else:
            frames.append(asic.nonce_reply(family, r.uint(4), r.u8(), r.u8() & smask, r.uint(4),
                                           r.u8(), size))
    return frames


def _command_frames(family: str, r: harness.Reader) -> list[bytes]:
    frames = []
    while r.left and len(frames) < 8:
        kind = r.u8() % 5
        chip = r.u8()
        target = None if chip & 1 else chip
        if kind == 0:
            frames.append(asic.cmd_write(r.u8(), r.uint(4), target))
        elif kind == 1:
            frames.append(asic.cmd_read(r.u8(), target))
        elif kind == 2:
            frames.append(asic.cmd_set_address(chip))
        elif kind == 3:
            frames.append(asic.cmd_chain_inactive())
        else:
            frames.append(asic.job_frame(family, r.u8(), r.take(80).ljust(80, b"\0"),
                                         r.uint(4) if chip & 2 else 0))
    return frames


def _clean(family: str, reply_len: int | None, commands: bool, chunk: int,
           r: harness.Reader) -> None:
    marker = asic.PREAMBLE_CMD if commands else asic.PREAMBLE_REPLY
    prefix = _no_marker(r.take(r.u8() % 16), marker)
    if commands:
        frames = _command_frames(family, r)
        w = Watched(asic.CommandParser(family))
        # OUTER_IF_FOLLOWED: a valid inner frame wins at the end of the stream, by design
        clean = all(f.find(marker, 1) < 0 for f in frames)
    else:
        parser = asic.ResponseParser(family, reply_len)
        frames = _reply_frames(family, parser.reply_len, r)
        w = Watched(parser)
        # OUTER_IF_ONLY_FOLLOWED: an inner frame followed by a preamble may win, by design
        clean = all(f.find(marker, 1) < 0 for f in frames[:-1])
    out = w.run(prefix + b"".join(frames), chunk)
    if clean:
        assert [f.raw for f in out] == frames, ([f.raw.hex() for f in out],
                                                [f.hex() for f in frames])


def test_one_input(data: bytes) -> None:
    r = harness.Reader(data)
    head = r.u8()
    chunk = r.u8()
    family = FAMILIES[head & 3]
    reply_len = REPLY_LENS[head >> 2 & 3]
    mode = head >> 4 & 3
    if mode < 2:
        _raw(family, reply_len, mode == 1, r.rest(), chunk)
    else:
        _clean(family, reply_len, mode == 3, chunk, r)


# ---- seeds and dictionary -----------------------------------------------------------------------


def seeds() -> list[tuple[str, bytes]]:
    vectors = json.loads((harness.ROOT / "tests/vectors/bm13xx.json").read_text("utf-8"))
    out: list[tuple[str, bytes]] = []
    for rep in vectors["replies"]:
        fam = FAMILIES.index(rep["family"])
        blob = bytes.fromhex(rep["hex"])
        head = fam | {9: 1, 11: 2}.get(len(blob), 0) << 2
        out.append((f"reply-{rep['id']}", bytes((head, 0)) + blob + b"\x00\xaa" + blob))
        out.append((f"reply-{rep['id']}-chunked", bytes((head, 3)) + blob * 2))
    for call in vectors["calls"]:
        blob = bytes.fromhex(call["hex"])
        for fam in range(4):
            out.append((f"call-{call['id']}-{fam}", bytes((fam | 1 << 4, 0)) + blob))
    spec = bytes((0,)) + bytes((1, 0x00, 0x00, 0x13, 0x70, 0x00, 0x00, 0, 0x12, 0x34, 0x56, 0x78,
                                0x10, 0x02, 0, 0, 0, 0, 0x55))
    for fam in range(4):
        out.append((f"clean-replies-{fam}", bytes((fam | 2 << 4, 0)) + spec))
        cmds = bytes((0, 0, 1, 0x08, 1, 2, 3, 4, 1, 1, 0x14, 2, 4, 3, 0, 4, 2, 7)) + bytes(80)
        out.append((f"clean-commands-{fam}", bytes((fam | 3 << 4, 5)) + cmds))
    return out


def dictionary() -> list[bytes]:
    return [asic.PREAMBLE_REPLY, asic.PREAMBLE_CMD, b"\x55\xaa\x21\x56", b"\x55\xaa\x21\x96",
            b"\x55\xaa\x51\x09", b"\x55\xaa\x52\x05", b"\x55\xaa\x40\x05", b"\x55\xaa\x53\x05",
            b"\x80", b"\xaa\x55\x13\x70"]


if __name__ == "__main__":
    harness.main("asic", test_one_input, seeds, known=KNOWN_BUGS, dictionary=dictionary,
                 max_len=512)
    sys.exit(0)
