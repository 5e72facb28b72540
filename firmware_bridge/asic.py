"""BM13xx serial codec: CRCs, command and job frames, PLL, ticket mask, reply and command parsers.

One implementation for the agent (host driver), the emulator (chip side) and the bridge firmware.
Runs unchanged on CPython and MicroPython (no typing/dataclasses/struct.Struct/bit_length).
Section numbers refer to the BM13xx protocol notes (spec/bm13xx-protocol.md).
"""
# MicroPython-first: %-formatting (f-string support varies by port) and no `raise ... from`
# (MicroPython warns on exception chaining).
# ruff: noqa: UP031


from firmware_bridge.chips import profile
from firmware_bridge.framing import OUTER_IF_FOLLOWED, OUTER_IF_ONLY_FOLLOWED, FrameHunter

PREAMBLE_CMD = b"\x55\xaa"  # host -> chip
PREAMBLE_REPLY = b"\xaa\x55"  # chip -> host

HDR_JOB = 0x21
HDR_SET_ADDRESS = 0x40
HDR_WRITE = 0x41
HDR_READ = 0x42
HDR_CHAIN_INACTIVE = 0x53
HDR_ALL = 0x10

REG_CHIP_ID = 0x00
REG_PLL0 = 0x08
REG_HCN = 0x10
REG_TICKET_MASK = 0x14
REG_MISC_CONTROL = 0x18
REG_FAST_UART = 0x28
REG_CORE_CTRL = 0x3C
REG_ERROR_COUNT = 0x4C
REG_PLL0_DIVIDER = 0x70
REG_TOTAL_COUNT = 0x8C
REG_VERSION_ROLLING = 0xA4

REF_CLOCK_MHZ = 25.0
IDLE_FREQ_MHZ = 50.0  # where ESP-Miner parks the chips when mining stops (§6.5)

# ---------------------------------------------------------------------------------------------
# CRCs (§2.4, §2.5, §3.3)


def _crc5_table():
    # The 5-bit register lives in the top 5 bits of a byte (crc << 3); poly 0x05 << 3 = 0x28.
    table = []
    for i in range(256):
        r = i
        for _ in range(8):
            r = ((r << 1) ^ 0x28) & 0xFF if r & 0x80 else (r << 1) & 0xFF
        table.append(r)
    return table


def _crc16_table():
    table = []
    for i in range(256):
        r = i << 8
        for _ in range(8):
            r = ((r << 1) ^ 0x1021) & 0xFFFF if r & 0x8000 else (r << 1) & 0xFFFF
        table.append(r)
    return table


_CRC5 = _crc5_table()
_CRC16 = _crc16_table()


def crc5(data):
    """CRC5 of whole bytes: poly 0x05, init 0x1F, MSB first, no xorout ("123456789" -> 0x0F).

    A command's CRC is crc5(frame[2:-1]); a valid reply gives crc5(reply[2:]) == 0 (residue)."""
    t = _CRC5
    r = 0xF8
    for b in data:
        r = t[r ^ b]
    return r >> 3


def _crc5_bits(crc, value, nbits):
    # Feed the top `nbits` of the 8-bit `value`, MSB first, into a 5-bit CRC register.
    for k in range(7, 7 - nbits, -1):
        fb = ((crc >> 4) & 1) ^ ((value >> k) & 1)
        crc = ((crc << 1) & 0x1F) ^ (0x05 if fb else 0)
    return crc


def crc16(data):
    """CRC-16/CCITT-FALSE: poly 0x1021, init 0xFFFF, no reflection ("123456789" -> 0x29B1)."""
    t = _CRC16
    r = 0xFFFF
    for b in data:
        r = ((r << 8) & 0xFFFF) ^ t[(r >> 8) ^ b]
    return r


# ---------------------------------------------------------------------------------------------
# argument checks (MicroPython's struct.pack truncates silently: check before packing)


def _check_int(name, value, lo, hi):
    if not isinstance(value, int) or isinstance(value, bool) or value < lo or value > hi:
        raise ValueError("%s must be an int in %d..%d, got %r" % (name, lo, hi, value))
    return value


def _check_bytes(name, value, length):
    if not isinstance(value, (bytes, bytearray, memoryview)) or len(value) != length:
        raise ValueError("%s must be %d bytes, got %r" % (name, length, value))
    return bytes(value)


def _u32be(v):
    return bytes(((v >> 24) & 0xFF, (v >> 16) & 0xFF, (v >> 8) & 0xFF, v & 0xFF))


