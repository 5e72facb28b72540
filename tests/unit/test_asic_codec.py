"""BM13xx codec against every vector of the spec (tests/vectors/bm13xx.json), byte for byte."""

import hashlib
import json
from pathlib import Path

import pytest

from firmware_bridge import asic, bringup
from firmware_bridge.chips import FAMILIES, PROFILES

VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "bm13xx.json").read_text())


def _arg(a):
    if isinstance(a, dict):
        return bytes.fromhex(a["hex"])
    if isinstance(a, list):
        return [_arg(x) for x in a]
    return a


def _call(v):
    fn = getattr(asic, v["fn"], None) or getattr(bringup, v["fn"])
    out = fn(*[_arg(a) for a in v["args"]], **v.get("kwargs", {}))
    return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize("v", VECTORS["calls"], ids=lambda v: v["id"])
def test_frame_vector_is_byte_identical(v):
    assert _call(v).hex().upper() == v["hex"]


@pytest.mark.parametrize("v", VECTORS["crc"], ids=lambda v: v["alg"] + v["data"])
def test_crc_check_values(v):
    assert getattr(asic, v["alg"])(bytes.fromhex(v["data"])) == v["value"]


def test_every_spec_command_and_job_vector_is_present():
    ids = {v["id"] for v in VECTORS["calls"]} | {v["id"] for v in VECTORS["replies"]}
    wanted = [f"C{n}" for n in (1, 2, 3, 6, 8, 9, 10, 11, 12, 13, 15, 16, 17, 18, 19, 20, 21, 23,
                                 25, 26, 27, 28)]
    wanted += ["J1", "J2-1", "J2-4", "J3", "J4-BM1370", "R1", "R2", "R3", "R5", "R6", "R7", "R9"]
    assert not [w for w in wanted if w not in ids]


@pytest.mark.parametrize("v", VECTORS["replies"], ids=lambda v: v["id"])
def test_reply_vector_decodes(v):
    parser = asic.ResponseParser(v["family"])
    replies = parser.feed(bytes.fromhex(v["hex"]))
    assert len(replies) == 1
    for key, want in v["expect"].items():
        assert getattr(replies[0], key) == want, key
    assert parser.crc_errors == 0 and parser.discarded_bytes == 0


