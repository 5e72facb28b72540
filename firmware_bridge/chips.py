"""BM13xx chip profiles as data (spec bm13xx-protocol.md §7.1, §3, §4.1, §5.3).

Runs unchanged on CPython and MicroPython: plain classes, no typing/dataclasses.
"""
# MicroPython-first: %-formatting (f-string support varies by port) and no `raise ... from`
# (MicroPython warns on exception chaining).
# ruff: noqa: UP031


FAMILIES = ("BM1397", "BM1366", "BM1368", "BM1370")


class ChipProfile:
    """Constants of one chip family; read-only by convention."""

    def __init__(
        self,
        family,
        chip_id,
        core_num,
        cores,
        small_cores_per_core,
        small_cores,
        job_id_step,
        reply_len,
        default_freq_mhz,
        default_vcore_mv,
        fbdiv_min,
        fbdiv_max,
        fast_baud,
        domains,
        job_frame_len,
        hcn_errata,
        raw_postdiv,
    ):
        self.family = family
        self.chip_id = chip_id  # e.g. 0x1370, bytes 2..3 of the chip-ID reply
        self.core_num = core_num  # CORE_NUM byte of register 0x00 (0x18 on BM1397, else 0)
        self.cores = cores
        self.small_cores_per_core = small_cores_per_core
        self.small_cores = small_cores  # total used for the expected hashrate (e.g. 2040)
        self.job_id_step = job_id_step
        self.reply_len = reply_len  # reply length with version rolling on (as the init does)
        self.default_freq_mhz = default_freq_mhz
        self.default_vcore_mv = default_vcore_mv
        self.fbdiv_min = fbdiv_min
        self.fbdiv_max = fbdiv_max
        self.fast_baud = fast_baud  # host baud after the init's baud switch
        self.domains = domains  # hash domains (counters 0x88..0x8B)
        self.job_frame_len = job_frame_len  # bytes of a job frame as ESP-Miner sends it
        self.hcn_errata = hcn_errata  # subtracted from the hash counting number (BM1370: 268)
        self.raw_postdiv = raw_postdiv  # PLL post dividers written raw (BM1397) or as P-1
        self.midstate_jobs = family == "BM1397"  # midstate jobs; else full-header jobs
        self.version_rolling = family != "BM1397"  # hardware version rolling (reg 0xA4)
        self.chip_id_value = (chip_id << 16) | (core_num << 8)  # register 0x00 before ADDR

    def hashrate_ghs(self, freq_mhz, chips=1):
        """Expected hashrate: f * small cores * chips / 1000 (spec §4.2)."""
        return freq_mhz * self.small_cores * chips / 1000.0

    def __repr__(self):
        return "ChipProfile(%s)" % self.family


PROFILES = {
    "BM1397": ChipProfile(
        "BM1397", 0x1397, 0x18, 168, 4, 672, 4, 9, 425.0, 1400, 60, 200, 3125000, 1, 152, 0, True
    ),
    "BM1366": ChipProfile(
        "BM1366", 0x1366, 0x00, 112, 8, 894, 8, 11, 485.0, 1200, 144, 235, 1000000, 4, 88, 0, False
    ),
    "BM1368": ChipProfile(
        "BM1368", 0x1368, 0x00, 80, 16, 1276, 24, 11, 490.0, 1166, 144, 235, 1000000, 4, 88, 0,
        False,
    ),
    "BM1370": ChipProfile(
        "BM1370", 0x1370, 0x00, 128, 16, 2040, 24, 11, 525.0, 1150, 160, 239, 1000000, 4, 88, 268,
        False,
    ),
}


def profile(family):
    """The profile of `family` ("BM1370", ...); ValueError naming the known families otherwise."""
    p = PROFILES.get(family) if isinstance(family, str) else None
    if p is None:
        known = ", ".join(FAMILIES)
        raise ValueError("unknown chip family %r; expected one of %s" % (family, known))
    return p