def _u32le(v):
    return bytes((v & 0xFF, (v >> 8) & 0xFF, (v >> 16) & 0xFF, (v >> 24) & 0xFF))


def _be32(b, i):
    return (b[i] << 24) | (b[i + 1] << 16) | (b[i + 2] << 8) | b[i + 3]


def _le32(b, i):
    return b[i] | (b[i + 1] << 8) | (b[i + 2] << 16) | (b[i + 3] << 24)


# ---------------------------------------------------------------------------------------------
# command frames (§2)


def command(header, payload):
    """A command frame: 55 AA | header | len | payload | CRC5 (len = payload + 3)."""
    body = bytes((header, len(payload) + 3)) + bytes(payload)
    return PREAMBLE_CMD + body + bytes((crc5(body),))


def cmd_write(reg, value, chip=None):
    """Write register `reg` = `value` (u32, big-endian on the wire); chip None = broadcast."""
    _check_int("reg", reg, 0, 255)
    _check_int("value", value, 0, 0xFFFFFFFF)
    if chip is None:
        return command(HDR_WRITE | HDR_ALL, bytes((0, reg)) + _u32be(value))
    _check_int("chip", chip, 0, 255)
    return command(HDR_WRITE, bytes((chip, reg)) + _u32be(value))


def cmd_read(reg, chip=None):
    """Read register `reg`; chip None = every chip answers (broadcast)."""
    _check_int("reg", reg, 0, 255)
    if chip is None:
        return command(HDR_READ | HDR_ALL, bytes((0, reg)))
    _check_int("chip", chip, 0, 255)
    return command(HDR_READ, bytes((chip, reg)))


def cmd_set_address(addr):
    """Give `addr` to the first chip without an address (after chain inactive)."""
    _check_int("addr", addr, 0, 255)
    return command(HDR_SET_ADDRESS, bytes((addr, 0)))


def cmd_chain_inactive():
    """Chain inactive (always broadcast): 55 AA 53 05 00 00 03."""
    return command(HDR_CHAIN_INACTIVE, b"\x00\x00")


def version_rolling_value(mask=0x1FFFE000):
    """Register 0xA4 value enabling hardware version rolling for `mask` (§5.4): 0x9000FFFF."""
    _check_int("mask", mask, 0, 0xFFFFFFFF)
    return 0x90000000 | ((mask >> 13) & 0xFFFF)


# ---------------------------------------------------------------------------------------------
# PLL (§4.1)


def _round_half_up(x):
    return int(x + 0.5)


def pll_params(family, freq_mhz):
    """(fbdiv, refdiv, p1, p2) for `freq_mhz`, chosen as ESP-Miner does: REFDIV 2..1, P1 7..1,
    P2 7..1 with P1 > P2, FBDIV = round(f/25*REF*P1*P2) inside the family window; best by
    (1) frequency error, (2) lowest VCO, (3) smallest P1*P2. ValueError if nothing fits."""
    p = profile(family)
    if not isinstance(freq_mhz, (int, float)) or isinstance(freq_mhz, bool):
        raise ValueError("freq_mhz must be a number, got %r" % (freq_mhz,))
    if not (freq_mhz > 0.0) or freq_mhz > 10000.0:  # also rejects NaN
        raise ValueError("freq_mhz must be in (0, 10000], got %r" % (freq_mhz,))
    eps = 0.0001
    best = None
    best_diff = 1e30
    best_vco = 1e30
    best_post = 1 << 16
    for ref in (2, 1):
        for p1 in range(7, 0, -1):
            for p2 in range(7, 0, -1):
                if p1 <= p2:
                    continue
                div = ref * p1 * p2
                fb = _round_half_up(freq_mhz / REF_CLOCK_MHZ * div)
                if fb < p.fbdiv_min or fb > p.fbdiv_max:
                    continue
                diff = abs(freq_mhz - REF_CLOCK_MHZ * fb / div)
                vco = REF_CLOCK_MHZ * fb / ref
                post = p1 * p2
                if abs(diff - best_diff) < eps:  # equal error: lower VCO, then smaller P1*P2
                    better = vco < best_vco - eps or (abs(vco - best_vco) < eps
                                                      and post < best_post)
                else:
                    better = diff < best_diff
                if better:
                    best = (fb, ref, p1, p2)
                    best_diff = diff
                    best_vco = vco
                    best_post = post
    if best is None:
        raise ValueError(
            "%s cannot run at %r MHz (FBDIV window %d..%d)"
            % (p.family, freq_mhz, p.fbdiv_min, p.fbdiv_max)
        )
    return best


