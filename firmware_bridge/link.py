"""Board link: the framed protocol between the agent and the bridge firmware (see PROTOCOL.md).

Frame: A5 5A | LEN | SEQ | TYPE | PAYLOAD (LEN bytes) | CRC16 (big-endian, CCITT-FALSE over
LEN..PAYLOAD). Payloads are little-endian fixed fields with integer scaled units.
Runs unchanged on CPython and MicroPython.
"""
# MicroPython-first: %-formatting (f-string support varies by port) and no `raise ... from`
# (MicroPython warns on exception chaining).
# ruff: noqa: UP031


import struct

from firmware_bridge.asic import crc16
from firmware_bridge.framing import FrameHunter

SOF = b"\xa5\x5a"
PROTOCOL_VERSION = 1
MAX_PAYLOAD = 64
OVERHEAD = 7  # SOF(2) LEN SEQ TYPE CRC(2)

# requests (agent -> bridge); the reply type is request | 0x80
T_HEARTBEAT = 0x01
T_READ_SENSORS = 0x02
T_SET_FAN = 0x03
T_SET_VCORE = 0x04
T_CHAIN_POWER = 0x05
T_CHAIN_RESET = 0x06
T_INFO = 0x07
T_CLEAR_TRIP = 0x08  # payload u8 trip reason: acknowledge that latched trip (chain stays off)
REPLY = 0x80
T_ERROR = 0xFF  # reply to a request that failed: payload req_type u8, code u8
T_EVENT = 0xC0  # unsolicited (seq 0): payload state u8, trip_reason u8

REQUEST_NAMES = {
    T_HEARTBEAT: "heartbeat", T_READ_SENSORS: "read_sensors", T_SET_FAN: "set_fan",
    T_SET_VCORE: "set_vcore", T_CHAIN_POWER: "chain_power", T_CHAIN_RESET: "chain_reset",
    T_INFO: "info", T_CLEAR_TRIP: "clear_trip",
}

# error codes
E_UNKNOWN_TYPE = 1
E_BAD_LENGTH = 2
E_RANGE = 3
E_TRIPPED = 4
E_HARDWARE = 5
ERROR_NAMES = {
    E_UNKNOWN_TYPE: "unknown_type", E_BAD_LENGTH: "bad_length", E_RANGE: "out_of_range",
    E_TRIPPED: "tripped", E_HARDWARE: "hardware",
}

# bridge states and trip reasons
S_IDLE = 0  # no agent yet; the watchdog is not armed
S_ACTIVE = 1  # the agent is heartbeating
S_TRIPPED = 2  # the bridge idled the chain on its own; trip_reason says why
STATE_NAMES = {S_IDLE: "idle", S_ACTIVE: "active", S_TRIPPED: "tripped"}

R_NONE = 0
R_HEARTBEAT = 1  # no request from the agent for heartbeat_timeout_ms
R_CHIP_TEMP = 2  # a chip temperature above trip_temp_dc
R_VR_TEMP = 3  # regulator temperature above vr_trip_temp_dc
R_SENSOR = 4  # a sensor failed (OSError) or read out of range
R_BOARD_TEMP = 5  # board temperature above board_trip_temp_dc
TRIP_NAMES = {
    R_NONE: "none", R_HEARTBEAT: "heartbeat_timeout", R_CHIP_TEMP: "chip_over_temp",
    R_VR_TEMP: "vr_over_temp", R_SENSOR: "sensor_invalid", R_BOARD_TEMP: "board_over_temp",
}

# "no valid reading" markers of the sensor fields
INVALID_I16 = -32768
INVALID_U16 = 0xFFFF
INVALID_U32 = 0xFFFFFFFF
MAX_CHIP_CHANNELS = 8

F_CHAIN_POWERED = 0x01

SENSORS_FMT = "<BBBBhhHIIHHIB"  # fixed part of the READ_SENSORS reply, then n x int16
SENSORS_FIXED = 27
INFO_FMT = "<BBIhhhHHB8s"  # INFO reply
INFO_LEN = 25


