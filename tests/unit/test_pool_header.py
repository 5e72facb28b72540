"""Headers from Stratum jobs against the published vectors of notes/stratum.md §3: coinbase,
merkle root, header, share difficulty, with and without rolled version bits; and the lab pool's
own (independent) share check on the same vectors."""

from __future__ import annotations

import json

import pytest

from agent.chain.work import DIFF1_TARGET, hash_difficulty, target_for
from agent.pool.header import (
    Job,
    block_header,
    coinbase,
    dsha,
    extranonce2_bytes,
    header_hash_value,
    merkle_root,
    nbits_target,
    words_swapped,
)
from agent.pool.message import parse_line, submit_params
from hil.pool import MAINNET_791433, LabPool, share_target

V1 = MAINNET_791433

# V3: ESP-Miner verifiers/bm1397.py, block 790246 (Braiins), nonce 0
V3_COINB1 = ("01000000010000000000000000000000000000000000000000000000000000000000000000ffffffff"
             "4b03e60e0cfabe6d6d7595fc426909f3a63c563a88773a618ec42cc51188ed0632b69f1c3053a8f8"
             "180100000000000000")
V3_COINB2 = ("2c28569a1f2f736c7573682f0000000003a1f3a22b000000001976a9147c154ed1dc59609e3d26abb2"
             "df2ea3d587cd8c4188ac00000000000000002c6a4c2952534b424c4f434b3a799d4c611eff5765ba06"
             "d2c58ad71b5734d677cea10942664b2a712d005108ae0000000000000000266a24aa21a9ed5c4d2056"
             "e3eef09b05d95897adec38c5c3f460a919e95f87e15664957c70305a00000000")
V3_BRANCH = [
    "4ea53a030256c37391b891b0d5060537df63944ce3fcd45121215596376bb3db",
    "22cd1dde2c1b083237bbadd62ed1d51ee455265b7defe04dc8bcae7e5acacb33",
    "60c781a8b02c07544cb3a91de3b4d7a13f9939c8579f3ac92fa28e802ace1b39",
    "d89820b36568adc0705d71d639e69ccb7c168a1051697846cf5d98e5725ee4e3",
    "73f0f773a3b6097388984f934ba1b01afc771c33db6df126cd6971cfea9f8f49",
    "420958bbb39f6b8ad30e5b45b38a3825bf76f619b7dbb73a0366605ff882e91d",
    "75f9ef87931104db956c88d65198596049af51017af4685c4548f2c31ec75b6d",
    "70dd7189d5b927ac10a750062e5ab9f8b83fb784068e1c80d0df919bcf22e1b2",
    "b34f2440b2b4609e44594885a397086339f4a2d880fb2d50ac585f757b895832",
    "4c62d861fb259a743d1e2787eeac5bdd22a9883b5cc0b025843cff9441ea6b74",
    "62522d5d8e2ff9d721a9a4b91931ec61069fff7c8ad23119718c068a035b9b1b",
    "a0e7cf5509d9d0d87ff9a4f6332f76a243de01f4e93289b290e937e7fd03224f",
]


def notify_line(job_id: str, prevhash: str, coinb1: str, coinb2: str, branch: list[str],
                version: str, nbits: str, ntime: str, clean: bool = True) -> bytes:
    return json.dumps({"id": None, "method": "mining.notify",
                       "params": [job_id, prevhash, coinb1, coinb2, branch, version, nbits,
                                  ntime, clean]}).encode()


def v1_job():
    msg = parse_line(notify_line("0", V1["prevhash"], V1["coinb1"], V1["coinb2"], V1["branch"],
                                 f"{V1['version']:08x}", V1["nbits"], f"{V1['ntime']:08x}"))
    assert isinstance(msg, Job)
    return msg