def pll_value(family, freq_mhz):
    """Register 0x08 value for `freq_mhz`: 0x40 (PLLEN) | 0x10 when VCO >= 2400 MHz (not BM1397),
    FBDIV, REFDIV, post dividers (raw on BM1397, P-1 on the others)."""
    fb, ref, p1, p2 = pll_params(family, freq_mhz)
    p = profile(family)
    if p.raw_postdiv:
        top = 0x40
        post = (p1 << 4) | p2
    else:
        top = 0x50 if REF_CLOCK_MHZ * fb / ref >= 2400.0 else 0x40
        post = ((p1 - 1) << 4) | (p2 - 1)
    return (top << 24) | (fb << 16) | (ref << 8) | post


def pll_freq_mhz(family, value):
    """Hash clock in MHz of a register 0x08 value (decoded the way the host encodes); 0.0 if the
    dividers are zero."""
    p = profile(family)
    _check_int("value", value, 0, 0xFFFFFFFF)
    fb = (value >> 16) & 0xFFF
    ref = (value >> 8) & 0x3F
    p1 = (value >> 4) & 0x07
    p2 = value & 0x07
    if not p.raw_postdiv:
        p1 += 1
        p2 += 1
    if ref == 0 or p1 == 0 or p2 == 0:
        return 0.0
    return REF_CLOCK_MHZ * fb / (ref * p1 * p2)


def pll_frame(family, freq_mhz):
    """Broadcast write of PLL0 (0x08) for `freq_mhz`."""
    return cmd_write(REG_PLL0, pll_value(family, freq_mhz))


def ramp_steps(from_mhz, to_mhz, step_mhz=6.25):
    """Frequencies to write, in order, to move from `from_mhz` to `to_mhz`: every multiple of
    `step_mhz` strictly between them, then the target (50 -> 525: 56.25 ... 518.75, 525; 76
    writes). Empty when already there."""
    if not (step_mhz > 0.0):
        raise ValueError("step_mhz must be > 0, got %r" % (step_mhz,))
    if not (from_mhz > 0.0) or not (to_mhz > 0.0):
        raise ValueError("frequencies must be > 0, got %r -> %r" % (from_mhz, to_mhz))
    eps = 1e-6
    out: list = []
    if abs(to_mhz - from_mhz) < eps:
        return out
    if to_mhz > from_mhz:
        k = int((from_mhz + eps) / step_mhz) + 1
        while k * step_mhz < to_mhz - eps:
            out.append(k * step_mhz)
            k += 1
    else:
        k = int((from_mhz - eps) / step_mhz)
        if k * step_mhz >= from_mhz - eps:
            k -= 1
        while k * step_mhz > to_mhz + eps:
            out.append(k * step_mhz)
            k -= 1
    out.append(float(to_mhz))
    return out


# ---------------------------------------------------------------------------------------------
# ticket mask (§4.3), baud (§4.5)


def _reverse_bits8(b):
    r = 0
    for _ in range(8):
        r = (r << 1) | (b & 1)
        b >>= 1
    return r


def _reverse_bytes_bits(v):
    return (
        (_reverse_bits8((v >> 24) & 0xFF) << 24)
        | (_reverse_bits8((v >> 16) & 0xFF) << 16)
        | (_reverse_bits8((v >> 8) & 0xFF) << 8)
        | _reverse_bits8(v & 0xFF)
    )


def ticket_mask(difficulty):
    """Register 0x14 value for a chip share difficulty (ESP-Miner): ceil(d) rounded down to 2**k,
    mask 2**k - 1 with each byte bit-reversed (256 -> 0x000000FF, 512 -> 0x000080FF)."""
    if not isinstance(difficulty, (int, float)) or isinstance(difficulty, bool):
        raise ValueError("difficulty must be a number, got %r" % (difficulty,))
    if not (difficulty > 0) or difficulty > 4294967296:
        raise ValueError("difficulty must be in (0, 2**32], got %r" % (difficulty,))
    d = int(difficulty)
    if d < difficulty:
        d += 1
    k = 0
    while (2 << k) <= d:
        k += 1
    return _reverse_bytes_bits((1 << k) - 1)


def ticket_difficulty(mask):
    """Share difficulty a register 0x14 value programs: 2**k for the k contiguous low mask bits
    (after undoing the per-byte bit reversal); 0x000000FF -> 256."""
    _check_int("mask", mask, 0, 0xFFFFFFFF)
    m = _reverse_bytes_bits(mask)
    k = 0
    while k < 32 and (m >> k) & 1:
        k += 1
    return 1 << k


