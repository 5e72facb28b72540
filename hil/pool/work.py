"""The lab pool's work and its share check: a real mainnet job and the jobs rolled forward from
it, the header assembled the way cgminer and ckpool do it (every 4-byte word byte-reversed), and
the target floor(0xFFFF·2**208 / D) in exact integer arithmetic. `hashlib` only: nothing here
comes from `agent`."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

DIFF1 = 0xFFFF << 208
NTIME_SLACK_S = 7000  # ckpool: a share's ntime may run this far ahead of its job's

#: Braiins Pool's notify for block 791433 (ESP-Miner's "nonce diff checking 2" vector): its
#: extranonce1 is 8 bytes, extranonce2 8 bytes, and the share below has difficulty 683.5
MAINNET_791433: dict[str, Any] = {
    "prevhash": "0c859545a3498373a57452fac22eb7113df2a465000543520000000000000000",
    "coinb1": "01000000010000000000000000000000000000000000000000000000000000000000000000ff"
              "ffffff4b0389130cfabe6d6d5cbab26a2599e92916edec5657a94a0708ddb970f5c45b5d",
    "coinb2": "31650707758de07b010000000000001cfd7038212f736c7573682f000000000379ad0c2a0000"
              "00001976a9147c154ed1dc59609e3d26abb2df2ea3d587cd8c4188ac0000000000000000"
              "2c6a4c2952534b424c4f434b3ae725d3994b811572c1f345deb98b56b465ef8e153ecbbd27"
              "fa37bf1b005161380000000000000000266a24aa21a9ed63b06a7946b190a3fda1d76165b2"
              "5c9b883bcc6621b040773050ee2a1bb18f1800000000",
    "branch": [
        "2b77d9e413e8121cd7a17ff46029591051d0922bd90b2b2a38811af1cb57a2b2",
        "5c8874cef00f3a233939516950e160949ef327891c9090467cead995441d22c5",
        "2d91ff8e19ac5fa69a40081f26c5852d366d608b04d2efe0d5b65d111d0d8074",
        "0ae96f609ad2264112a0b2dfb65624bedbcea3b036a59c0173394bba3a74e887",
        "e62172e63973d69574a82828aeb5711fc5ff97946db10fc7ec32830b24df7bde",
        "adb49456453aab49549a9eb46bb26787fb538e0a5f656992275194c04651ec97",
        "a7bc56d04d2672a8683892d6c8d376c73d250a4871fdf6f57019bcc737d6d2c2",
        "d94eceb8182b4f418cd071e93ec2a8993a0898d4c93bc33d9302f60dbbd0ed10",
        "5ad7788b8c66f8f50d332b88a80077ce10e54281ca472b4ed9bbbbcb6cf99083",
        "9f9d784b33df1b3ed3edb4211afc0dc1909af9758c6f8267e469f5148ed04809",
        "48fd17affa76b23e6fb2257df30374da839d6cb264656a82e34b350722b05123",
        "c4f5ab01913fc186d550c1a28f3f3e9ffaca2016b961a6a751f8cca0089df924",
        "cff737e1d00176dd6bbfa73071adbb370f227cfb5fba186562e4060fcec877e1",
    ],
    "version": 0x20000004,
    "nbits": "1705ae3a",
    "ntime": 0x647025B5,
    "extranonce_bytes": 16,  # extranonce1 + extranonce2 in the original scriptSig
    "published_share": {"extranonce1": "12905085617eff8e", "extranonce2": "0100000000000000",
                        "ntime": "647025b5", "nonce": "0a029ed1", "difficulty": 683},
}
SCRIPT_LEN_AT = 41  # coinb1: version 4, input count 1, outpoint 36, then the script length
HEIGHT_AT = 43  # after the length byte and the push opcode 0x03


def dsha(data: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


def flip_words(data: bytes) -> bytes:
    """Every 4-byte word byte-reversed (cgminer's flip80, ckpool's flip_80)."""
    return b"".join(data[i:i + 4][::-1] for i in range(0, len(data), 4))


def share_target(difficulty: float) -> int:
    """floor(DIFF1 / D), exact for any float D."""
    d = Fraction(difficulty)
    return (DIFF1 * d.denominator) // d.numerator


@dataclass(frozen=True)
class PoolJob:
    job_id: str
    prevhash: str  # notify form
    coinb1: str
    coinb2: str
    branch: tuple[str, ...]
    version: int
    nbits: str
    ntime: int
    height: int

    def notify_params(self, clean: bool) -> list[Any]:
        return [self.job_id, self.prevhash, self.coinb1, self.coinb2, list(self.branch),
                f"{self.version:08x}", self.nbits, f"{self.ntime:08x}", clean]

    def header(self, extranonce1: str, extranonce2: str, ntime: str, nonce: str,
               version: int) -> bytes:
        """The 80 header bytes this job makes with these fields (pre-flip hex, then flip)."""
        tx = bytes.fromhex(self.coinb1 + extranonce1 + extranonce2 + self.coinb2)
        node = dsha(tx)
        for sibling in self.branch:
            node = dsha(node + bytes.fromhex(sibling))
        pre = (f"{version:08x}" + self.prevhash + flip_words(node).hex() + ntime + self.nbits
               + nonce)
        return flip_words(bytes.fromhex(pre))


@dataclass
class ShareCheck:
    """One mining.submit as this pool judged it."""

    miner: int
    worker: str
    job_id: str
    params: int  # 5 or 6
    version_bits: int
    required: float  # the difficulty the share had to meet
    difficulty: float  # the share's own (0 when it could not be hashed)
    outcome: str  # accepted, invalid, stale, duplicate, unauthorized, rejected (a cue)
    reason: str = ""
    at_s: float = field(default_factory=time.monotonic)  # when it came
    answered: bool = False  # the verdict was written to the miner


