"""Per-family chain initialisation as frames (spec bm13xx-protocol.md §6), so the host driver and
the emulator agree by construction.

A driver runs: reset pulse; UART at 115200; `enumeration_frames` (then counts the chip-ID replies);
`setup_frames`; `ramp_frames` from 50 MHz to the target; `after_ramp_frames`; `baud_frame`, then
switches its own UART to the returned rate. Every list item is (frame, delay_ms_after).
"""
# MicroPython-first: %-formatting (f-string support varies by port) and no `raise ... from`
# (MicroPython warns on exception chaining).
# ruff: noqa: UP031


from firmware_bridge.asic import (
    IDLE_FREQ_MHZ,
    REG_CORE_CTRL,
    REG_HCN,
    REG_MISC_CONTROL,
    REG_PLL0_DIVIDER,
    REG_TICKET_MASK,
    REG_VERSION_ROLLING,
    cmd_chain_inactive,
    cmd_read,
    cmd_set_address,
    cmd_write,
    fast_uart_write,
    pll_frame,
    ramp_steps,
    ticket_mask,
    version_rolling_value,
)
from firmware_bridge.chips import profile

REG_A8 = 0xA8
REG_ANALOG_MUX = 0x54
REG_IO_DRIVER = 0x58
REG_UART_RELAY = 0x2C
REG_B9 = 0xB9

STEP_DELAY_MS = 100  # between frequency ramp steps (§4.1)
BM1397_GAP_MS = 10  # gaps inside a BM1397 ramp step
BM1368_CHIP_DELAY_MS = 500  # after each chip's writes on BM1368 (§6.3)


def chip_count_ok(chip_count):
    ok = isinstance(chip_count, int) and not isinstance(chip_count, bool)
    if not ok or not 1 <= chip_count <= 256:
        raise ValueError("chip_count must be an int in 1..256, got %r" % (chip_count,))
    return chip_count


def address_interval(chip_count):
    """256 // chip_count (ESP-Miner): 1 chip 256, 2 chips 128, 6 chips 42."""
    return 256 // chip_count_ok(chip_count)


def chip_addresses(chip_count):
    """Logical address of each chip in chain order: i * (256 // chip_count)."""
    step = address_interval(chip_count)
    return [i * step for i in range(chip_count)]


def enumeration_frames(family):
    """Frames up to and including the chip-ID broadcast read (C2), with delays after each."""
    p = profile(family)
    a4 = cmd_write(REG_VERSION_ROLLING, version_rolling_value())
    if p.family == "BM1397":
        return [(cmd_read(0x00), 20)]  # then count 9-byte replies; 20 ms before chain inactive
    repeats = 4 if p.family == "BM1368" else 3
    return [(a4, 0)] * repeats + [(cmd_read(0x00), 0)]


def _w(reg, value, chip=None):
    return (cmd_write(reg, value, chip), 0)


def setup_frames(family, chip_count, difficulty=256):
    """Everything after counting and before the frequency ramp: chain inactive, addresses,
    broadcast registers, per-chip writes (§6.1 step 2-3, §6.2 step 3-7, §6.3 step 3-7,
    §6.4 step 3-8)."""
    p = profile(family)
    addrs = chip_addresses(chip_count)
    ticket = ticket_mask(difficulty)
    inactive = (cmd_chain_inactive(), 0)
    set_addrs = [(cmd_set_address(a), 0) for a in addrs]
    out = []
    if p.family == "BM1397":
        out.append(inactive)
        out += set_addrs
        out += [
            _w(0x80, 0), _w(0x84, 0), _w(0x20, 0x00000001), _w(REG_CORE_CTRL, 0x80008074),
            _w(REG_TICKET_MASK, ticket), _w(0x68, 0xC0700111), _w(0x28, 0x0600000F),
            _w(REG_MISC_CONTROL, 0x00007A31),
        ]
        return out
    if p.family == "BM1366":
        out += [_w(REG_A8, 0x00070000), _w(REG_MISC_CONTROL, 0xFF0FC100), inactive]
        out += set_addrs
        out += [
            _w(REG_CORE_CTRL, 0x80008540), _w(REG_CORE_CTRL, 0x80008020),
            _w(REG_TICKET_MASK, ticket), _w(REG_ANALOG_MUX, 3), _w(REG_IO_DRIVER, 0x02111111),
            _w(REG_UART_RELAY, 0x007C0003, 0),
        ]
        for a in addrs:
            out += [
                _w(REG_A8, 0x000701F0, a), _w(REG_MISC_CONTROL, 0xF000C100, a),
                _w(REG_CORE_CTRL, 0x80008540, a), _w(REG_CORE_CTRL, 0x80008020, a),
                _w(REG_CORE_CTRL, 0x800082AA, a),
            ]
        return out
    if p.family == "BM1368":
        out += [
            inactive, _w(REG_A8, 0x00070000), _w(REG_MISC_CONTROL, 0xFF0FC100),
            _w(REG_CORE_CTRL, 0x80008B00), _w(REG_CORE_CTRL, 0x80008018),
            _w(REG_TICKET_MASK, ticket), _w(REG_ANALOG_MUX, 3), _w(REG_IO_DRIVER, 0x02111111),
        ]
        out += set_addrs
        for a in addrs:
            out += [
                _w(REG_A8, 0x000701F0, a), _w(REG_MISC_CONTROL, 0xF000C100, a),
                _w(REG_CORE_CTRL, 0x80008B00, a), _w(REG_CORE_CTRL, 0x80008018, a),
                (cmd_write(REG_CORE_CTRL, 0x800082AA, a), BM1368_CHIP_DELAY_MS),
            ]
        out.append(_w(REG_TICKET_MASK, ticket))
        return out
    # BM1370
    out += [
        _w(REG_VERSION_ROLLING, version_rolling_value()), _w(REG_A8, 0x00070000),
        _w(REG_MISC_CONTROL, 0xF000C100), inactive,
    ]
    out += set_addrs
    out += [
        _w(REG_CORE_CTRL, 0x80008B00), _w(REG_CORE_CTRL, 0x8000800C),
        _w(REG_TICKET_MASK, ticket), _w(REG_IO_DRIVER, 0x00011111),
    ]
    for a in addrs:
        out += [
            _w(REG_A8, 0x000701F0, a), _w(REG_MISC_CONTROL, 0xF000C100, a),
            _w(REG_CORE_CTRL, 0x80008B00, a), _w(REG_CORE_CTRL, 0x8000800C, a),
            _w(REG_CORE_CTRL, 0x800082AA, a),
        ]
    out += [
        _w(REG_B9, 0x00004480), _w(REG_ANALOG_MUX, 2), _w(REG_B9, 0x00004480),
        _w(REG_CORE_CTRL, 0x80008DEE),
    ]
    return out