def uart_baud(bt8d):
    """Chip UART rate for a BT8D divider with the 25 MHz clock: 25e6 / ((BT8D + 1) * 8)."""
    _check_int("bt8d", bt8d, 0, 511)
    return 25000000 // ((bt8d + 1) * 8)


def chip_baud(family, reg, value):
    """Chip UART rate after writing `value` to `reg` (0x18 on BM1397, 0x28 on the others);
    None if that register does not set the baud on this family."""
    p = profile(family)
    _check_int("value", value, 0, 0xFFFFFFFF)
    if p.family == "BM1397":
        if reg != REG_MISC_CONTROL:
            return None
        return uart_baud(((value >> 8) & 0x1F) | (((value >> 24) & 0x0F) << 5))
    if reg != REG_FAST_UART:
        return None
    return uart_baud((value >> 8) & 0xFF)


def fast_uart_write(family):
    """(reg, value, host_baud) of the baud switch at the end of init (§4.5, §6 wrapper)."""
    p = profile(family)
    if p.family == "BM1397":
        return (REG_MISC_CONTROL, 0x00006031, p.fast_baud)
    return (REG_FAST_UART, 0x11300200, p.fast_baud)


# ---------------------------------------------------------------------------------------------
# jobs (§5)


def _reverse_words(b32):
    # eight 4-byte words in reverse order, bytes inside each word unchanged (an involution)
    out = b""
    for i in range(28, -4, -4):
        out += b32[i : i + 4]
    return out


def job(payload, length_byte=None):
    """A job frame: 55 AA 21 | len | payload | CRC16 BE (len = payload + 4 unless
    `length_byte` is given)."""
    if length_byte is None:
        length_byte = (len(payload) + 4) & 0xFF
    else:
        _check_int("length_byte", length_byte, 0, 255)
    body = bytes((HDR_JOB, length_byte)) + bytes(payload)
    c = crc16(body)
    return PREAMBLE_CMD + body + bytes(((c >> 8) & 0xFF, c & 0xFF))


def _job_head(job_id, num_midstates, start_nonce, nbits, ntime):
    # the fields both job layouts start with (§5), checked by the caller
    return bytes((job_id, num_midstates)) + _u32le(start_nonce) + _u32le(nbits) + _u32le(ntime)


def header_job_frame(
    job_id, nbits, ntime, merkle_words, prev_words, version, start_nonce=0, num_midstates=1,
    length_byte=None,
):
    """Full-header job (BM1366/68/70) from its wire fields; merkle/prev already word-reversed."""
    _check_int("job_id", job_id, 0, 255)
    _check_int("nbits", nbits, 0, 0xFFFFFFFF)
    _check_int("ntime", ntime, 0, 0xFFFFFFFF)
    _check_int("version", version, 0, 0xFFFFFFFF)
    _check_int("start_nonce", start_nonce, 0, 0xFFFFFFFF)
    _check_int("num_midstates", num_midstates, 0, 255)
    payload = (
        _job_head(job_id, num_midstates, start_nonce, nbits, ntime)
        + _check_bytes("merkle_words", merkle_words, 32)
        + _check_bytes("prev_words", prev_words, 32)
        + _u32le(version)
    )
    return job(payload, length_byte)


def midstate_job_frame(job_id, nbits, ntime, merkle_tail, midstates, num_midstates=None, slots=4,
                       start_nonce=0):
    """Midstate job (BM1397): `midstates` are 32-byte wire midstates (H7..H0, each big-endian);
    unused slots up to `slots` are zero. ESP-Miner sends 4 slots (152 bytes); slots=len(midstates)
    gives the short form (56 bytes for one midstate)."""
    _check_int("job_id", job_id, 0, 255)
    _check_int("nbits", nbits, 0, 0xFFFFFFFF)
    _check_int("ntime", ntime, 0, 0xFFFFFFFF)
    _check_int("merkle_tail", merkle_tail, 0, 0xFFFFFFFF)
    _check_int("start_nonce", start_nonce, 0, 0xFFFFFFFF)
    _check_int("slots", slots, 1, 4)
    if not 1 <= len(midstates) <= slots:
        raise ValueError("need 1..%d midstates, got %d" % (slots, len(midstates)))
    if num_midstates is None:
        num_midstates = len(midstates)
    _check_int("num_midstates", num_midstates, 0, 4)
    payload = _job_head(job_id, num_midstates, start_nonce, nbits, ntime) + _u32le(merkle_tail)
    for i in range(slots):
        payload += _check_bytes("midstate", midstates[i], 32) if i < len(midstates) else bytes(32)
    return job(payload)


