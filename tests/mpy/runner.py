"""Portable check runner: every BM13xx and board-link vector, plus link and bridge scenarios.

Runs on the MicroPython unix port (no unittest there) and on CPython:
    MICROPYPATH=.:.frozen micropython -X heapsize=256k tests/mpy/runner.py [ROOT]
    python tests/mpy/runner.py [ROOT]
ROOT is the repository root (default "."). Prints failures and "N passed, M failed"; exit 1 on
any failure.
"""

# Must stay MicroPython syntax: %-formatting, no [*a] displays.
# ruff: noqa: UP031, RUF005

import json
import sys

ROOT = sys.argv[1] if len(sys.argv) > 1 else "."
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from firmware_bridge import asic, bringup, link  # noqa: E402
from firmware_bridge.asic import pll_frame  # noqa: E402
from firmware_bridge.bridge import Bridge  # noqa: E402
from firmware_bridge.chips import FAMILIES, PROFILES  # noqa: E402
from firmware_bridge.hal import MemoryUart, SimHal  # noqa: E402

passed = 0
failed = 0


def check(name, ok, detail=""):
    global passed, failed
    if ok:
        passed += 1
    else:
        failed += 1
        print("FAIL", name, detail)


def run(name, fn):
    try:
        fn()
        check(name, True)
    except Exception as exc:  # report and go on
        check(name, False, "%s: %s" % (type(exc).__name__, exc))


def load(name):
    with open(ROOT + "/tests/vectors/" + name) as f:
        return json.load(f)


def h(b):
    return "".join("%02X" % x for x in b)


def arg(a):
    if isinstance(a, dict):
        return bytes.fromhex(a["hex"])
    if isinstance(a, list):
        return [arg(x) for x in a]
    return a


def fn_of(name):
    return getattr(asic, name, None) or getattr(bringup, name)


# ---- BM13xx vectors ---------------------------------------------------------------------------


def bm13xx():
    v = load("bm13xx.json")
    for c in v["crc"]:
        got = getattr(asic, c["alg"])(bytes.fromhex(c["data"]))
        check("crc " + c["alg"] + " " + c["data"], got == c["value"], got)
    for c in v["calls"]:
        try:
            out = fn_of(c["fn"])(*[arg(a) for a in c["args"]], **c.get("kwargs", {}))
            if isinstance(out, tuple):
                out = out[0]
            check(c["id"], h(out) == c["hex"], h(out))
        except Exception as exc:
            check(c["id"], False, repr(exc))
    for r in v["replies"]:
        p = asic.ResponseParser(r["family"])
        frame = bytes.fromhex(r["hex"])
        got = p.feed(frame)
        ok = len(got) == 1 and asic.crc5(frame[2:]) == 0
        if ok:
            for key in r["expect"]:
                ok = ok and getattr(got[0], key) == r["expect"][key]
        check(r["id"], ok, got)
        bad = bytearray(frame)
        bad[5] ^= 0x04
        p2 = asic.ResponseParser(r["family"])
        check(r["id"] + " bit flip", p2.feed(bytes(bad)) == [] and p2.crc_errors == 1)
    for p in v["pll"]:
        if not p.get("decode_only"):
            got = list(asic.pll_params(p["family"], p["freq_mhz"]))
            check("pll " + p["id"], got == p["params"], got)
        if "value" in p:
            f = asic.pll_freq_mhz(p["family"], p["value"])
            check("pll decode " + p["id"], abs(f - p["freq_mhz"]) < 1e-6, f)
            if not p.get("decode_only"):
                got = asic.pll_value(p["family"], p["freq_mhz"])
                check("pll value " + p["id"], got == p["value"], got)
    for t in v["ticket"]:
        check("ticket %d" % t["difficulty"], asic.ticket_mask(t["difficulty"]) == t["mask"])
        check("ticket back %d" % t["difficulty"],
              asic.ticket_difficulty(t["mask"]) == t["difficulty"])
    for x in v["hcn"]:
        got = bringup.hcn_value(x["family"], x["freq_mhz"], x["chips"])
        check("hcn " + x["family"], got == x["value"], got)
    for r in v["ramp"]:
        frames = bringup.ramp_frames(r["family"], r["from_mhz"], r["to_mhz"])
        steps = asic.ramp_steps(r["from_mhz"], r["to_mhz"])
        check("ramp " + r["family"], len(frames) == r["writes"] and steps[0] == r["first"]
              and steps[-1] == r["last"], len(frames))
    for b in v["baud"]:
        got = asic.chip_baud(b["family"], b["reg"], b["value"])
        check("baud %X" % b["value"], got == b["baud"], got)
    for bad in v["invalid"]:
        try:
            fn_of(bad["fn"])(*[arg(a) for a in bad["args"]])
            check("invalid " + bad["fn"] + repr(bad["args"])[:40], False, "no ValueError")
        except ValueError:
            check("invalid " + bad["fn"], True)


