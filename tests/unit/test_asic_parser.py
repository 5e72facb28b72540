"""Reply and command parsers under random and damaged input (hypothesis)."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware_bridge import asic
from firmware_bridge.chips import FAMILIES, PROFILES

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def replies(draw, family):
    p = PROFILES[family]
    if draw(st.booleans()):
        return asic.register_reply(
            draw(st.integers(0, 2**32 - 1)), draw(st.integers(0, 255)), draw(st.integers(0, 255)),
            p.reply_len)
    sc = draw(st.integers(0, p.small_cores_per_core - 1))
    job = draw(st.sampled_from(range(0, 128, p.job_id_step)))
    vb = (draw(st.integers(0, 0xFFFF)) << 13) if p.version_rolling else 0
    return asic.nonce_reply(family, draw(st.integers(0, 2**32 - 1)), job, sc, vb,
                            draw(st.integers(0, 255)))


def chunked(data, cuts):
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, last = [], 0
    for p in [*points, len(data)]:
        out.append(data[last:p])
        last = p
    return out


def feed_all(parser, chunks):
    out = []
    for c in chunks:
        out += parser.feed(c)
    return out + parser.flush() if hasattr(parser, "flush") else out


@FUZZ
@given(st.sampled_from(FAMILIES), st.binary(max_size=400), st.lists(st.integers(0, 400)))
def test_random_bytes_never_raise_and_bytes_are_accounted(family, data, cuts):
    parser = asic.ResponseParser(family)
    out = feed_all(parser, chunked(data, cuts))
    assert parser.frames == len(out)
    assert parser.discarded_bytes + parser.pending() + len(out) * parser.reply_len >= len(data)
    assert parser.pending() <= 2 * parser.reply_len


@FUZZ
@given(st.data(), st.sampled_from(FAMILIES), st.binary(max_size=60), st.lists(st.integers(0, 300)))
def test_every_valid_frame_after_garbage_is_found(data, family, garbage, cuts):
    frames = data.draw(st.lists(replies(family), min_size=1, max_size=6))
    stream = garbage + b"".join(frames)
    parser = asic.ResponseParser(family)
    out = feed_all(parser, chunked(stream, cuts))
    assert [r.raw for r in out[len(out) - len(frames):]] == frames


@st.composite
def damaged(draw, frame):
    kind = draw(st.sampled_from(["flip", "truncate", "insert", "drop"]))
    b = bytearray(frame)
    if kind == "flip":
        for _ in range(draw(st.integers(1, 3))):
            bit = draw(st.integers(0, len(b) * 8 - 1))
            b[bit // 8] ^= 0x80 >> (bit % 8)
    elif kind == "truncate":
        b = b[: draw(st.integers(1, len(b) - 1))]
    elif kind == "insert":
        at = draw(st.integers(0, len(b)))
        b[at:at] = draw(st.binary(min_size=1, max_size=4))
    else:
        at = draw(st.integers(0, len(b) - 1))
        b[at : at + 1] = b""
    return bytes(b)


@FUZZ
@given(st.data(), st.sampled_from(FAMILIES), st.lists(st.integers(0, 300)))
def test_damaged_frames_do_not_hide_the_valid_ones_after_them(data, family, cuts):
    before = data.draw(st.lists(replies(family), max_size=3))
    bad = data.draw(damaged(data.draw(replies(family))))
    after = data.draw(st.lists(replies(family), min_size=1, max_size=4))
    stream = b"".join(before) + bad + b"".join(after)
    parser = asic.ResponseParser(family)
    raws = [r.raw for r in feed_all(parser, chunked(stream, cuts))]
    assert raws[: len(before)] == before
    assert raws[len(raws) - len(after):] == after


def test_known_damage_is_counted():
    good = asic.nonce_reply("BM1370", 0x11223344, 24, 1, 1 << 13)
    flipped = bytearray(good)
    flipped[4] ^= 0x10
    parser = asic.ResponseParser("BM1370")
    out = parser.feed(b"\x00\x01\x02" + bytes(flipped) + good[:5] + good)
    assert [r.raw for r in out] == [good]
    assert parser.crc_errors >= 1
    assert parser.discarded_bytes == 3 + len(flipped) + 5


def test_reply_with_preamble_inside_is_held_until_the_next_bytes_or_flush():
    odd = asic.register_reply(0x0102AA55, 0xAA, 0x55, 11)  # AA 55 inside the frame
    parser = asic.ResponseParser("BM1366")
    assert parser.feed(odd) == []
    assert [r.value for r in parser.feed(odd)] == [0x0102AA55]
    assert [r.value for r in parser.flush()] == [0x0102AA55]


def test_partial_frames_across_feeds():
    good = asic.register_reply(0x1370_0000, 0, 0, 11)
    parser = asic.ResponseParser("BM1370")
    got = []
    for b in good * 3:
        got += parser.feed(bytes([b]))
    assert len(got) == 3 and parser.discarded_bytes == 0


def test_parser_accepts_bytearray_and_memoryview():
    good = asic.register_reply(7, 0, 0x4C, 11)
    parser = asic.ResponseParser("BM1366")
    assert len(parser.feed(bytearray(good))) == 1
    assert len(parser.feed(memoryview(good))) == 1


@FUZZ
@given(st.sampled_from(FAMILIES), st.binary(max_size=400), st.lists(st.integers(0, 400)))
def test_command_parser_never_raises(family, data, cuts):
    parser = asic.CommandParser(family)
    out = feed_all(parser, chunked(data, cuts))
    assert parser.frames == len(out)


@st.composite
def commands(draw, family):
    k = draw(st.sampled_from(["write", "read", "addr", "inactive", "job"]))
    chip = draw(st.one_of(st.none(), st.integers(0, 255)))
    if k == "write":
        return asic.cmd_write(draw(st.integers(0, 255)), draw(st.integers(0, 2**32 - 1)), chip)
    if k == "read":
        return asic.cmd_read(draw(st.integers(0, 255)), chip)
    if k == "addr":
        return asic.cmd_set_address(draw(st.integers(0, 255)))
    if k == "inactive":
        return asic.cmd_chain_inactive()
    header = draw(st.binary(min_size=80, max_size=80))
    return asic.job_frame(family, draw(st.integers(0, 127)), header)


@FUZZ
@given(st.data(), st.sampled_from(FAMILIES), st.binary(max_size=40))
def test_command_parser_finds_frames_after_garbage(data, family, garbage):
    frames = data.draw(st.lists(commands(family), min_size=1, max_size=4))
    parser = asic.CommandParser(family)
    out = parser.feed(garbage + b"".join(frames))
    assert [c.raw for c in out] == frames


def test_command_parser_resync_after_a_stalled_frame_start():
    parser = asic.CommandParser("BM1370")
    good = asic.cmd_write(0x14, 0xFF)
    assert parser.feed(b"\x55\xaa\x21\x56\x00\x01") == []  # looks like a job start: waits
    assert parser.pending() == 6
    assert parser.resync() == [] and parser.pending() == 0
    # a complete frame after a stalled start is taken at once
    good = asic.cmd_write(0x14, 0xFF)
    assert [c.raw for c in parser.feed(b"\x55\xaa\x21\x56\x00" + good)] == [good]