def rolled_version(version, mask, steps):
    """`version` rolled `steps` times inside `mask` (ESP-Miner increment_bitmask: the masked bits
    count up with carry, bits outside the mask stay)."""
    _check_int("version", version, 0, 0xFFFFFFFF)
    _check_int("mask", mask, 0, 0xFFFFFFFF)
    for _ in range(steps):
        if mask == 0:
            break
        version = (((version | ~mask) + 1) & mask) | (version & ~mask)
        version &= 0xFFFFFFFF
    return version


def job_frame(family, job_id, header80, version_mask=0, length_byte=None):
    """The job frame ESP-Miner sends for an 80-byte block header (nonce bytes ignored).

    BM1366/68/70: full header, 88 bytes (length byte 0x56 unless `length_byte` is given).
    BM1397: midstates, 152 bytes; with `version_mask` 4 midstates for the version rolled 0..3
    times (AsicBoost), else 1 midstate and 3 zero slots."""
    p = profile(family)
    _check_int("job_id", job_id, 0, 255)
    h = _check_bytes("header80", header80, 80)
    version = _le32(h, 0)
    if not p.midstate_jobs:
        return header_job_frame(
            job_id, _le32(h, 72), _le32(h, 68), _reverse_words(h[36:68]), _reverse_words(h[4:36]),
            version, length_byte=length_byte,
        )
    _check_int("version_mask", version_mask, 0, 0xFFFFFFFF)
    count = 4 if version_mask else 1
    mids = []
    for i in range(count):
        v = rolled_version(version, version_mask, i)
        mids.append(midstate_bytes(sha256_midstate(_u32le(v) + h[4:64])))
    return midstate_job_frame(job_id, _le32(h, 72), _le32(h, 68), _le32(h, 64), mids, count)


# SHA-256 compression for BM1397 midstates (hashlib exposes no internal state)
_K = (
    0x428A2F98, 0x71374491, 0xB5C0FBCF, 0xE9B5DBA5, 0x3956C25B, 0x59F111F1, 0x923F82A4, 0xAB1C5ED5,
    0xD807AA98, 0x12835B01, 0x243185BE, 0x550C7DC3, 0x72BE5D74, 0x80DEB1FE, 0x9BDC06A7, 0xC19BF174,
    0xE49B69C1, 0xEFBE4786, 0x0FC19DC6, 0x240CA1CC, 0x2DE92C6F, 0x4A7484AA, 0x5CB0A9DC, 0x76F988DA,
    0x983E5152, 0xA831C66D, 0xB00327C8, 0xBF597FC7, 0xC6E00BF3, 0xD5A79147, 0x06CA6351, 0x14292967,
    0x27B70A85, 0x2E1B2138, 0x4D2C6DFC, 0x53380D13, 0x650A7354, 0x766A0ABB, 0x81C2C92E, 0x92722C85,
    0xA2BFE8A1, 0xA81A664B, 0xC24B8B70, 0xC76C51A3, 0xD192E819, 0xD6990624, 0xF40E3585, 0x106AA070,
    0x19A4C116, 0x1E376C08, 0x2748774C, 0x34B0BCB5, 0x391C0CB3, 0x4ED8AA4A, 0x5B9CCA4F, 0x682E6FF3,
    0x748F82EE, 0x78A5636F, 0x84C87814, 0x8CC70208, 0x90BEFFFA, 0xA4506CEB, 0xBEF9A3F7, 0xC67178F2,
)
SHA256_IV = (
    0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A, 0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19,
)


def _rotr(x, n):
    return ((x >> n) | (x << (32 - n))) & 0xFFFFFFFF


