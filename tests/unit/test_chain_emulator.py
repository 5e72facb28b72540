"""The emulated ASIC chain, driven by the project's own frames and checked with its own parser.

Everything here runs on emulated time (no threads, no sleeps): bytes go in with `feed`, physics
time moves with `step`, replies come out of `pop_frames`.
"""

from __future__ import annotations

import random
import struct

import pytest

from agent.chain.work import target_for
from agent.hashing import sha256d
from firmware_bridge import asic, bringup
from firmware_bridge.chips import profile
from hil.chain import AsicChain

FAMILIES = ("BM1366", "BM1368", "BM1370")
HEADER = bytes.fromhex(
    "04000020fc102bd0ea11470daf05a8e133a8a8505e21a2122b7f01000000000000000000"
    "6d0359c451434605c52a5a9ce074340be47c2c63840731f9edf1db3f26b1cdd9a9f16f643aae051747896e27"
)
DIFFICULTY = 2.0**-26


class Host:
    """Feeds frames to a chain at an emulated time and parses what comes back."""

    def __init__(self, chain: AsicChain, reply_len: int = 11) -> None:
        self.chain = chain
        self.now = 0.0
        self.parser = asic.ResponseParser(chain.family, reply_len=reply_len)
        self.raw = b""

    def send(self, frames, settle_s: float = 0.0) -> None:
        for item in frames:
            frame, delay_ms = item if isinstance(item, tuple) else (item, 0)
            self.chain.feed(frame, self.now)
            self.now += delay_ms / 1000.0

    def replies(self, horizon_s: float = 1.0) -> list:
        self.now += horizon_s
        data = b"".join(self.chain.pop_frames(self.now))
        self.raw += data
        return self.parser.feed(data)

    def run(self, seconds: float, hashrate_hs: float, error_fraction: float = 0.0,
            dt: float = 0.01) -> None:
        n = len(self.chain.chips)
        for _ in range(round(seconds / dt)):
            self.now += dt
            self.chain.step(self.now, dt, [hashrate_hs] * n, [error_fraction] * n)


def bring_up(family: str, chips: int, ticket: int = 256, freq_mhz: float | None = None) -> Host:
    chain = AsicChain(family, chips, DIFFICULTY, random.Random(5))
    host = Host(chain, reply_len=profile(family).reply_len)
    host.send(bringup.enumeration_frames(family))
    ids = host.replies()
    assert [r.value >> 16 for r in ids] == [profile(family).chip_id] * chips
    host.send(bringup.setup_frames(family, chips, difficulty=ticket))
    f = freq_mhz or profile(family).default_freq_mhz
    host.send(bringup.ramp_frames(family, 50.0, f))
    host.send(bringup.after_ramp_frames(family, f, chips))
    assert host.replies() == []  # writes, set address and chain inactive are never answered
    return host


@pytest.mark.parametrize("family", FAMILIES)
def test_init_sequence_enumerates_addresses_and_reads_back_the_pll(family):
    chips = 6
    host = bring_up(family, chips)
    host.send([asic.cmd_read(0x00)])
    ids = host.replies()
    assert [r.chip_addr for r in ids] == bringup.chip_addresses(chips)
    assert [r.value & 0xFF for r in ids] == bringup.chip_addresses(chips)
    assert all(len(r.raw) == 11 for r in ids)
    host.send([asic.cmd_read(asic.REG_PLL0)])
    pll = host.replies()
    expected = asic.pll_value(family, profile(family).default_freq_mhz) | 0x80000000
    assert [r.value for r in pll] == [expected] * chips
    assert host.chain.freqs_mhz() == [profile(family).default_freq_mhz] * chips
    host.send([asic.cmd_read(asic.REG_TICKET_MASK, chip=bringup.chip_addresses(chips)[2])])
    one = host.replies()
    assert [(r.chip_addr, r.value) for r in one] == [
        (bringup.chip_addresses(chips)[2], asic.ticket_mask(256))]


def test_replies_are_9_bytes_until_version_rolling_is_enabled_then_11():
    chain = AsicChain("BM1370", 3, DIFFICULTY, random.Random(1))
    host = Host(chain)
    host.send([asic.cmd_read(0x00)])
    data = b"".join(chain.pop_frames(1.0))
    assert len(data) == 3 * 9
    assert asic.ResponseParser("BM1370", reply_len=9).feed(data)[0].value == 0x13700000
    host.send([asic.cmd_write(asic.REG_VERSION_ROLLING, 0x9000FFFF), asic.cmd_read(0x00)])
    data = b"".join(chain.pop_frames(2.0))
    assert len(data) == 3 * 11
    assert len(asic.ResponseParser("BM1370").feed(data)) == 3