@pytest.mark.parametrize("v", VECTORS["replies"], ids=lambda v: v["id"])
def test_reply_vector_residue_is_zero_and_flipped_bit_is_caught(v):
    frame = bytearray.fromhex(v["hex"])
    assert asic.crc5(frame[2:]) == 0
    for bit in range(16, len(frame) * 8):
        bad = bytearray(frame)
        bad[bit // 8] ^= 0x80 >> (bit % 8)
        parser = asic.ResponseParser(v["family"])
        assert parser.feed(bytes(bad)) == [], bit
        assert parser.crc_errors == 1


@pytest.mark.parametrize("v", VECTORS["pll"], ids=lambda v: v["id"])
def test_pll_vectors(v):
    if not v.get("decode_only"):
        assert list(asic.pll_params(v["family"], v["freq_mhz"])) == v["params"]
    if "value" in v:
        if not v.get("decode_only"):
            assert asic.pll_value(v["family"], v["freq_mhz"]) == v["value"]
        assert asic.pll_freq_mhz(v["family"], v["value"]) == pytest.approx(v["freq_mhz"])


@pytest.mark.parametrize("family", FAMILIES)
def test_pll_round_trips_over_the_working_range(family):
    p = PROFILES[family]
    f = 50.0
    while f <= 800.0:
        fb, ref, p1, p2 = asic.pll_params(family, f)
        assert p.fbdiv_min <= fb <= p.fbdiv_max and p1 > p2 >= 1 and ref in (1, 2)
        assert abs(asic.pll_freq_mhz(family, asic.pll_value(family, f)) - f) < 1.0
        f += 6.25


@pytest.mark.parametrize("v", VECTORS["ticket"], ids=lambda v: str(v["difficulty"]))
def test_ticket_mask_vectors(v):
    assert asic.ticket_mask(v["difficulty"]) == v["mask"]
    assert asic.ticket_difficulty(v["mask"]) == v["difficulty"]


def test_ticket_mask_rounds_down_to_a_power_of_two():
    assert asic.ticket_mask(300) == asic.ticket_mask(256)
    assert asic.ticket_mask(255.5) == asic.ticket_mask(256)
    assert asic.ticket_mask(2**32) == 0xFFFFFFFF


@pytest.mark.parametrize("v", VECTORS["hcn"], ids=lambda v: v["family"])
def test_hash_counting_number_vectors(v):
    assert bringup.hcn_value(v["family"], v["freq_mhz"], v["chips"]) == v["value"]


def test_bm1397_has_no_hash_counting_number():
    assert bringup.hcn_frame("BM1397", 425, 1) is None


@pytest.mark.parametrize("v", VECTORS["ramp"], ids=lambda v: v["family"])
def test_ramp_vectors(v):
    frames = bringup.ramp_frames(v["family"], v["from_mhz"], v["to_mhz"])
    assert len(frames) == v["writes"]
    steps = asic.ramp_steps(v["from_mhz"], v["to_mhz"])
    assert steps[0] == v["first"] and steps[-1] == v["last"]
    assert frames[-1][0] == asic.pll_frame(v["family"], v["to_mhz"])


def test_ramp_down_and_off_grid_start():
    assert asic.ramp_steps(485, 470) == [481.25, 475.0, 470.0]
    assert asic.ramp_steps(52, 60) == [56.25, 60.0]
    assert asic.ramp_steps(60, 60) == []


@pytest.mark.parametrize("v", VECTORS["baud"], ids=lambda v: hex(v["value"]))
def test_chip_baud_vectors(v):
    assert asic.chip_baud(v["family"], v["reg"], v["value"]) == v["baud"]


@pytest.mark.parametrize("v", VECTORS["invalid"], ids=lambda v: v["fn"] + repr(v["args"])[:30])
def test_bad_arguments_raise_value_error_with_a_reason(v):
    fn = getattr(asic, v["fn"], None) or getattr(bringup, v["fn"])
    with pytest.raises(ValueError, match=r"\S"):
        fn(*[_arg(a) for a in v["args"]])


def test_unknown_family_message_names_the_known_ones():
    with pytest.raises(ValueError, match="BM1370"):
        asic.ResponseParser("BM9999")


def test_midstate_finishes_to_the_real_sha256():
    header = bytes.fromhex(
        "04000020fc102bd0ea11470daf05a8e133a8a8505e21a2122b7f010000000000000000006d0359c4"
        "51434605c52a5a9ce074340be47c2c63840731f9edf1db3f26b1cdd9a9f16f643aae051747896e27"
    )
    state = asic.sha256_midstate(header[:64])
    assert asic.midstate_state(asic.midstate_bytes(state)) == state
    tail = header[64:] + b"\x80" + bytes(39) + (640).to_bytes(8, "big")
    final = asic.sha256_compress(state, tail)
    digest = b"".join(w.to_bytes(4, "big") for w in final)
    assert digest == hashlib.sha256(header).digest()
    # J4: difficulty-18 share, display order starts with 8 zero nibbles
    assert hashlib.sha256(digest).digest()[::-1].hex().startswith("000000000e30101020e2ec8c")


def test_bm1397_job_from_header_carries_the_midstates():
    header = bytes(range(80))
    frame = asic.job_frame("BM1397", 8, header, version_mask=0x1FFFE000)
    cmd = asic.CommandParser("BM1397").feed(frame)[0]
    assert len(frame) == 152 and cmd.num_midstates == 4
    for i, wire in enumerate(cmd.midstates):
        version = asic.rolled_version(0x03020100, 0x1FFFE000, i)
        rolled = version.to_bytes(4, "little") + header[4:64]
        assert asic.midstate_state(wire) == asic.sha256_midstate(rolled)
    single = asic.job_frame("BM1397", 8, header)
    assert len(single) == 152 and single[5] == 1 and single[-98:-2] == bytes(96)


def test_rolled_version_counts_inside_the_mask():
    assert asic.rolled_version(0x20000000, 0x1FFFE000, 1) == 0x20002000
    assert asic.rolled_version(0x20000000, 0x1FFFE000, 3) == 0x20006000
    assert asic.rolled_version(0x20000004, 0, 3) == 0x20000004


@pytest.mark.parametrize("family", ["BM1366", "BM1368", "BM1370"])
def test_header_job_round_trips_through_the_chip_side_parser(family):
    header = bytes.fromhex(
        "04000020fc102bd0ea11470daf05a8e133a8a8505e21a2122b7f010000000000000000006d0359c4"
        "51434605c52a5a9ce074340be47c2c63840731f9edf1db3f26b1cdd9a9f16f643aae051747896e27"
    )
    cmds = asic.CommandParser(family).feed(asic.job_frame(family, 0x48, header))
    assert len(cmds) == 1 and cmds[0].kind == "job" and cmds[0].job_id == 0x48
    assert cmds[0].header80 == header[:76] + bytes(4)
    assert cmds[0].version == 0x20000004 and cmds[0].nbits == 0x1705AE3A


def test_job_length_byte_does_not_decide_the_frame_size_on_header_families():
    header = bytes(range(80))
    parser = asic.CommandParser("BM1370")
    frames = [asic.job_frame("BM1370", 0, header, length_byte=b) for b in (0x56, 0x36, 0xFF)]
    cmds = parser.feed(b"".join(frames))
    assert [c.kind for c in cmds] == ["job"] * 3 and parser.crc_errors == 0


@pytest.mark.parametrize("family", FAMILIES)
def test_nonce_reply_round_trip_all_small_cores(family):
    p = PROFILES[family]
    parser = asic.ResponseParser(family)
    for job_id in range(0, 128, p.job_id_step):
        for sc in range(p.small_cores_per_core):
            vb = (sc << 13) if p.version_rolling else 0
            frame = asic.nonce_reply(family, 0x12345678 + sc, job_id, sc, vb, byte6=2)
            assert len(frame) == p.reply_len
            (r,) = parser.feed(frame)
            assert (r.kind, r.nonce, r.job_id, r.small_core, r.version_bits, r.byte6) == (
                "nonce", 0x12345678 + sc, job_id, sc, vb, 2)
    assert parser.crc_errors == 0


def test_nonce_fields_core_and_chip_address():
    # nonce_h = core 5 in bits 31:25, chip address field 0x80 in bits 24:17
    nonce_h = (5 << 25) | (0x80 << 17) | 0x1234
    nonce = int.from_bytes(nonce_h.to_bytes(4, "big"), "little")
    (r,) = asic.ResponseParser("BM1370").feed(asic.nonce_reply("BM1370", nonce, 24, 1, 1 << 13))
    assert (r.core_id, r.chip_addr_field) == (5, 0x80)


def test_command_parser_decodes_every_command_kind():
    stream = (
        asic.cmd_chain_inactive() + asic.cmd_set_address(0x40) + asic.cmd_write(0x14, 0xFF)
        + asic.cmd_write(0x18, 0xF000C100, 0x40) + asic.cmd_read(0x00) + asic.cmd_read(0x8C, 0x40)
    )
    cmds = asic.CommandParser("BM1370").feed(stream)
    got = [(c.kind, c.broadcast, c.chip, c.reg, c.value) for c in cmds]
    assert got == [
        ("chain_inactive", True, 0, 0, 0),
        ("set_address", False, 0x40, 0, 0),
        ("write", True, 0, 0x14, 0xFF),
        ("write", False, 0x40, 0x18, 0xF000C100),
        ("read", True, 0, 0x00, 0),
        ("read", False, 0x40, 0x8C, 0),
    ]


def test_command_parser_drops_bad_crc_and_counts_it():
    good = asic.cmd_write(0x14, 0xFF)
    bad = bytearray(good)
    bad[-1] ^= 0x01
    parser = asic.CommandParser("BM1366")
    cmds = parser.feed(bytes(bad) + good)
    assert [c.reg for c in cmds] == [0x14] and parser.crc_errors == 1


def test_register_reply_round_trip():
    for size in (9, 11):
        (r,) = asic.ResponseParser("BM1370", reply_len=size).feed(
            asic.register_reply(0xDEADBEEF, 0x80, 0x4C, size))
        assert (r.kind, r.value, r.chip_addr, r.reg) == ("register", 0xDEADBEEF, 0x80, 0x4C)


def test_profiles_hold_the_spec_constants():
    got = {f: (p.chip_id, p.cores, p.small_cores, p.job_id_step, p.reply_len, p.default_freq_mhz,
               p.default_vcore_mv, p.fbdiv_min, p.fbdiv_max, p.fast_baud)
           for f, p in PROFILES.items()}
    assert got == {
        "BM1397": (0x1397, 168, 672, 4, 9, 425.0, 1400, 60, 200, 3125000),
        "BM1366": (0x1366, 112, 894, 8, 11, 485.0, 1200, 144, 235, 1000000),
        "BM1368": (0x1368, 80, 1276, 24, 11, 490.0, 1166, 144, 235, 1000000),
        "BM1370": (0x1370, 128, 2040, 24, 11, 525.0, 1150, 160, 239, 1000000),
    }
    assert PROFILES["BM1370"].hashrate_ghs(525) == pytest.approx(1071.0)