def sha256_compress(state, block):
    """One SHA-256 compression of a 64-byte block into an 8-word state; returns the new state."""
    block = _check_bytes("block", block, 64)
    w = [_be32(block, 4 * i) for i in range(16)]
    for i in range(16, 64):
        x = w[i - 15]
        y = w[i - 2]
        s0 = _rotr(x, 7) ^ _rotr(x, 18) ^ (x >> 3)
        s1 = _rotr(y, 17) ^ _rotr(y, 19) ^ (y >> 10)
        w.append((w[i - 16] + s0 + w[i - 7] + s1) & 0xFFFFFFFF)
    a, b, c, d, e, f, g, h = state
    for i in range(64):
        t1 = (
            h
            + (_rotr(e, 6) ^ _rotr(e, 11) ^ _rotr(e, 25))
            + ((e & f) ^ (~e & g & 0xFFFFFFFF))
            + _K[i]
            + w[i]
        ) & 0xFFFFFFFF
        s0 = _rotr(a, 2) ^ _rotr(a, 13) ^ _rotr(a, 22)
        t2 = (s0 + ((a & b) ^ (a & c) ^ (b & c))) & 0xFFFFFFFF
        h = g
        g = f
        f = e
        e = (d + t1) & 0xFFFFFFFF
        d = c
        c = b
        b = a
        a = (t1 + t2) & 0xFFFFFFFF
    s = state
    return (
        (s[0] + a) & 0xFFFFFFFF, (s[1] + b) & 0xFFFFFFFF, (s[2] + c) & 0xFFFFFFFF,
        (s[3] + d) & 0xFFFFFFFF, (s[4] + e) & 0xFFFFFFFF, (s[5] + f) & 0xFFFFFFFF,
        (s[6] + g) & 0xFFFFFFFF, (s[7] + h) & 0xFFFFFFFF,
    )


def sha256_midstate(header64):
    """SHA-256 state (H0..H7) after the first 64 header bytes."""
    return sha256_compress(SHA256_IV, header64)


def midstate_bytes(state):
    """Wire form of a midstate: H7, H6, ..., H0, each big-endian (§5.1)."""
    out = b""
    for i in range(7, -1, -1):
        out += _u32be(state[i])
    return out


def midstate_state(wire32):
    """Inverse of midstate_bytes: the state words H0..H7."""
    b = _check_bytes("midstate", wire32, 32)
    return tuple(_be32(b, 4 * (7 - i)) for i in range(8))


# ---------------------------------------------------------------------------------------------
# replies, chip -> host (§3)


class NonceReply:
    """A nonce reply. `nonce` is the int whose little-endian bytes go into header bytes 76..79;
    `version_bits` are ORed into the job's base version; `small_core` is the small-core ID
    (BM1397: the midstate index, also in `midstate`)."""

    kind = "nonce"
    __slots__ = (
        "byte6",
        "chip_addr_field",
        "core_id",
        "job_id",
        "midstate",
        "nonce",
        "raw",
        "small_core",
        "version_bits",
    )

    def __init__(self, nonce, job_id, small_core, version_bits, chip_addr_field, core_id, byte6,
                 midstate, raw):
        self.nonce = nonce
        self.job_id = job_id
        self.small_core = small_core
        self.version_bits = version_bits
        self.chip_addr_field = chip_addr_field
        self.core_id = core_id
        self.byte6 = byte6
        self.midstate = midstate
        self.raw = raw

    def __repr__(self):
        return "NonceReply(nonce=0x%08X, job_id=0x%02X, small_core=%d, version_bits=0x%08X)" % (
            self.nonce, self.job_id, self.small_core, self.version_bits)


class RegisterReply:
    """A register-value reply: `value` of register `reg` from the chip at `chip_addr`."""

    kind = "register"
    __slots__ = ("chip_addr", "raw", "reg", "value")

    def __init__(self, value, chip_addr, reg, raw):
        self.value = value
        self.chip_addr = chip_addr
        self.reg = reg
        self.raw = raw

    def __repr__(self):
        return "RegisterReply(reg=0x%02X, value=0x%08X, chip_addr=0x%02X)" % (
            self.reg, self.value, self.chip_addr)


def _job_bits(family):
    # (job mask, job shift, small-core mask) of reply byte 7 (§3.4)
    if family == "BM1397":
        return (0xFC, 0, 0x03)
    if family == "BM1366":
        return (0xF8, 0, 0x07)
    return (0xF0, 1, 0x0F)