def ramp_frames(family, from_mhz, to_mhz):
    """PLL writes moving the hash clock from `from_mhz` to `to_mhz` in 6.25 MHz steps, 100 ms
    apart. BM1397 steps are 2x PLL0 divider (0x70 = 0x0F0F0F00) then 2x PLL0, 10 ms apart."""
    p = profile(family)
    out = []
    for f in ramp_steps(from_mhz, to_mhz):
        pll = pll_frame(p.family, f)
        if p.family == "BM1397":
            div = cmd_write(REG_PLL0_DIVIDER, 0x0F0F0F00)
            out += [(div, BM1397_GAP_MS), (div, BM1397_GAP_MS), (pll, BM1397_GAP_MS),
                    (pll, STEP_DELAY_MS)]
        else:
            out.append((pll, STEP_DELAY_MS))
    return out


def hcn_value(family, freq_mhz, chip_count):
    """Hash counting number (reg 0x10, ESP-Miner set_nonce_space):
    floor(2**32 / next_pow2(cores) / next_pow2(chips) * 25 / f * 0.5) - errata (BM1370: 268)."""
    p = profile(family)
    chip_count_ok(chip_count)
    if not isinstance(freq_mhz, (int, float)) or not freq_mhz > 0:
        raise ValueError("freq_mhz must be > 0, got %r" % (freq_mhz,))
    cores_up = 1
    while cores_up < p.cores:
        cores_up <<= 1
    chips_up = 1
    while chips_up < chip_count:
        chips_up <<= 1
    f_khz = int(freq_mhz * 1000 + 0.5)
    value = (4294967296 * 25000) // (cores_up * chips_up * 2 * f_khz) - p.hcn_errata
    return max(0, min(0xFFFFFFFF, value))


def hcn_frame(family, freq_mhz, chip_count):
    """Broadcast write of the hash counting number; None on BM1397 (it has none)."""
    if profile(family).family == "BM1397":
        return None
    return cmd_write(REG_HCN, hcn_value(family, freq_mhz, chip_count))


def after_ramp_frames(family, freq_mhz, chip_count):
    """After the ramp: HCN (BM1366/68/70), then 0xA4 again (BM1366/68) (§6.2-6.4 steps 9-10)."""
    p = profile(family)
    out = []
    hcn = hcn_frame(family, freq_mhz, chip_count)
    if hcn is not None:
        out.append((hcn, 0))
    if p.family in ("BM1366", "BM1368"):
        out.append((cmd_write(REG_VERSION_ROLLING, version_rolling_value()), 0))
    return out


def baud_frame(family):
    """(frame, host_baud): the fast-UART write sent at the old rate; the host then switches to
    host_baud once the frame has left (BM1397: 0x18 = 0x00006031, 3125000; others
    0x28 = 0x11300200, 1000000)."""
    reg, value, baud = fast_uart_write(family)
    return (cmd_write(reg, value), baud)


def idle_frames(family, chip_count=1, from_mhz=None):
    """Park the chain at 50 MHz (mining stop, §6.5): a ramp down from `from_mhz`, or a single PLL
    write when unknown, then the HCN for 50 MHz."""
    p = profile(family)
    if from_mhz is None:
        out = [(pll_frame(p.family, IDLE_FREQ_MHZ), STEP_DELAY_MS)]
    else:
        out = ramp_frames(p.family, from_mhz, IDLE_FREQ_MHZ)
    hcn = hcn_frame(p.family, IDLE_FREQ_MHZ, chip_count)
    if hcn is not None:
        out.append((hcn, 0))
    return out