def test_v4_coinbase_is_the_plain_concatenation():
    tx = coinbase(
        bytes.fromhex("01000000010000000000000000000000000000000000000000000000000000000000000000"
                      "ffffffff20020862062f503253482f04b8864e5008"),
        bytes.fromhex("e9695791"), bytes.fromhex("99999999"),
        bytes.fromhex("072f736c7573682f000000000100f2052a010000001976a914d23fcdf86f7e756a64a7a96"
                      "88ef9903327048ed988ac00000000"))
    assert tx.hex() == (
        "01000000010000000000000000000000000000000000000000000000000000000000000000ffffffff2002"
        "0862062f503253482f04b8864e5008e969579199999999072f736c7573682f000000000100f2052a01000000"
        "1976a914d23fcdf86f7e756a64a7a9688ef9903327048ed988ac00000000")


def test_v4_merkle_root_b():
    tx = coinbase(
        bytes.fromhex("01000000010000000000000000000000000000000000000000000000000000000000000000"
                      "ffffffff2503777d07062f503253482f0405b8c75208f800880e000000000b2f436f696e48"
                      "756e74722f0000000001"),
        bytes.fromhex("603f352a"), bytes.fromhex("01000000"),
        bytes.fromhex("1976a914c633315d376c20a973a758f7422d67f7bfed9c5888ac00000000"))
    branch = [bytes.fromhex(h) for h in (
        "f0dbca1ee1a9f6388d07d97c1ab0de0e41acdf2edac4b95780ba0a1ec14103b3",
        "8e43fd2988ac40c5d97702b7e5ccdf5b06d58f0e0d323f74dd5082232c1aedf7",
        "1177601320ac928b8c145d771dae78a3901a089fa4aca8def01cbff747355818",
        "9f64f3b0d9edddb14be6f71c3ac2e80455916e207ffc003316c6a515452aa7b4",
        "2d0b54af60fad4ae59ec02031f661d026f2bb95e2eeb1e6657a35036c017c595")]
    assert merkle_root(tx, branch).hex() == \
        "5cc58f5e84aafc740d521b92a7bf72f4e56c4cc3ad1c2159f1d094f97ac34eee"


def test_v1_mainnet_notify_to_header_and_the_published_share_of_difficulty_683():
    job = v1_job()
    share = V1["published_share"]
    en1, en2 = bytes.fromhex(share["extranonce1"]), bytes.fromhex(share["extranonce2"])
    assert len(coinbase(job.coinb1, en1, en2, job.coinb2)) == 260
    assert job.root(en1, en2).hex() == \
        "5bdc1968499c3393873edf8e07a1c3a50a97fc3a9d1a376bbf77087dd63778eb"
    header = job.header(en1, en2, nonce=int(share["nonce"], 16))
    assert header.hex() == (
        "040000204595850c738349a3fa5274a511b72ec265a4f23d5243050000000000000000005bdc1968499c33"
        "93873edf8e07a1c3a50a97fc3a9d1a376bbf77087dd63778ebb52570643aae0517d19e020a")
    assert dsha(header)[::-1].hex() == \
        "00000000005fe144efbc66241c0094b8fdc2702b7729226fdfed70ca8094c0b5"
    difficulty = hash_difficulty(header_hash_value(header))
    assert int(difficulty) == 683 and difficulty == pytest.approx(683.5109367312982)
    assert header_hash_value(header) <= target_for(683) and \
        header_hash_value(header) > target_for(684)
    assert DIFF1_TARGET / nbits_target(job.nbits) == pytest.approx(49549703178592.68)
    # the submit as a pool without version rolling gets it, and with the 6th param
    assert submit_params("w", job.job_id, en2, job.ntime, int(share["nonce"], 16), None) == \
        ["w", "0", "0100000000000000", "647025b5", "0a029ed1"]
    assert submit_params("w", "0", en2, job.ntime, 0x0A029ED1, 0)[5] == "00000000"