class ResponseParser(FrameHunter):
    """Chip -> host byte stream to replies. `feed(data) -> list` of NonceReply/RegisterReply.

    Hunts for AA 55, checks the CRC5 residue (and flag bits 6..5 == 0); on a bad candidate it
    advances one byte and hunts again, so a valid frame inside the bad region is still found.
    A false preamble (garbage, a truncated frame) can pass the CRC by chance (1 in 128) and
    swallow the start of a real frame: if a valid frame starts inside a candidate, it wins unless
    only the candidate is followed by a preamble. So a reply with the bytes AA 55 inside it
    (about 1 in 8000) is held until the bytes after it arrive; call `flush()` when the line goes
    quiet (e.g. on a read timeout) to release it.
    Counters: `frames`, `crc_errors`, `discarded_bytes`. Never raises on any input."""

    _overlap = OUTER_IF_ONLY_FOLLOWED

    def __init__(self, family, reply_len=None):
        p = profile(family)
        self.family = p.family
        self.reply_len = p.reply_len if reply_len is None else reply_len
        if self.reply_len not in (9, 11):
            raise ValueError("reply_len must be 9 or 11, got %r" % (reply_len,))
        self._jmask, self._jshift, self._smask = _job_bits(p.family)
        self._is1397 = p.family == "BM1397"
        super().__init__(PREAMBLE_REPLY, self.reply_len)

    def _size(self, buf, i):
        return self.reply_len

    def _check(self, buf, i, size):
        end = i + size
        r = 0xF8
        t = _CRC5
        for b in buf[i + 2 : end]:
            r = t[r ^ b]
        return r == 0 and not buf[end - 1] & 0x60

    def _decode(self, buf, i, size):
        end = i + size
        if not buf[end - 1] & 0x80:
            return RegisterReply(
                (buf[i + 2] << 24) | (buf[i + 3] << 16) | (buf[i + 4] << 8) | buf[i + 5],
                buf[i + 6], buf[i + 7], buf[i:end],
            )
        b7 = buf[i + 7]
        nonce_h = (buf[i + 2] << 24) | (buf[i + 3] << 16) | (buf[i + 4] << 8) | buf[i + 5]
        nonce = buf[i + 2] | (buf[i + 3] << 8) | (buf[i + 4] << 16) | (buf[i + 5] << 24)
        small = b7 & self._smask
        if self._is1397:
            return NonceReply(
                nonce, b7 & self._jmask, small, 0, (nonce_h >> 14) & 0xFF, nonce_h >> 24,
                buf[i + 6], small, buf[i:end],
            )
        return NonceReply(
            nonce, (b7 & self._jmask) >> self._jshift, small,
            ((buf[i + 8] << 8) | buf[i + 9]) << 13 if size == 11 else 0,
            (nonce_h >> 17) & 0xFF, nonce_h >> 25, buf[i + 6], 0, buf[i:end],
        )


def _reply(body, flag, reply_len):
    # body = bytes 2..len-2; the CRC covers them plus the top 3 bits of the last byte
    r = 0xF8
    for b in body:
        r = _CRC5[r ^ b]
    c = _crc5_bits(r >> 3, flag, 3)
    return PREAMBLE_REPLY + body + bytes((flag | c,))


def register_reply(value, chip_addr, reg, reply_len):
    """Register-value reply: AA 55 | value BE | chip_addr | reg | [00 00] | CRC5 (flag 0)."""
    _check_int("value", value, 0, 0xFFFFFFFF)
    _check_int("chip_addr", chip_addr, 0, 255)
    _check_int("reg", reg, 0, 255)
    if reply_len not in (9, 11):
        raise ValueError("reply_len must be 9 or 11, got %r" % (reply_len,))
    body = _u32be(value) + bytes((chip_addr, reg))
    if reply_len == 11:
        body += b"\x00\x00"
    return _reply(body, 0x00, reply_len)


def nonce_reply(family, nonce, job_id, small_core, version_bits, byte6=0, reply_len=None):
    """Nonce reply as the chip sends it: nonce LE | byte6 | job/small-core byte (§3.4) |
    [version_bits >> 13, BE] | 0x80 + CRC5. `reply_len` defaults to the family's."""
    p = profile(family)
    _check_int("nonce", nonce, 0, 0xFFFFFFFF)
    _check_int("job_id", job_id, 0, 255)
    _check_int("version_bits", version_bits, 0, 0xFFFFFFFF)
    _check_int("byte6", byte6, 0, 255)
    size = p.reply_len if reply_len is None else reply_len
    if size not in (9, 11):
        raise ValueError("reply_len must be 9 or 11, got %r" % (reply_len,))
    jmask, jshift, smask = _job_bits(p.family)
    _check_int("small_core", small_core, 0, smask)
    b7 = (((job_id << jshift) & jmask) if jshift else (job_id & jmask)) | small_core
    body = _u32le(nonce) + bytes((byte6, b7))
    if size == 11:
        field = (version_bits >> 13) & 0xFFFF
        body += bytes(((field >> 8) & 0xFF, field & 0xFF))
    return _reply(body, 0x80, size)