def test_chain_inactive_then_set_address_assigns_in_chain_order():
    chain = AsicChain("BM1366", 4, DIFFICULTY, random.Random(1))
    host = Host(chain, reply_len=9)
    host.send([asic.cmd_chain_inactive()])
    host.send([asic.cmd_read(0x00)])
    assert len(host.replies()) == 1  # only the first chip hears it: it does not relay yet
    host.send([asic.cmd_set_address(a) for a in (0x10, 0x20, 0x30, 0x40)])
    host.send([asic.cmd_read(0x00)])
    assert [r.chip_addr for r in host.replies()] == [0x10, 0x20, 0x30, 0x40]
    host.send([asic.cmd_write(0x54, 3, chip=0x30), asic.cmd_read(0x54)])
    assert [r.value for r in host.replies()] == [0, 0, 3, 0]


def test_commands_with_a_bad_crc_are_ignored():
    chain = AsicChain("BM1370", 2, DIFFICULTY, random.Random(1))
    host = Host(chain, reply_len=9)
    bad_read = bytearray(asic.cmd_read(0x00))
    bad_read[-1] ^= 0x01
    bad_write = bytearray(asic.pll_frame("BM1370", 400.0))
    bad_write[-1] ^= 0x04
    host.send([bytes(bad_read), bytes(bad_write)])
    assert host.replies() == []
    assert chain.parser.crc_errors == 2
    assert chain.freqs_mhz() == [50.0, 50.0]
    host.send([asic.cmd_read(0x00)])
    assert len(host.replies()) == 2


def test_on_write_reports_each_register_write_the_chips_act_on_with_its_time():
    chain = AsicChain("BM1370", 2, DIFFICULTY, random.Random(1))
    seen: list[tuple[int, int, int | None, float]] = []
    chain.on_write = lambda reg, value, chip, now_s: seen.append((reg, value, chip, now_s))
    host = Host(chain, reply_len=9)
    bad_write = bytearray(asic.pll_frame("BM1370", 400.0))
    bad_write[-1] ^= 0x04
    host.send([bytes(bad_write), asic.cmd_read(asic.REG_PLL0)])  # dropped, and a read
    host.now = 2.5
    host.send([asic.pll_frame("BM1370", 400.0), asic.cmd_write(0x54, 3, chip=0x02)])
    assert seen == [(asic.REG_PLL0, asic.pll_value("BM1370", 400.0), None, 2.5),
                    (0x54, 3, 0x02, 2.5)]
    assert chain.freqs_mhz() == [400.0, 400.0]


@pytest.mark.parametrize("family", FAMILIES)
def test_every_nonce_is_a_real_solution_with_the_right_job_core_and_version(family):
    chips = 4
    prof = profile(family)
    host = bring_up(family, chips, ticket=1)
    job_id = prof.job_id_step * 3 % 128
    host.send([asic.job_frame(family, job_id, HEADER)])
    host.run(0.3, hashrate_hs=500e6 * prof.small_cores)
    nonces = [r for r in host.replies(0.5) if r.kind == "nonce"]
    assert len(nonces) > 50
    target = target_for(DIFFICULTY)
    addrs = bringup.chip_addresses(chips)
    interval = bringup.address_interval(chips)
    base_version = int.from_bytes(HEADER[0:4], "little")
    seen_chips = set()
    for r in nonces:
        header = (struct.pack("<I", base_version | r.version_bits) + HEADER[4:76]
                  + struct.pack("<I", r.nonce))
        assert int.from_bytes(sha256d(header), "little") <= target
        assert r.job_id == job_id
        assert r.version_bits & ~0x1FFFE000 == 0  # only rolled bits inside the mask
        assert r.small_core == (r.version_bits >> 13) & (prof.small_cores_per_core - 1)
        assert r.core_id < prof.cores
        chip = max(i for i, a in enumerate(addrs) if a <= r.chip_addr_field)
        assert r.chip_addr_field < addrs[chip] + interval
        seen_chips.add(chip)
    assert seen_chips == set(range(chips))
    assert len({(r.nonce, r.version_bits) for r in nonces}) == len(nonces)  # no duplicates