def test_v3_merkle_root_and_header_with_nonce_zero():
    job = parse_line(notify_line(
        "1f9a56282c", "bf44fd3513dc7b837d60e5c628b572b448d204a8000007490000000000000000",
        V3_COINB1, V3_COINB2, V3_BRANCH, "20000004", "1705dd01", "64658bd8"))
    assert isinstance(job, Job)
    en1, en2 = bytes.fromhex("1165060344b679"), extranonce2_bytes(0, 8)
    assert job.root(en1, en2).hex() == \
        "cd1be82132ef0d12053dcece1fa0247fcfdb61d4dbd3eb32ea9ef9b4c604a846"
    assert job.header(en1, en2).hex() == (
        "0400002035fd44bf837bdc13c6e5607db472b528a804d248490700000000000000000000cd1be82132ef0d"
        "12053dcece1fa0247fcfdb61d4dbd3eb32ea9ef9b4c604a846d88b656401dd051700000000")


def test_v4_nonce_difficulty_18():
    prevhash = words_swapped(bytes.fromhex(
        "d02b10fc0d4711eae1a805af50a8a83312a2215e00017f2b0000000000000000"))
    root = bytes.fromhex("6d0359c451434605c52a5a9ce074340be47c2c63840731f9edf1db3f26b1cdd9")
    header = block_header(0x20000004, prevhash, root, 0x646FF1A9, 0x1705AE3A, 0x276E8947)
    assert dsha(header)[::-1].hex() == \
        "000000000e30101020e2ec8c9302a9ee56b2b2bef354b63489a0801f5789ed19"
    assert int(hash_difficulty(header_hash_value(header))) == 18


def test_v6_genesis_block_in_notify_form_with_no_branch():
    job = parse_line(notify_line(
        "g", "0" * 64,
        "01000000010000000000000000000000000000000000000000000000000000000000000000ffffffff4d04"
        "ffff001d0104455468652054696d65732030332f4a616e2f32303039204368616e63656c6c6f72206f6e"
        "206272696e6b206f66207365636f6e64",
        "666f722062616e6b73ffffffff0100f2052a01000000434104678afdb0fe5548271967f1a67130b7105cd6"
        "a828e03909a67962e0ea1f61deb649f6bc3f4cef38c4f35504e51ec112de5c384df7ba0b8d578a4c702b6b"
        "f11d5fac00000000", [], "00000001", "1d00ffff", "495fab29"))
    assert isinstance(job, Job)
    header = job.header(bytes.fromhex("206261696c"), bytes.fromhex("6f757420"),
                        nonce=0x7C2BAC1D)
    assert job.root(bytes.fromhex("206261696c"), bytes.fromhex("6f757420"))[::-1].hex() == \
        "4a5e1e4baab89f3a32518a88c31bc87f618f76673e2cc77ab2127b7afdeda33b"
    assert dsha(header)[::-1].hex() == \
        "000000000019d6689c085ae165831e934ff763ae46a2a6c172b3f1b60a8ce26f"
    assert nbits_target(0x1D00FFFF) == DIFF1_TARGET


def test_block_125552_prevhash_word_order():
    published = bytes.fromhex(
        "0100000081cd02ab7e569e8bcd9317e2fe99f2de44d49ab2b8851ba4a308000000000000e320b6c2fffc8d"
        "750423db8b1eb942ae710e951ed797f7affc8892b0f1fc122bc7f5d74df2b9441a42a14695")
    notify_prev = "ab02cd818b9e567ee21793cddef299feb29ad444a41b85b8000008a300000000"
    assert words_swapped(bytes.fromhex(notify_prev)) == published[4:36]
    rebuilt = block_header(1, published[4:36], published[36:68], 0x4DD7F5C7, 0x1A44B9F2,
                           0x9546A142)
    assert rebuilt == published
    assert dsha(rebuilt)[::-1].hex() == \
        "00000000000000001e8d6829a8a21adc5d38d0a473b144b6765798e61f98bd1d"


# A real block with rolled version bits: testnet block 1,670,926, version 0x3fffe000 = base
# 0x20000000 with all of 0x1fffe000 rolled (header and hash published by Autarkysoft's tests)
TESTNET_ROLLED = bytes.fromhex(
    "00e0ff3ff79fa236e509c35d006c58546db4f27c4874e6dfa4dd5b30b01b1b000000000034310adae6b8d3cc"
    "a58e56a42eb55ab3c17599cc696b133afe0e4c2c49ecfa2cb5b1795eb334011aabf54a10")