def parser_scenarios():
    for fam in FAMILIES:
        p = PROFILES[fam]
        frames = []
        for k in range(6):
            vb = (k << 13) if p.version_rolling else 0
            frames.append(asic.nonce_reply(fam, 0x01020304 * (k + 1), (k * p.job_id_step) % 128,
                                           k % p.small_cores_per_core, vb, 2))
        frames.append(asic.register_reply(0x13700000, 0x40, 0, p.reply_len))
        damaged = bytearray(frames[1])
        damaged[6] ^= 0x10
        stream = b"\x00\xaa\x55\x13" + frames[0] + bytes(damaged) + frames[2][:5] + b"".join(
            frames[2:])
        parser = asic.ResponseParser(fam)
        out = []
        for i in range(0, len(stream), 7):  # odd chunks
            out += parser.feed(stream[i : i + 7])
        out += parser.flush()
        raws = [r.raw for r in out]
        check("resync " + fam, raws == [frames[0]] + frames[2:], len(raws))
        check("counters " + fam, parser.crc_errors >= 1 and parser.discarded_bytes > 0)
        rep = out[0]
        check("nonce fields " + fam, rep.kind == "nonce" and rep.nonce == 0x01020304
              and rep.job_id == 0 and rep.small_core == 0 and rep.byte6 == 2)
        seq = (bringup.enumeration_frames(fam) + bringup.setup_frames(fam, 2)
               + bringup.ramp_frames(fam, 50, 100) + bringup.after_ramp_frames(fam, 100, 2))
        cp = asic.CommandParser(fam)
        cmds = cp.feed(b"".join([f for f, _ in seq]))
        check("bringup parses " + fam, len(cmds) == len(seq) and cp.crc_errors == 0)
        header = bytes(range(80))
        job = asic.job_frame(fam, 8, header)
        (cmd,) = asic.CommandParser(fam).feed(b"\x55\x00" + job)
        if p.midstate_jobs:
            ms = asic.midstate_bytes(asic.sha256_midstate(header[:64]))
            check("job " + fam, cmd.midstates[0] == ms and len(job) == 152)
        else:
            check("job " + fam, cmd.header80 == header[:76] + bytes(4) and len(job) == 88)
    try:
        asic.ResponseParser("BM1370").feed(None)
        check("parser never raises", True)
    except Exception as exc:
        check("parser never raises", False, repr(exc))


# ---- board link -------------------------------------------------------------------------------


def link_vectors():
    v = load("link.json")
    for f in v["frames"]:
        payload = bytes.fromhex(f["payload"])
        check("link " + f["name"], h(link.encode(f["seq"], f["type"], payload)) == f["hex"])
        msgs = link.Decoder().feed(bytes.fromhex(f["hex"]))
        check("link decode " + f["name"], len(msgs) == 1 and msgs[0].payload == payload)
        if "decoded" in f:
            check("link sensors decode", link.unpack_sensors(payload) == f["decoded"])


def link_scenarios():
    frames = [link.encode(i, link.T_HEARTBEAT, bytes([i]) * i) for i in range(1, 6)]
    trunc = frames[1][:4]
    flipped = bytearray(frames[2])
    flipped[6] ^= 1
    stream = b"\xa5\x5a\x3f garbage" + frames[0] + trunc + bytes(flipped) + frames[3] + frames[4]
    d = link.Decoder()
    out = []
    for i in range(0, len(stream), 5):
        out += d.feed(stream[i : i + 5])
    check("link resync", [m.seq for m in out] == [1, 4, 5], [m.seq for m in out])
    check("link counters", d.crc_errors >= 1 and d.discarded_bytes > 0)
    try:
        link.encode(0, 1, bytes(65))
        check("link payload limit", False)
    except ValueError:
        check("link payload limit", True)


