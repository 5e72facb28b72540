"""Stratum V1 lines: pool messages parsed and checked into typed values, client lines built.

Every line from a pool is outside input. `parse_line` returns one message or raises
`RejectedLine` whose `reason` is a short, stable key (``"not JSON"``, ``"mining.notify:
prevhash"``) that the session counts, and whose text adds the detail for the log. Shapes accepted
are the ones pools are seen to send (notes/stratum.md §1): a reply's `error` as ckpool's
``[code, text, data]``, miningcore's ``{"code", "message"}``, a bare string or an older
``reject-reason`` with ``result: false``; `mining.notify` with its clean flag last (9 or 10
params); numbers as JSON numbers, ports also as strings.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from agent.pool.errors import RejectedLine
from agent.pool.header import Job, words_swapped

#: longer lines are dropped unread (a coinbase with thousands of payouts stays far below)
MAX_LINE_BYTES = 512 * 1024
MAX_COINBASE_PART_BYTES = 100_000
MAX_BRANCH = 32  # a branch of 32 levels is a block of 2**32 transactions
MAX_EXTRANONCE_BYTES = 32
MAX_WAIT_S = 3600.0

#: error codes of slush's spec, as ckpool and public-pool send them, and what they mean
ERROR_KINDS = {20: "other", 21: "stale", 22: "duplicate", 23: "low_difficulty",
               24: "unauthorized", 25: "not_subscribed"}
_TEXT_KINDS = (("job not found", "stale"), ("stale", "stale"), ("duplicate", "duplicate"),
               ("above target", "low_difficulty"), ("low difficulty", "low_difficulty"),
               ("high-hash", "low_difficulty"), ("unauthori", "unauthorized"),
               ("not subscribed", "not_subscribed"))


@dataclass(frozen=True)
class PoolFault:
    """The error part of a reply, whatever shape the pool gave it."""

    code: int | None
    text: str

    @property
    def kind(self) -> str:
        """other, stale, duplicate, low_difficulty, unauthorized or not_subscribed."""
        if self.code in ERROR_KINDS:
            return ERROR_KINDS[self.code]
        low = self.text.lower()
        return next((kind for word, kind in _TEXT_KINDS if word in low), "other")


@dataclass(frozen=True)
class Reply:
    """The answer to one of the client's requests."""

    id: int
    result: Any
    error: PoolFault | None


@dataclass(frozen=True)
class SetDifficulty:
    """mining.set_difficulty: the difficulty of the jobs that follow."""

    difficulty: float


@dataclass(frozen=True)
class SetExtranonce:
    """mining.set_extranonce: extranonce1 and extranonce2's size from the next job on."""

    extranonce1: bytes
    extranonce2_size: int


@dataclass(frozen=True)
class SetVersionMask:
    """mining.set_version_mask: the rolling mask, valid at once (BIP 310)."""

    mask: int


@dataclass(frozen=True)
class Reconnect:
    """client.reconnect: close and connect again (elsewhere, or after a wait)."""

    host: str | None  # None: the same host
    port: int | None  # None: the same port
    wait_s: float


@dataclass(frozen=True)
class ShowMessage:
    """client.show_message: text for the operator."""

    text: str


@dataclass(frozen=True)
class Request:
    """A method with an id that wants an answer: mining.ping, client.get_version, or one this
    client does not know (it gets an error)."""

    method: str
    id: Any


#: what a pool line is; a mining.notify is its `Job`
Message = (Reply | Job | SetDifficulty | SetExtranonce | SetVersionMask | Reconnect
           | ShowMessage | Request)


# -- building ---------------------------------------------------------------------------------

