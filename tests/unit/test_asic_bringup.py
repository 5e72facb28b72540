"""Per-family init sequences (spec §6) as frames."""

import pytest

from firmware_bridge import asic, bringup
from firmware_bridge.chips import FAMILIES

H = bytes.fromhex
C1, C2, C9 = H("55AA530500 0003"), H("55AA52050000 0A"), H("55AA5109 00A49000FFFF 1C")


def kinds(family, frames):
    return [(c.kind, c.broadcast, c.chip, c.reg, c.value)
            for c in asic.CommandParser(family).feed(b"".join(f for f, _ in frames))]


def test_chip_addresses_follow_esp_miner():
    assert bringup.chip_addresses(1) == [0]
    assert bringup.chip_addresses(2) == [0, 0x80]
    assert bringup.chip_addresses(6) == [0, 42, 84, 126, 168, 210]
    with pytest.raises(ValueError):
        bringup.chip_addresses(0)


@pytest.mark.parametrize(("family", "a4_writes"), [("BM1366", 3), ("BM1368", 4), ("BM1370", 3)])
def test_enumeration_enables_version_rolling_before_the_chip_id_read(family, a4_writes):
    frames = [f for f, _ in bringup.enumeration_frames(family)]
    assert frames == [C9] * a4_writes + [C2]


def test_bm1397_enumeration_is_the_chip_id_read():
    assert bringup.enumeration_frames("BM1397") == [(C2, 20)]


def test_bm1370_setup_matches_spec_6_4():
    frames = [f for f, _ in bringup.setup_frames("BM1370", 1)]
    want = [C9, H("55AA510900A800070000 03"), H("55AA51090018F000C100 04"), C1,
            H("55AA40050000 1C"), asic.cmd_write(0x3C, 0x80008B00)]
    assert frames[: len(want)] == want
    assert H("55AA510900140000 00FF08") in frames  # C8 ticket 256
    assert H("55AA5109005800011111 0D") in frames  # C23
    chip0 = [H("55AA41090018F000C100 0C"), H("55AA4109003C80008B00 1A"),
             H("55AA4109003C8000800C 19"), H("55AA4109003C800082AA 05")]  # C15..C18
    i = frames.index(chip0[0])
    assert frames[i : i + 4] == chip0
    assert frames[-4:] == [H("55AA510900B900004480 0D"), asic.cmd_write(0x54, 2),
                           H("55AA510900B900004480 0D"), H("55AA5109003C80008DEE 1B")]


def test_bm1366_setup_matches_spec_6_2():
    got = kinds("BM1366", bringup.setup_frames("BM1366", 2))
    assert got[:3] == [("write", True, 0, 0xA8, 0x00070000), ("write", True, 0, 0x18, 0xFF0FC100),
                       ("chain_inactive", True, 0, 0, 0)]
    assert got[3:5] == [("set_address", False, 0, 0, 0), ("set_address", False, 0x80, 0, 0)]
    assert got[5:11] == [
        ("write", True, 0, 0x3C, 0x80008540), ("write", True, 0, 0x3C, 0x80008020),
        ("write", True, 0, 0x14, 0xFF), ("write", True, 0, 0x54, 3),
        ("write", True, 0, 0x58, 0x02111111), ("write", False, 0, 0x2C, 0x007C0003),
    ]
    per_chip = got[11:]
    assert len(per_chip) == 10 and {c[2] for c in per_chip} == {0, 0x80}
    assert per_chip[4] == ("write", False, 0, 0x3C, 0x800082AA)


def test_bm1368_waits_500_ms_after_each_chip():
    frames = bringup.setup_frames("BM1368", 3)
    assert [d for _, d in frames].count(500) == 3
    assert kinds("BM1368", frames)[-1] == ("write", True, 0, 0x14, 0xFF)


def test_bm1397_setup_matches_spec_6_1():
    got = kinds("BM1397", bringup.setup_frames("BM1397", 1, difficulty=64))
    assert got == [
        ("chain_inactive", True, 0, 0, 0), ("set_address", False, 0, 0, 0),
        ("write", True, 0, 0x80, 0), ("write", True, 0, 0x84, 0), ("write", True, 0, 0x20, 1),
        ("write", True, 0, 0x3C, 0x80008074), ("write", True, 0, 0x14, 0xFC),
        ("write", True, 0, 0x68, 0xC0700111), ("write", True, 0, 0x28, 0x0600000F),
        ("write", True, 0, 0x18, 0x00007A31),
    ]


def test_bm1397_ramp_step_is_two_divider_then_two_pll_writes():
    frames = bringup.ramp_frames("BM1397", 50, 56.25)
    div = asic.cmd_write(0x70, 0x0F0F0F00)
    assert [f for f, _ in frames] == [div, div, asic.pll_frame("BM1397", 56.25)] * 1 + [
        asic.pll_frame("BM1397", 56.25)]


@pytest.mark.parametrize("family", ["BM1366", "BM1368"])
def test_after_ramp_rewrites_hcn_then_version_rolling(family):
    frames = [f for f, _ in bringup.after_ramp_frames(family, 485, 1)]
    assert frames == [bringup.hcn_frame(family, 485, 1), C9]


def test_after_ramp_bm1370_is_hcn_only_and_bm1397_nothing():
    assert [f for f, _ in bringup.after_ramp_frames("BM1370", 525, 1)] == [
        H("55AA51090010000C2FB7 18")]
    assert bringup.after_ramp_frames("BM1397", 425, 1) == []


@pytest.mark.parametrize(("family", "baud"), [("BM1397", 3125000), ("BM1366", 1000000),
                                              ("BM1368", 1000000), ("BM1370", 1000000)])
def test_baud_frame(family, baud):
    frame, host_baud = bringup.baud_frame(family)
    assert host_baud == baud
    (cmd,) = asic.CommandParser(family).feed(frame)
    assert abs(asic.chip_baud(family, cmd.reg, cmd.value) - baud) / baud < 0.05


@pytest.mark.parametrize("family", FAMILIES)
def test_whole_bringup_parses_on_the_chip_side(family):
    seq = (bringup.enumeration_frames(family) + bringup.setup_frames(family, 4)
           + bringup.ramp_frames(family, 50, 400) + bringup.after_ramp_frames(family, 400, 4)
           + [(bringup.baud_frame(family)[0], 0)])
    parser = asic.CommandParser(family)
    cmds = parser.feed(b"".join(f for f, _ in seq))
    assert len(cmds) == len(seq) and parser.crc_errors == 0 and parser.discarded_bytes == 0
    assert all(isinstance(d, int) and d >= 0 for _, d in seq)


def test_idle_frames_park_at_50_mhz():
    frames = [f for f, _ in bringup.idle_frames("BM1370", 1)]
    assert frames[0] == asic.pll_frame("BM1370", 50)
    assert frames[-1] == bringup.hcn_frame("BM1370", 50, 1)
    ramp = bringup.idle_frames("BM1366", 1, from_mhz=485)
    assert ramp[-2][0] == asic.pll_frame("BM1366", 50)