def test_nonce_rate_follows_hashrate_over_ticket_difficulty():
    host = bring_up("BM1370", 2, ticket=64, freq_mhz=400.0)
    host.send([asic.job_frame("BM1370", 24, HEADER)])
    hashrate_hs = 1.0e12  # per chip
    seconds = 20.0
    host.run(seconds, hashrate_hs)
    nonces = [r for r in host.replies(1.0) if r.kind == "nonce"]
    expected = 2 * hashrate_hs * seconds / (2**32 * 64)  # ~145
    assert abs(len(nonces) - expected) < 4 * expected**0.5
    # the counters count every 2**32 hashes: the host's hashrate from them is the model's
    host.send([asic.cmd_read(0x8C), asic.cmd_read(0x88), asic.cmd_read(0x4C)])
    regs = host.replies()
    total = [r.value for r in regs if r.reg == 0x8C]
    domain0 = [r.value for r in regs if r.reg == 0x88]
    assert total == [int(hashrate_hs * seconds / 2**32)] * 2
    assert domain0 == [int(hashrate_hs * seconds / 2**32 / 4)] * 2
    assert [r.value for r in regs if r.reg == 0x4C] == [0, 0]


def test_ticket_mask_changes_the_reply_rate():
    counts = {}
    for ticket in (16, 256):
        host = bring_up("BM1366", 1, ticket=ticket)
        host.send([asic.job_frame("BM1366", 8, HEADER)])
        host.run(10.0, 2e12)
        counts[ticket] = sum(1 for r in host.replies() if r.kind == "nonce")
    assert counts[16] > 8 * counts[256]


def test_hardware_errors_give_invalid_nonces_and_count_in_0x4c():
    host = bring_up("BM1370", 1, ticket=16)
    host.send([asic.job_frame("BM1370", 48, HEADER)])
    host.run(5.0, 1e12, error_fraction=0.5)
    nonces = [r for r in host.replies() if r.kind == "nonce"]
    target = target_for(DIFFICULTY)
    bad = 0
    for r in nonces:
        header = (struct.pack("<I", int.from_bytes(HEADER[:4], "little") | r.version_bits)
                  + HEADER[4:76] + struct.pack("<I", r.nonce))
        bad += int.from_bytes(sha256d(header), "little") > target
    assert 0.3 < bad / len(nonces) < 0.7
    host.send([asic.cmd_read(0x4C), asic.cmd_read(0x8C)])
    err, total = (r.value for r in host.replies())
    assert err == pytest.approx(total * 0.5, abs=2)


def test_fast_uart_write_changes_the_reply_timing_after_the_frame():
    chain = AsicChain("BM1370", 8, DIFFICULTY, random.Random(1))
    host = Host(chain, reply_len=9)
    host.send([asic.cmd_read(0x00)])
    early = len(chain.pop_frames(0.001))
    assert early < 8  # 72 bytes take 6.2 ms at 115 740 bd
    assert early + len(chain.pop_frames(0.01)) == 8
    frame, host_baud = bringup.baud_frame("BM1370")
    assert chain.baud == 115740
    host.now = 1.0
    host.send([frame, asic.cmd_read(0x00)])
    assert chain.baud == asic.uart_baud(2)
    assert abs(chain.baud - host_baud) / host_baud < 0.05
    assert len(chain.pop_frames(1.0 + 8 * 9 * 10 / chain.baud + 1e-6)) == 8


def test_reset_clears_state_and_ends_a_hang():
    host = bring_up("BM1370", 2)
    chain = host.chain
    chain.hung = True
    host.send([asic.cmd_read(0x00)])
    assert host.replies() == []
    chain.reset()
    assert chain.freqs_mhz() == [50.0, 50.0]
    host.parser = asic.ResponseParser("BM1370", reply_len=9)
    host.send([asic.cmd_read(0x00)])
    assert [r.chip_addr for r in host.replies()] == [0, 0]


def test_power_off_silences_the_chain_and_power_on_needs_reinit():
    host = bring_up("BM1368", 2)
    host.chain.set_powered(False)
    host.send([asic.cmd_read(0x00)])
    assert host.replies() == []
    host.chain.set_powered(True)
    host.parser = asic.ResponseParser("BM1368", reply_len=9)
    host.send([asic.cmd_read(asic.REG_PLL0)])
    assert [r.value for r in host.replies()] == [asic.pll_value("BM1368", 50.0) | 0x80000000] * 2


def test_random_bytes_never_raise_and_a_valid_read_is_answered_afterwards():
    rng = random.Random(42)
    chain = AsicChain("BM1370", 4, DIFFICULTY, random.Random(1))
    host = Host(chain, reply_len=9)
    for _ in range(200):
        chain.feed(bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 300))), host.now)
        host.now += 0.001
    # noise may have left a partial frame; after a short silence the chain resyncs
    host.run(0.2, 0.0)
    host.replies(1.0)
    assert chain.parser.discarded_bytes > 10000
    host.send([asic.cmd_read(0x00)])
    replies = host.replies()
    assert [r.value >> 16 for r in replies] == [0x1370] * 4