def encode(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def request(req_id: int, method: str, params: list[Any]) -> bytes:
    return encode({"id": req_id, "method": method, "params": params})


def answer(req_id: Any, result: Any, error: list[Any] | None = None) -> bytes:
    return encode({"id": req_id, "result": result, "error": error})


def submit_params(user: str, job_id: str, extranonce2: bytes, ntime: int, nonce: int,
                  version_bits: int | None) -> list[Any]:
    """`mining.submit` params: 5, or 6 with the version bits once rolling was negotiated."""
    params: list[Any] = [user, job_id, extranonce2.hex(), f"{ntime:08x}", f"{nonce:08x}"]
    if version_bits is not None:
        params.append(f"{version_bits:08x}")
    return params


# -- parsing ----------------------------------------------------------------------------------

def parse_line(line: bytes) -> Message:
    """One pool line (without its newline) as a message; RejectedLine with the reason."""
    if len(line) > MAX_LINE_BYTES:
        raise RejectedLine("line too long", f"{len(line)} bytes")
    try:
        obj = json.loads(line)
    except UnicodeDecodeError:
        raise RejectedLine("not UTF-8") from None
    except (ValueError, RecursionError) as exc:
        raise RejectedLine("not JSON", str(exc)[:80]) from None
    if not isinstance(obj, dict):
        raise RejectedLine("not a JSON object", type(obj).__name__)
    method = obj.get("method")
    if method is None:
        if "result" not in obj and "error" not in obj:
            raise RejectedLine("neither a method nor a reply")
        return Reply(_reply_id(obj.get("id")), obj.get("result"), _fault(obj))
    if not isinstance(method, str):
        raise RejectedLine("method is not a string")
    params = obj.get("params", [])
    if params is None:
        params = []
    if not isinstance(params, list):
        raise RejectedLine(f"{method}: params", "not a list")
    parse = _METHODS.get(method)
    if parse is None:
        return Request(method[:64], obj.get("id"))
    return parse(method, params, obj.get("id"))


def _reply_id(value: Any) -> int:
    if isinstance(value, bool):
        raise RejectedLine("reply id", repr(value))
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit() and len(value) < 19:
        return int(value)
    raise RejectedLine("reply id", repr(value)[:40])


def _fault(obj: dict[str, Any]) -> PoolFault | None:
    err = obj.get("error")
    if err is None or err is False:
        if obj.get("result") is False and obj.get("reject-reason") is not None:
            return PoolFault(None, str(obj["reject-reason"])[:200])
        return None
    if isinstance(err, list | tuple):
        code = err[0] if err else None
        text = err[1] if len(err) > 1 else ""
    elif isinstance(err, dict):
        code, text = err.get("code"), err.get("message", "")
    else:
        code, text = None, err
    if isinstance(code, str) and code.lstrip("-").isdigit() and len(code) < 10:
        code = int(code)
    if not isinstance(code, int) or isinstance(code, bool):
        code = None
    return PoolFault(code, str(text)[:200])


def _param(method: str, params: list[Any], index: int, name: str) -> Any:
    if len(params) <= index:
        raise RejectedLine(f"{method}: {name}", "missing")
    return params[index]


def _hex(method: str, name: str, value: Any, size: int | None = None,
         max_size: int = MAX_COINBASE_PART_BYTES) -> bytes:
    if not isinstance(value, str):
        raise RejectedLine(f"{method}: {name}", f"not a hex string: {value!r}"[:80])
    if len(value) > 2 * max_size:
        raise RejectedLine(f"{method}: {name}", f"longer than {max_size} bytes")
    try:
        data = bytes.fromhex(value)
    except ValueError:
        raise RejectedLine(f"{method}: {name}", f"not hex: {value[:40]!r}") from None
    if size is not None and len(data) != size:
        raise RejectedLine(f"{method}: {name}", f"{len(data)} bytes, not {size}")
    return data


def _u32(method: str, name: str, value: Any) -> int:
    if not (isinstance(value, str) and 1 <= len(value) <= 8):
        raise RejectedLine(f"{method}: {name}", f"not 8 hex digits: {value!r}"[:80])
    try:
        return int(value, 16)
    except ValueError:
        raise RejectedLine(f"{method}: {name}", f"not hex: {value!r}") from None


def _positive(method: str, name: str, value: Any) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise RejectedLine(f"{method}: {name}", f"not a number: {value[:40]!r}") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RejectedLine(f"{method}: {name}", f"not a number: {value!r}"[:80])
    try:
        number = float(value)
    except OverflowError:
        raise RejectedLine(f"{method}: {name}", "out of range") from None
    if not (math.isfinite(number) and number > 0):
        raise RejectedLine(f"{method}: {name}", f"must be > 0, got {value!r}"[:80])
    return number


def _notify(method: str, params: list[Any], _id: Any) -> Job:
    if len(params) < 9:
        raise RejectedLine(f"{method}: params", f"{len(params)} of 9")
    job_id = params[0]
    if isinstance(job_id, int) and not isinstance(job_id, bool):
        job_id = str(job_id)
    if not (isinstance(job_id, str) and 0 < len(job_id) <= 128 and job_id.isprintable()):
        raise RejectedLine(f"{method}: job_id", repr(job_id)[:40])
    branch = params[4]
    if not isinstance(branch, list) or len(branch) > MAX_BRANCH:
        raise RejectedLine(f"{method}: merkle_branch", "not a list of at most 32 hashes")
    clean = params[8] if isinstance(params[8], bool) else params[-1]
    if not isinstance(clean, bool):
        raise RejectedLine(f"{method}: clean_jobs", repr(clean)[:40])
    return Job(
        job_id=job_id,
        prevhash=words_swapped(_hex(method, "prevhash", params[1], 32)),
        coinb1=_hex(method, "coinb1", params[2]),
        coinb2=_hex(method, "coinb2", params[3]),
        branch=tuple(_hex(method, "merkle_branch", b, 32) for b in branch),
        version=_u32(method, "version", params[5]),
        nbits=_u32(method, "nbits", params[6]),
        ntime=_u32(method, "ntime", params[7]),
        clean=clean,
    )


def _set_difficulty(method: str, params: list[Any], _id: Any) -> SetDifficulty:
    return SetDifficulty(_positive(method, "difficulty", _param(method, params, 0, "difficulty")))


def _set_version_mask(method: str, params: list[Any], _id: Any) -> SetVersionMask:
    return SetVersionMask(_u32(method, "mask", _param(method, params, 0, "mask")))


def _set_extranonce(method: str, params: list[Any], _id: Any) -> SetExtranonce:
    extranonce1 = _hex(method, "extranonce1", _param(method, params, 0, "extranonce1"),
                       max_size=MAX_EXTRANONCE_BYTES)
    return SetExtranonce(extranonce1, extranonce2_size(
        method, _param(method, params, 1, "extranonce2_size")))


def extranonce2_size(method: str, value: Any) -> int:
    """The extranonce2 size a pool gives (subscribe result, set_extranonce): 1 to 32 bytes."""
    if isinstance(value, bool) or not isinstance(value, int) \
            or not 1 <= value <= MAX_EXTRANONCE_BYTES:
        raise RejectedLine(f"{method}: extranonce2_size", f"{value!r} is not in 1..32"[:80])
    return value


def _reconnect(method: str, params: list[Any], _id: Any) -> Reconnect:
    host = params[0] if params else None
    port = params[1] if len(params) > 1 else None
    wait = params[2] if len(params) > 2 else None
    if host == "":
        host = None
    if host is not None and not (isinstance(host, str) and len(host) <= 253
                                 and host.isprintable() and " " not in host):
        raise RejectedLine(f"{method}: host", repr(host)[:60])
    if isinstance(port, str) and port.isdigit() and len(port) <= 5:
        port = int(port)
    if port in ("", 0):
        port = None
    if port is not None and (isinstance(port, bool) or not isinstance(port, int)
                             or not 1 <= port <= 65535):
        raise RejectedLine(f"{method}: port", repr(port)[:40])
    if wait is None:
        wait_s = 0.0
    elif isinstance(wait, bool) or not isinstance(wait, int | float) \
            or not math.isfinite(wait) or wait < 0:
        raise RejectedLine(f"{method}: wait", repr(wait)[:40])
    else:
        wait_s = min(float(wait), MAX_WAIT_S)
    return Reconnect(host, port, wait_s)


def _show_message(method: str, params: list[Any], _id: Any) -> ShowMessage:
    text = _param(method, params, 0, "text")
    if not isinstance(text, str):
        raise RejectedLine(f"{method}: text", "not a string")
    return ShowMessage("".join(c if c.isprintable() else "?" for c in text[:500]))


def _request(method: str, params: list[Any], req_id: Any) -> Request:
    if req_id is None:
        raise RejectedLine(f"{method}: id", "missing")
    return Request(method, req_id)


_METHODS: dict[str, Any] = {
    "mining.notify": _notify,
    "mining.set_difficulty": _set_difficulty,
    "mining.set_version_mask": _set_version_mask,
    "mining.set_extranonce": _set_extranonce,
    "client.reconnect": _reconnect,
    "client.show_message": _show_message,
    "mining.ping": _request,
    "client.get_version": _request,
}


def parse_subscribe_result(result: Any) -> tuple[bytes, int]:
    """(extranonce1, extranonce2_size) from a subscribe result
    ``[subscriptions, extranonce1, extranonce2_size]`` (subscriptions in any order, unread)."""
    method = "mining.subscribe"
    if not isinstance(result, list) or len(result) < 3:
        raise RejectedLine(f"{method}: result", "not [subscriptions, extranonce1, size]")
    extranonce1 = _hex(method, "extranonce1", result[1], max_size=MAX_EXTRANONCE_BYTES)
    return extranonce1, extranonce2_size(method, result[2])


def parse_configure_result(result: Any) -> int | None:
    """The version mask a `mining.configure` result grants; None when it grants none
    (``"version-rolling": false``, no result, or a malformed one)."""
    if not isinstance(result, dict) or result.get("version-rolling") is not True:
        return None
    mask = result.get("version-rolling.mask")
    if not (isinstance(mask, str) and 1 <= len(mask) <= 8):
        return None
    try:
        return int(mask, 16)
    except ValueError:
        return None