def encode(seq, typ, payload=b""):
    """One frame. ValueError on a seq/type outside 0..255 or a payload over MAX_PAYLOAD."""
    if not isinstance(seq, int) or not 0 <= seq <= 255:
        raise ValueError("seq must be 0..255, got %r" % (seq,))
    if not isinstance(typ, int) or not 0 <= typ <= 255:
        raise ValueError("type must be 0..255, got %r" % (typ,))
    if len(payload) > MAX_PAYLOAD:
        raise ValueError("payload is %d bytes, at most %d" % (len(payload), MAX_PAYLOAD))
    body = bytes((len(payload), seq, typ)) + bytes(payload)
    c = crc16(body)
    return SOF + body + bytes(((c >> 8) & 0xFF, c & 0xFF))


class Message:
    """A decoded frame: `seq`, `typ`, `payload` (bytes)."""

    __slots__ = ("payload", "seq", "typ")

    def __init__(self, seq, typ, payload):
        self.seq = seq
        self.typ = typ
        self.payload = payload

    def __repr__(self):
        return "Message(seq=%d, typ=0x%02X, payload=%s)" % (self.seq, self.typ, self.payload.hex())


class Decoder(FrameHunter):
    """Byte stream to Messages. Hunts for A5 5A, checks LEN <= MAX_PAYLOAD and the CRC16; on a bad
    candidate it advances one byte and hunts again; an incomplete candidate is dropped as soon as
    a complete valid frame starts inside it. Counters `frames`, `crc_errors`, `discarded_bytes`.
    Never raises on any input."""

    def __init__(self):
        super().__init__(SOF, 3)

    def _size(self, buf, i):
        length = buf[i + 2]
        return OVERHEAD + length if length <= MAX_PAYLOAD else 0

    def _check(self, buf, i, size):
        end = i + size
        return crc16(buf[i + 2 : end - 2]) == (buf[end - 2] << 8) | buf[end - 1]

    def _decode(self, buf, i, size):
        return Message(buf[i + 3], buf[i + 4], buf[i + 5 : i + size - 2])


# ---- payloads ---------------------------------------------------------------------------------


def _clamp_i16(v):
    if v is None or not isinstance(v, int) or v < -32767 or v > 32767:
        return INVALID_I16
    return v


def _clamp_u16(v):
    if v is None or not isinstance(v, int) or v < 0 or v > 0xFFFE:
        return INVALID_U16
    return v


def _clamp_u32(v):
    if v is None or not isinstance(v, int) or v < 0 or v > 0xFFFFFFFE:
        return INVALID_U32
    return v


def pack_sensors(s):
    """READ_SENSORS reply payload from a dict (see unpack_sensors for the keys). Values that are
    None or do not fit their field are sent as the field's invalid marker."""
    temps = s.get("chip_temps_dc") or []
    if len(temps) > MAX_CHIP_CHANNELS:
        temps = temps[:MAX_CHIP_CHANNELS]
    fan_pct = s.get("fan_pct")
    out = struct.pack(
        SENSORS_FMT,
        s.get("state", 0) & 0xFF,
        s.get("trip_reason", 0) & 0xFF,
        F_CHAIN_POWERED if s.get("chain_powered") else 0,
        fan_pct if isinstance(fan_pct, int) and 0 <= fan_pct <= 100 else 0xFF,
        _clamp_i16(s.get("board_temp_dc")),
        _clamp_i16(s.get("vr_temp_dc")),
        _clamp_u16(s.get("vin_mv")),
        _clamp_u32(s.get("iin_ma")),
        _clamp_u32(s.get("power_mw")),
        _clamp_u16(s.get("fan_rpm")),
        _clamp_u16(s.get("vcore_mv")),
        (s.get("uptime_ms") or 0) & 0xFFFFFFFF,
        len(temps),
    )
    for t in temps:
        out += struct.pack("<h", _clamp_i16(t))
    return out


def _opt(v, invalid):
    return None if v == invalid else v