def test_a_valid_read_after_noise_that_looks_like_a_job_start_is_answered():
    chain = AsicChain("BM1370", 1, DIFFICULTY, random.Random(1))
    host = Host(chain, reply_len=9)
    chain.feed(b"\x55\xaa\x21\x56\x01\x02" + asic.cmd_read(0x00), 0.0)
    host.run(0.1, 0.0)
    assert [r.value for r in host.replies()] == [0x13700000]


def test_128_chip_chain_enumerates_with_distinct_addresses():
    host = bring_up("BM1370", 128)
    host.send([asic.cmd_read(0x00)])
    replies = host.replies(2.0)
    assert [r.chip_addr for r in replies] == bringup.chip_addresses(128)


def test_same_seed_same_inputs_same_nonces():
    def nonces(seed: int) -> bytes:
        chain = AsicChain("BM1370", 2, DIFFICULTY, random.Random(seed))
        host = Host(chain)
        host.send(bringup.enumeration_frames("BM1370"))
        host.send(bringup.setup_frames("BM1370", 2, difficulty=1))
        host.send([asic.job_frame("BM1370", 24, HEADER)])
        host.run(0.5, 1e12)
        host.replies(1.0)
        return host.raw

    assert nonces(3) == nonces(3)
    assert nonces(3) != nonces(4)


def test_board_emulator_physics_depend_only_on_emulated_time_and_inputs():
    from hil.hashboard import HashBoardEmulator

    def run(seed: int) -> dict:
        emu = HashBoardEmulator("BM1370", 2, difficulty=DIFFICULTY, seed=seed)  # not started
        frames = (bringup.enumeration_frames("BM1370")
                  + bringup.setup_frames("BM1370", 2, difficulty=64))
        for frame, _ in frames:
            emu.hal.chain_write(frame)
        emu.advance(50)
        emu.hal.chain_write(asic.pll_frame("BM1370", 400.0))
        emu.hal.chain_write(asic.job_frame("BM1370", 24, HEADER))
        emu.hal.set_fan_pct(40)
        emu.advance(300)
        emu.inject_fault("chip_hw_errors", chip=0, rate_hz=5.0)
        emu.set_ambient_c(33.0)
        emu.advance(300)
        state = emu.state()
        for key in ("pid", "wall_s", "lag_s", "ports", "seed"):
            state.pop(key)
        return state

    first = run(11)
    assert first == run(11)
    assert first["nonces_emitted"] > 0 and first["hw_nonces_emitted"] > 0
    assert first["chip_temp_c"] != run(12)["chip_temp_c"]


def test_bm1397_chain_enumerates_with_9_byte_replies_and_raw_pll_dividers():
    chain = AsicChain("BM1397", 2, DIFFICULTY, random.Random(1))
    host = Host(chain, reply_len=9)
    host.send(bringup.enumeration_frames("BM1397"))
    assert [r.value for r in host.replies()] == [0x13971800] * 2
    host.send(bringup.setup_frames("BM1397", 2))
    host.send(bringup.ramp_frames("BM1397", 50.0, 425.0))
    host.send([asic.cmd_read(asic.REG_PLL0), asic.cmd_read(0x00)])
    replies = host.replies()
    assert [r.value for r in replies[:2]] == [asic.pll_value("BM1397", 425.0) | 0x80000000] * 2
    assert [r.chip_addr for r in replies[2:]] == bringup.chip_addresses(2)
    assert chain.freqs_mhz() == [425.0, 425.0]


def test_bm1397_nonces_are_real_solutions_of_the_midstate_job():
    chain = AsicChain("BM1397", 2, 2.0**-28, random.Random(1))
    host = Host(chain, reply_len=9)
    host.send(bringup.enumeration_frames("BM1397"))
    host.send(bringup.setup_frames("BM1397", 2, difficulty=1))
    host.send([asic.pll_frame("BM1397", 425.0)])
    host.replies()
    mask = 0x1FFFE000
    host.send([asic.job_frame("BM1397", 0x28, HEADER, version_mask=mask)])
    host.run(0.3, 285e9)
    nonces = [r for r in host.replies() if r.kind == "nonce"]
    assert len(nonces) > 5
    target = target_for(2.0**-28)
    base = int.from_bytes(HEADER[:4], "little")
    for r in nonces:
        version = asic.rolled_version(base, mask, r.midstate)
        full = struct.pack("<I", version) + HEADER[4:76] + struct.pack("<I", r.nonce)
        assert int.from_bytes(sha256d(full), "little") <= target
        assert r.job_id == 0x28
        assert r.core_id < 168
    assert {r.midstate for r in nonces} == {0, 1, 2, 3}
    assert {r.chip_addr_field // 128 for r in nonces} == {0, 1}