# ---------------------------------------------------------------------------------------------
# commands, host -> chip, parsed on the chip side (emulator; §9.2)


class Command:
    """A decoded host -> chip frame. kind: set_address | write | read | chain_inactive | job.

    Commands: `broadcast`, `chip` (payload byte 0; the new address for set_address), `reg`,
    `value`. Jobs: `job_id`, `num_midstates`, `start_nonce`, `nbits`, `ntime`; full-header jobs
    also `version`, `header80` (nonce bytes 0, base version); BM1397 jobs `merkle_tail` and
    `midstates` (wire form, see midstate_state) with `header80` None."""

    def __init__(self, kind, raw):
        self.kind = kind
        self.raw = raw
        self.broadcast = False
        self.chip = 0
        self.reg = 0
        self.value = 0
        self.job_id = 0
        self.num_midstates = 0
        self.start_nonce = 0
        self.nbits = 0
        self.ntime = 0
        self.version = 0
        self.header80 = None
        self.merkle_tail = 0
        self.midstates = []

    def __repr__(self):
        if self.kind == "job":
            return "Command(job, job_id=0x%02X)" % self.job_id
        return "Command(%s, broadcast=%s, chip=0x%02X, reg=0x%02X, value=0x%08X)" % (
            self.kind, self.broadcast, self.chip, self.reg, self.value)


_CMD_KINDS = ("set_address", "write", "read", "chain_inactive")


class CommandParser(FrameHunter):
    """Host -> chip byte stream to Commands (what an emulated chain receives).

    Command size from the length byte (7 or 11); job size from the family (88 bytes for
    BM1366/68/70 whatever the length byte says; length + 2 for BM1397). A bad CRC or malformed
    header drops one byte and hunts again; an incomplete frame start is dropped as soon as a
    complete valid frame starts inside it (`resync()` drops it when the line goes quiet).
    A chance CRC match (1 in 32) at a false preamble must not swallow a real frame that starts
    inside it: unless a preamble follows, a valid inner frame wins, and an incomplete inner
    candidate is waited for (`resync()` gives up waiting).
    Counters: `frames`, `crc_errors`, `discarded_bytes`. Never raises on any input."""

    _overlap = OUTER_IF_FOLLOWED

    def __init__(self, family):
        p = profile(family)
        self.family = p.family
        self._midstate = p.midstate_jobs
        self._job_len = p.job_frame_len
        super().__init__(PREAMBLE_CMD, 4)

    def _size(self, buf, i):
        # frame size for the header/length pair at i + 2, or 0 if this cannot be a frame start
        hdr = buf[i + 2]
        if hdr & 0x80 or hdr & 0x0C:
            return 0
        length = buf[i + 3]
        typ = hdr >> 5
        if typ == 2:
            cmd = hdr & 0x03
            if cmd == 1:
                return 11 if length == 9 else 0
            return 7 if length == 5 else 0
        if typ == 1 and hdr & 0x1F == 0x01:
            if self._midstate:
                if length >= 54 and (length - 22) % 32 == 0 and length <= 150:
                    return length + 2
                return 0
            return self._job_len
        return 0

    def _check(self, buf, i, size):
        frame = buf[i : i + size]
        if frame[2] & 0x40:  # CRC5 in the low 5 bits (the top 3 bits of the byte are 0)
            return crc5(frame[2:-1]) == frame[-1]
        return crc16(frame[2:-2]) == (frame[-2] << 8) | frame[-1]

    def _decode(self, buf, i, size):
        f = buf[i : i + size]
        hdr = f[2]
        if hdr & 0x40:
            c = Command(_CMD_KINDS[hdr & 0x03], f)
            c.broadcast = bool(hdr & HDR_ALL)
            c.chip = f[4]
            c.reg = f[5]
            if c.kind == "write":
                c.value = _be32(f, 6)
            return c
        c = Command("job", f)
        c.job_id = f[4]
        c.num_midstates = f[5]
        c.start_nonce = _le32(f, 6)
        c.nbits = _le32(f, 10)
        c.ntime = _le32(f, 14)
        if self._midstate:
            c.merkle_tail = _le32(f, 18)
            c.midstates = [f[22 + 32 * k : 54 + 32 * k] for k in range((len(f) - 24) // 32)]
        else:
            c.version = _le32(f, 82)
            c.header80 = (
                f[82:86] + _reverse_words(f[50:82]) + _reverse_words(f[18:50]) + f[14:18]
                + f[10:14] + b"\x00\x00\x00\x00"
            )
        return c