def test_rolled_version_bits_make_the_published_header_and_hash():
    prevhash, root = TESTNET_ROLLED[4:36], TESTNET_ROLLED[36:68]
    job = parse_line(notify_line("7", words_swapped(prevhash).hex(), "00", "00", [],
                                 "20000000", "1a0134b3", "5e79b1b5"))
    assert isinstance(job, Job)
    mask, rolled_bits = 0x1FFFE000, 0x1FFFE000
    header = block_header(job.version | rolled_bits, job.prevhash, root, job.ntime, job.nbits,
                          424342955)
    assert header[:76] == TESTNET_ROLLED[:76]
    assert dsha(header)[::-1].hex() == \
        "000000000000005befb0b49dec35738f6ad493f9c7a6e777d69836323f1cf5f2"
    assert hash_difficulty(header_hash_value(header)) == pytest.approx(46716065.626, rel=1e-9)
    # the 6th submit param is rolled & mask; the same nonce without the bits is no share
    version_bits = (job.version | rolled_bits) & mask
    assert submit_params("w", "7", b"\0", job.ntime, 424342955, version_bits)[3:] == \
        ["5e79b1b5", "194af5ab", "1fffe000"]
    plain = block_header(job.version, job.prevhash, root, job.ntime, job.nbits, 424342955)
    assert header_hash_value(plain) > target_for(1)


@pytest.mark.parametrize(("field", "bits"), [(0x0001, "00002000"), (0x6C40, "0d880000")])
def test_chip_version_field_to_submit_bits(field, bits):
    """BM1366+ report the rolled bits >> 13 (ESP-Miner logs, notes §5)."""
    assert f"{(0x20000000 | field << 13) & 0x1FFFE000:08x}" == bits


@pytest.mark.parametrize(("counter", "size", "hex_"), [
    (0, 4, "00000000"), (1, 4, "01000000"), (2, 4, "02000000"), (2**32 - 2, 4, "feffffff"),
    ((2**32 - 1) // 2, 6, "ffffff7f0000")])
def test_extranonce2_is_a_little_endian_counter(counter, size, hex_):
    assert extranonce2_bytes(counter, size).hex() == hex_


@pytest.mark.parametrize(("difficulty", "target"), [
    (1, "00000000ffff0000000000000000000000000000000000000000000000000000"),
    (512, "00000000007fff80000000000000000000000000000000000000000000000000"),
    (683, "00000000005ff3a18bce862f3a18bce862f3a18bce862f3a18bce862f3a18bce"),
    (1000, "00000000004188f5c28f5c28f5c28f5c28f5c28f5c28f5c28f5c28f5c28f5c28")])
def test_share_targets_of_notes_2_2(difficulty, target):
    assert f"{target_for(difficulty):064x}" == target
    assert f"{share_target(difficulty):064x}" == target  # the lab pool's own arithmetic


def test_the_lab_pool_accepts_the_published_share_on_its_own_arithmetic():
    """The lab pool checks shares without agent code; the mainnet share of V1 is valid there
    at 683 and not at 684."""
    share = V1["published_share"]
    pool = LabPool(extranonce1=share["extranonce1"], extranonce2_size=8)
    job = pool.job
    header = job.header(share["extranonce1"], share["extranonce2"], share["ntime"],
                        share["nonce"], job.version)
    assert header.hex().startswith("040000204595850c")
    value = int.from_bytes(dsha(header), "little")
    assert value <= share_target(683) and value > share_target(684)
    # the pool's header equals the client's for the same job and fields
    client = v1_job()
    assert header == client.header(bytes.fromhex(share["extranonce1"]),
                                   bytes.fromhex(share["extranonce2"]),
                                   nonce=int(share["nonce"], 16))