def unpack_sensors(payload):
    """Dict from a READ_SENSORS reply: state, trip_reason, chain_powered, fan_pct, board_temp_dc,
    vr_temp_dc, vin_mv, iin_ma, power_mw, fan_rpm, vcore_mv, uptime_ms, chip_temps_dc (list);
    invalid readings are None. ValueError on a malformed payload."""
    if len(payload) < SENSORS_FIXED:
        raise ValueError("sensor payload is %d bytes, need >= %d" % (len(payload), SENSORS_FIXED))
    f = struct.unpack(SENSORS_FMT, payload[:SENSORS_FIXED])
    n = f[12]
    if n > MAX_CHIP_CHANNELS or len(payload) != SENSORS_FIXED + 2 * n:
        raise ValueError("sensor payload is %d bytes for %d channels" % (len(payload), n))
    temps = []
    for k in range(n):
        t = struct.unpack("<h", payload[SENSORS_FIXED + 2 * k : SENSORS_FIXED + 2 * k + 2])[0]
        temps.append(_opt(t, INVALID_I16))
    return {
        "state": f[0],
        "trip_reason": f[1],
        "chain_powered": bool(f[2] & F_CHAIN_POWERED),
        "fan_pct": _opt(f[3], 0xFF),
        "board_temp_dc": _opt(f[4], INVALID_I16),
        "vr_temp_dc": _opt(f[5], INVALID_I16),
        "vin_mv": _opt(f[6], INVALID_U16),
        "iin_ma": _opt(f[7], INVALID_U32),
        "power_mw": _opt(f[8], INVALID_U32),
        "fan_rpm": _opt(f[9], INVALID_U16),
        "vcore_mv": _opt(f[10], INVALID_U16),
        "uptime_ms": f[11],
        "chip_temps_dc": temps,
    }


def pack_status(state, trip_reason, uptime_ms):
    """HEARTBEAT reply payload: state u8, trip_reason u8, uptime_ms u32."""
    return struct.pack("<BBI", state & 0xFF, trip_reason & 0xFF, uptime_ms & 0xFFFFFFFF)


def unpack_status(payload):
    if len(payload) != 6:
        raise ValueError("status payload is %d bytes, need 6" % len(payload))
    state, reason, uptime = struct.unpack("<BBI", payload)
    return {"state": state, "trip_reason": reason, "uptime_ms": uptime}


def pack_info(info):
    """INFO reply payload (25 bytes): protocol u8, chip channels u8, heartbeat_timeout_ms u32,
    trip_temp_dc i16, vr_trip_temp_dc i16, board_trip_temp_dc i16, vcore_min_mv u16,
    vcore_max_mv u16, reserved u8 (0), family 8 bytes ASCII (NUL padded)."""
    fam = info.get("family", "").encode()[:8]
    fam = fam + bytes(8 - len(fam))
    return struct.pack(
        INFO_FMT, PROTOCOL_VERSION, info.get("channels", 0) & 0xFF,
        info.get("heartbeat_timeout_ms", 0) & 0xFFFFFFFF, _clamp_i16(info.get("trip_temp_dc")),
        _clamp_i16(info.get("vr_trip_temp_dc")), _clamp_i16(info.get("board_trip_temp_dc")),
        _clamp_u16(info.get("vcore_min_mv")), _clamp_u16(info.get("vcore_max_mv")), 0, fam,
    )


def unpack_info(payload):
    if len(payload) != INFO_LEN:
        raise ValueError("info payload is %d bytes, need %d" % (len(payload), INFO_LEN))
    f = struct.unpack(INFO_FMT, payload)
    fam = f[9]
    z = fam.find(b"\x00")
    return {
        "protocol": f[0], "channels": f[1], "heartbeat_timeout_ms": f[2], "trip_temp_dc": f[3],
        "vr_trip_temp_dc": f[4], "board_trip_temp_dc": f[5], "vcore_min_mv": f[6],
        "vcore_max_mv": f[7], "family": (fam[:z] if z >= 0 else fam).decode(),
    }


def pack_u8(v):
    if not isinstance(v, int) or not 0 <= v <= 255:
        raise ValueError("value must be 0..255, got %r" % (v,))
    return bytes((v,))


def pack_u16(v):
    if not isinstance(v, int) or not 0 <= v <= 0xFFFF:
        raise ValueError("value must be 0..65535, got %r" % (v,))
    return bytes((v & 0xFF, v >> 8))


def unpack_u8(payload):
    if len(payload) != 1:
        raise ValueError("need 1 byte, got %d" % len(payload))
    return payload[0]


def unpack_u16(payload):
    if len(payload) != 2:
        raise ValueError("need 2 bytes, got %d" % len(payload))
    return payload[0] | (payload[1] << 8)


def pack_error(req_type, code):
    return bytes((req_type & 0xFF, code & 0xFF))


def unpack_error(payload):
    if len(payload) != 2:
        raise ValueError("error payload is %d bytes, need 2" % len(payload))
    return payload[0], payload[1]


def pack_event(state, trip_reason):
    return bytes((state & 0xFF, trip_reason & 0xFF))