class Rig:
    def __init__(self, config=None):
        self.now = 0
        self.hal = SimHal(2)
        self.uart = MemoryUart()
        self.bridge = Bridge(self.uart, self.hal, config, self.ticks)
        self.dec = link.Decoder()
        self.seq = 0
        self.events = []

    def ticks(self):
        return self.now

    def advance(self, ms):
        for _ in range(ms // 50):
            self.now += 50
            self.bridge.poll()

    def request(self, typ, payload=b"", seq=None):
        self.seq = self.seq % 255 + 1 if seq is None else seq
        self.uart.rx += link.encode(self.seq, typ, payload)
        self.bridge.poll()
        out = None
        for m in self.dec.feed(self.uart.take()):
            if m.typ == link.T_EVENT:
                self.events.append(tuple(m.payload))
            elif m.seq == self.seq:
                out = m
        return out


def idled(hal, family="BM1370"):
    names = [c[0] for c in hal.calls]
    if "chain_write" not in names:
        return False
    i = names.index("chain_write")
    return hal.calls[i][1] == pll_frame(family, 50) and not hal.chain_on and (
        "set_chain_power", False) in hal.calls[i + 1 :]


def bridge_scenarios():
    # heartbeat and sensors
    r = Rig()
    r.advance(500)
    st = link.unpack_status(r.request(link.T_HEARTBEAT).payload)
    check("bridge heartbeat", st["state"] == link.S_ACTIVE and st["uptime_ms"] == 500, st)
    r.hal.chip_temps = [611, 622]
    check("bridge power on", r.request(link.T_CHAIN_POWER, b"\x01").typ == 0x85 and r.hal.chain_on)
    s = link.unpack_sensors(r.request(link.T_READ_SENSORS).payload)
    check("bridge sensors", s["chip_temps_dc"] == [611, 622] and s["chain_powered"], s)
    # setters, range errors, retry dedup
    check("bridge fan", link.unpack_u8(r.request(link.T_SET_FAN, b"\x28").payload) == 40
          and r.hal.fan_pct == 40)
    m = r.request(link.T_SET_VCORE, link.pack_u16(9000))
    check("bridge vcore range", m.typ == link.T_ERROR
          and link.unpack_error(m.payload) == (link.T_SET_VCORE, link.E_RANGE))
    r.request(link.T_CHAIN_RESET, seq=9)
    r.request(link.T_CHAIN_RESET, seq=9)
    check("bridge retry dedup", r.hal.resets == 1)
    m = r.request(0x30)
    check("bridge unknown type", link.unpack_error(m.payload) == (0x30, link.E_UNKNOWN_TYPE))
    # watchdog
    r = Rig({"heartbeat_timeout_ms": 1000})
    r.advance(3000)
    check("watchdog not armed before the agent", r.bridge.state == link.S_IDLE and not r.hal.calls)
    r.request(link.T_CHAIN_POWER, b"\x01")
    r.advance(900)
    r.request(link.T_HEARTBEAT)
    r.advance(900)
    check("heartbeat keeps it alive", r.hal.chain_on)
    r.advance(300)
    r.request(link.T_HEARTBEAT)
    check("watchdog trip", idled(r.hal) and r.events == [(link.S_TRIPPED, link.R_HEARTBEAT)],
          r.events)
    check("power on clears a heartbeat trip", r.request(link.T_CHAIN_POWER, b"\x01").typ == 0x85
          and r.bridge.state == link.S_ACTIVE)
    # a restarted agent acknowledges a trip from before its start: the chain stays off
    r.request(link.T_HEARTBEAT)
    r.advance(1200)
    m = r.request(link.T_CLEAR_TRIP, bytes((link.R_CHIP_TEMP,)))
    check("clear_trip names the latched reason", m.typ == link.T_ERROR
          and link.unpack_error(m.payload) == (link.T_CLEAR_TRIP, link.E_TRIPPED))
    m = r.request(link.T_CLEAR_TRIP, bytes((link.R_HEARTBEAT,)))
    st = link.unpack_status(m.payload)
    check("clear_trip clears without power", m.typ == link.T_CLEAR_TRIP | link.REPLY
          and st["state"] == link.S_ACTIVE and st["trip_reason"] == link.R_NONE
          and not r.hal.chain_on, st)
    # thermal trip and resume
    r = Rig()
    r.request(link.T_CHAIN_POWER, b"\x01")
    r.hal.chip_temps = [500, 950]
    r.advance(300)
    check("thermal trip", idled(r.hal) and r.hal.fan_pct == 100
          and r.bridge.trip_reason == link.R_CHIP_TEMP)
    r.hal.chip_temps = [500, 850]
    m = r.request(link.T_CHAIN_POWER, b"\x01")
    check("no power on while hot", m.typ == link.T_ERROR and not r.hal.chain_on)
    r.hal.chip_temps = [500, 700]
    check("power on after cooling", r.request(link.T_CHAIN_POWER, b"\x01").typ == 0x85
          and r.hal.chain_on)
    # sensor failure
    r = Rig()
    r.request(link.T_CHAIN_POWER, b"\x01")
    r.hal.fail.append("vr_temp_dc")
    r.advance(300)
    check("sensor trip", idled(r.hal) and r.bridge.trip_reason == link.R_SENSOR)
    s = link.unpack_sensors(r.request(link.T_READ_SENSORS).payload)
    check("invalid reading reported", s["vr_temp_dc"] is None and s["state"] == link.S_TRIPPED)
    # BM1397 idles with its own PLL encoding
    r = Rig({"family": "BM1397", "heartbeat_timeout_ms": 500})
    r.request(link.T_CHAIN_POWER, b"\x01")
    r.advance(1000)
    check("BM1397 idle frame", idled(r.hal, "BM1397"))


run("bm13xx vectors", bm13xx)
run("parser scenarios", parser_scenarios)
run("link vectors", link_vectors)
run("link scenarios", link_scenarios)
run("bridge scenarios", bridge_scenarios)
impl = sys.implementation.name
print("%s: %d passed, %d failed" % (impl, passed, failed))
sys.exit(1 if failed else 0)
