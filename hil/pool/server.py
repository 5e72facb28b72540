"""The lab pool's server: one thread per miner connection, the Stratum V1 methods, the faults on
cue (see the package docstring), and the counts of every share it checked."""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import secrets
import select
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hil.pool.work import (
    DIFF1,
    HEIGHT_AT,
    MAINNET_791433,
    NTIME_SLACK_S,
    SCRIPT_LEN_AT,
    PoolJob,
    ShareCheck,
    dsha,
    flip_words,
    share_target,
)

log = logging.getLogger("hil.pool")


@dataclass
class _SentJob:
    job: PoolJob
    difficulty: float
    extranonce1: str


@dataclass
class Miner:
    """One connection, as the pool sees it."""

    number: int
    sock: socket.socket
    peer: str
    extranonce1: str
    subscribed: bool = False
    workers: set[str] = field(default_factory=set)
    mask: int | None = None  # the granted version mask (None: not negotiated)
    configure_params: Any = None
    difficulty: float = 1.0
    suggested: float | None = None
    extranonce_subscribed: bool = False
    user_agent: str = ""
    next_extranonce1: str | None = None
    sent: dict[str, _SentJob] = field(default_factory=dict)
    stale: set[str] = field(default_factory=set)
    seen: set[tuple[str, ...]] = field(default_factory=set)
    replies: list[Any] = field(default_factory=list)  # results of the pool's own requests
    lock: threading.Lock = field(default_factory=threading.Lock)
    open: bool = True
    mining_since_s: float | None = None  # monotonic time of its first job


class LabPool:
    """A Stratum V1 pool on a loopback port, run by threads of its own."""

    def __init__(self, difficulty: float = 1.0, version_mask: int = 0x1FFFE000,
                 configure: str = "grant", extranonce1_size: int = 4, extranonce2_size: int = 4,
                 extranonce1: str | None = None, tls: ssl.SSLContext | None = None,
                 host: str = "127.0.0.1", port: int = 0, authorize: bool = True,
                 honour_suggest: bool = False, name: str = "lab-pool") -> None:
        if configure not in ("grant", "refuse", "error", "ignore", "drop"):
            raise ValueError(f"configure: {configure!r}")
        self.difficulty = float(difficulty)
        self.version_mask = version_mask
        self.configure = configure
        self.extranonce1_size = len(bytes.fromhex(extranonce1)) if extranonce1 else \
            extranonce1_size
        self.fixed_extranonce1 = extranonce1
        self.extranonce2_size = extranonce2_size
        self.tls = tls
        self.host = host
        self.port = port
        self.authorize = authorize
        self.honour_suggest = honour_suggest
        self.name = name
        self.counts: Counter[str] = Counter()
        self.shares: list[ShareCheck] = []
        self.rejecting: tuple[int, str] | None = None  # (code, reason) for every valid share
        self.accepted_difficulty = 0.0
        self.miners: list[Miner] = []
        self._lock = threading.RLock()
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._job_ids = itertools.count(1)
        self._ids = itertools.count(1000)
        self._t0 = time.time()
        base = MAINNET_791433
        script_len = int(base["coinb1"][2 * SCRIPT_LEN_AT:2 * SCRIPT_LEN_AT + 2], 16)
        script_len += self.extranonce1_size + extranonce2_size - base["extranonce_bytes"]
        if not 2 <= script_len <= 100:
            raise ValueError("extranonce sizes make the coinbase script invalid")
        self._coinb1 = bytearray.fromhex(base["coinb1"])
        self._coinb1[SCRIPT_LEN_AT] = script_len
        self.job = PoolJob(f"{next(self._job_ids):x}", base["prevhash"], self._coinb1.hex(),
                           base["coinb2"], tuple(base["branch"]), base["version"],
                           base["nbits"], base["ntime"], 791433)

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"stratum+{'ssl' if self.tls else 'tcp'}://{self.host}:{self.port}"

    def start(self) -> LabPool:
        self._listen()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.go_down()
        for t in self._threads:
            t.join(timeout=5)

    def __enter__(self) -> LabPool:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _listen(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(16)
        self.port = sock.getsockname()[1]
        self._listener = sock
        self._acceptor = self._spawn(self._accept_loop, sock)

    def _spawn(self, target: Callable[..., None], *args: Any) -> threading.Thread:
        t = threading.Thread(target=target, args=args, name=f"{self.name}-{target.__name__}",
                             daemon=True)
        self._threads = [x for x in self._threads if x.is_alive()] + [t]
        t.start()
        return t

    def go_down(self) -> None:
        """Close the port (connections are refused) and drop every miner."""
        with self._lock:
            listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)  # wakes the accept loop at once
            listener.close()
            acceptor = self._acceptor
            if acceptor is not None and acceptor is not threading.current_thread():
                acceptor.join(1.0)  # the port is free once it has let go (`come_up`)
        self.drop_connections()

    def come_up(self) -> None:
        """Listen again on the same port."""
        if self._listener is None and not self._stop.is_set():
            self._listen()

    def drop_connections(self) -> None:
        for miner in self.connected():
            self._hang_up(miner)

    def connected(self) -> list[Miner]:
        with self._lock:
            return [m for m in self.miners if m.open]

    def _hang_up(self, miner: Miner) -> None:
        with miner.lock:  # a reply being written goes out whole first
            miner.open = False
        with contextlib.suppress(OSError):
            miner.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            miner.sock.close()

    def _accept_loop(self, listener: socket.socket) -> None:
        while not self._stop.is_set() and self._listener is listener:
            try:
                ready, _, _ = select.select([listener], [], [], 0.1)
                if not ready:
                    continue
                sock, addr = listener.accept()
            except (OSError, ValueError):
                return  # closed by go_down
            self._spawn(self._serve, sock, f"{addr[0]}:{addr[1]}")

    # -- one miner ------------------------------------------------------------------------------

    def _serve(self, sock: socket.socket, peer: str) -> None:
        # every line goes out at once: with Nagle a notify would wait for the miner's ACK of
        # the previous reply, which Linux delays up to 40 ms
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.tls is not None:
            try:
                sock.settimeout(5.0)
                sock = self.tls.wrap_socket(sock, server_side=True)
            except (OSError, ssl.SSLError) as exc:
                self.counts["tls_failures"] += 1
                log.info("%s: TLS handshake with %s failed: %s", self.name, peer, exc)
                sock.close()
                return
        sock.settimeout(0.2)
        with self._lock:
            number = len(self.miners)
            en1 = self.fixed_extranonce1 or secrets.token_hex(self.extranonce1_size)
            miner = Miner(number, sock, peer, en1)
            self.miners.append(miner)
            self.counts["connections"] += 1
        buf = b""
        try:
            while miner.open and not self._stop.is_set():
                try:
                    chunk = sock.recv(65536)
                except (TimeoutError, ssl.SSLWantReadError):
                    continue
                if not chunk:
                    break
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.strip():
                        self._line(miner, line)
        except OSError:
            pass
        finally:
            self._hang_up(miner)

    def _send(self, miner: Miner, obj: dict[str, Any]) -> bool:
        """Write one line to `miner`; False when it could not (the connection is gone)."""
        data = (json.dumps(obj) + "\n").encode()
        with miner.lock:
            if not miner.open:
                return False
            try:
                miner.sock.sendall(data)
            except OSError:
                miner.open = False
                return False
            return True

    def _reply(self, miner: Miner, req_id: Any, result: Any, error: Any = None) -> None:
        self._send(miner, {"id": req_id, "result": result, "error": error})

    def _line(self, miner: Miner, line: bytes) -> None:
        try:
            req = json.loads(line)
            if not isinstance(req, dict):
                raise ValueError("not an object")
            method, params, req_id = req.get("method"), req.get("params", []), req.get("id")
            if method is not None and not isinstance(params, list):
                raise ValueError("params not a list")
        except (ValueError, UnicodeDecodeError):
            self.counts["malformed"] += 1
            return
        if method is None:  # an answer to the pool's own request (ping, get_version)
            miner.replies.append(req.get("result"))
            if req.get("result") == "pong":
                self.counts["pongs"] += 1
            return
        handler = getattr(self, "_on_" + str(method).replace(".", "_"), None)
        if handler is None:
            self.counts["unknown_methods"] += 1
            self._reply(miner, req_id, None, [20, "Unsupported method", None])
            return
        try:
            handler(miner, params, req_id)
        except Exception:  # a line the lab did not foresee: counted, the connection goes on
            log.exception("%s: %s from miner %d failed", self.name, method, miner.number)
            self.counts["handler_errors"] += 1
            self._reply(miner, req_id, None, [20, "Internal error", None])

    def _on_mining_configure(self, miner: Miner, params: list[Any], req_id: Any) -> None:
        miner.configure_params = params
        self.counts["configures"] += 1
        if self.configure == "drop":
            self._hang_up(miner)
            return
        if self.configure == "ignore":
            return
        if self.configure == "error":
            self._reply(miner, req_id, None, [20, "Not supported.", None])
            return
        exts = params[0] if params and isinstance(params[0], list) else []
        opts = params[1] if len(params) > 1 and isinstance(params[1], dict) else {}
        result: dict[str, Any] = {}
        if "version-rolling" in exts:
            if self.configure == "grant":
                try:
                    asked = int(opts.get("version-rolling.mask", "ffffffff"), 16)
                except (TypeError, ValueError):
                    asked = 0xFFFFFFFF
                miner.mask = self.version_mask & asked
                result = {"version-rolling": True,
                          "version-rolling.mask": f"{miner.mask:08x}"}
            else:
                result = {"version-rolling": False}
        self._reply(miner, req_id, result)

    def _on_mining_subscribe(self, miner: Miner, params: list[Any], req_id: Any) -> None:
        miner.subscribed = True
        miner.user_agent = str(params[0]) if params else ""
        self._reply(miner, req_id, [[["mining.set_difficulty", f"{miner.number:08x}"],
                                     ["mining.notify", f"{miner.number:08x}"]],
                                    miner.extranonce1, self.extranonce2_size])
        self._start_mining(miner)

    def _on_mining_authorize(self, miner: Miner, params: list[Any], req_id: Any) -> None:
        worker = str(params[0]) if params else ""
        if not self.authorize or not worker:
            self.counts["auth_refused"] += 1
            self._reply(miner, req_id, False, [24, "Unauthorized worker", None])
            return
        miner.workers.add(worker)
        self._reply(miner, req_id, True)
        self._start_mining(miner)

    def _on_mining_suggest_difficulty(self, miner: Miner, params: list[Any],
                                      req_id: Any) -> None:
        if params and isinstance(params[0], int | float) and params[0] > 0:
            miner.suggested = float(params[0])
            if self.honour_suggest:
                miner.difficulty = miner.suggested
                self._send(miner, {"id": None, "method": "mining.set_difficulty",
                                   "params": [miner.difficulty]})

    def _on_mining_extranonce_subscribe(self, miner: Miner, params: list[Any],
                                        req_id: Any) -> None:
        miner.extranonce_subscribed = True
        self._reply(miner, req_id, True)

    def _start_mining(self, miner: Miner) -> None:
        if miner.subscribed and miner.workers and not miner.sent:
            miner.difficulty = self.difficulty if miner.suggested is None or \
                not self.honour_suggest else miner.suggested
            self._send(miner, {"id": None, "method": "mining.set_difficulty",
                               "params": [miner.difficulty]})
            self._notify(miner, self.job, True)
            miner.mining_since_s = time.monotonic()

    def _notify(self, miner: Miner, job: PoolJob, clean: bool) -> None:
        with self._lock:
            if miner.next_extranonce1 is not None:
                miner.extranonce1, miner.next_extranonce1 = miner.next_extranonce1, None
            if clean:
                miner.stale.update(miner.sent)
            miner.sent[job.job_id] = _SentJob(job, miner.difficulty, miner.extranonce1)
        self._send(miner, {"id": None, "method": "mining.notify",
                           "params": job.notify_params(clean)})

    # -- shares -----------------------------------------------------------------------------------

    def _on_mining_submit(self, miner: Miner, params: list[Any], req_id: Any) -> None:
        check = self._check(miner, params)
        rejecting = self.rejecting
        if check.outcome == "accepted" and rejecting is not None:
            check.outcome, check.reason = "rejected", rejecting[1]
        if check.outcome == "accepted":
            reply: dict[str, Any] = {"id": req_id, "result": True, "error": None}
        else:
            code = {"stale": 21, "duplicate": 22, "unauthorized": 24}.get(check.outcome, 20)
            if check.reason == "Above target":
                code = 23
            if check.outcome == "rejected" and rejecting is not None:
                code = rejecting[0]
            reply = {"id": req_id, "result": None, "error": [code, check.reason, None]}
        check.answered = self._send(miner, reply)
        with self._lock:
            self.shares.append(check)
            self.counts[check.outcome] += 1
            if not check.answered:
                self.counts["unanswered"] += 1
            if check.outcome == "accepted":
                self.accepted_difficulty += check.required

    def _check(self, miner: Miner, params: list[Any]) -> ShareCheck:
        worker = str(params[0]) if params else ""
        job_id = str(params[1]) if len(params) > 1 else ""
        check = ShareCheck(miner.number, worker, job_id, len(params), 0, 0.0, 0.0, "invalid")

        def verdict(outcome: str, reason: str) -> ShareCheck:
            check.outcome, check.reason = outcome, reason
            return check

        if not miner.subscribed:
            return verdict("unauthorized", "Not subscribed")
        if worker not in miner.workers:
            return verdict("unauthorized", "Unauthorized worker")
        if len(params) not in (5, 6) or not all(isinstance(p, str) for p in params):
            return verdict("invalid", "Bad params")
        sent = miner.sent.get(job_id)
        if sent is None:
            return verdict("stale", "Job not found")
        if job_id in miner.stale:
            return verdict("stale", "Stale")
        _, _, en2, ntime, nonce = params[:5]
        try:
            en2_size = len(bytes.fromhex(en2))
            ntime_value = int(ntime, 16)
            bits = int(params[5], 16) if len(params) == 6 else 0
            int(nonce, 16)
        except ValueError:
            return verdict("invalid", "Bad hex")
        check.version_bits = bits
        if en2_size != self.extranonce2_size:
            return verdict("invalid", "Invalid nonce2 length")
        if len(ntime) != 8 or len(nonce) != 8:
            return verdict("invalid", "Bad ntime or nonce length")
        if not sent.job.ntime <= ntime_value <= sent.job.ntime + NTIME_SLACK_S:
            return verdict("invalid", "Ntime out of range")
        mask = miner.mask or 0
        if bits & ~mask & 0xFFFFFFFF:
            return verdict("invalid", "Invalid version mask")
        version = (sent.job.version & ~mask) | (bits & mask)
        key = (job_id, sent.extranonce1, en2.lower(), ntime.lower(), nonce.lower(), f"{bits:x}")
        if key in miner.seen:
            return verdict("duplicate", "Duplicate")
        miner.seen.add(key)
        header = sent.job.header(sent.extranonce1, en2.lower(), ntime.lower(), nonce.lower(),
                                 version)
        value = int.from_bytes(dsha(header), "little")
        check.difficulty = DIFF1 / max(value, 1)
        check.required = min(sent.difficulty, miner.difficulty)
        if value > share_target(check.required):
            return verdict("invalid", "Above target")
        return verdict("accepted", "")

    # -- cues -------------------------------------------------------------------------------------

    def _next_job(self, new_block: bool) -> PoolJob:
        with self._lock:
            old = self.job
            number = next(self._job_ids)
            salt = number.to_bytes(4, "little")
            branch = tuple(dsha(bytes.fromhex(h) + salt).hex() for h in old.branch)
            height, prevhash, coinb1 = old.height, old.prevhash, old.coinb1
            if new_block:
                height += 1
                tip = dsha(bytes.fromhex(old.prevhash) + salt)
                prevhash = flip_words(tip[:24] + bytes(8)).hex()  # header order ends in zeros
                raw = bytearray.fromhex(old.coinb1)
                raw[HEIGHT_AT:HEIGHT_AT + 3] = height.to_bytes(3, "little")
                coinb1 = raw.hex()
            ntime = max(old.ntime, MAINNET_791433["ntime"] + int(time.time() - self._t0))
            self.job = PoolJob(f"{number:x}", prevhash, coinb1, old.coinb2, branch,
                               old.version, old.nbits, ntime, height)
            return self.job

    def new_block(self) -> PoolJob:
        """The next block: every miner gets a clean_jobs notify; earlier jobs are stale."""
        job = self._next_job(True)
        for miner in self._mining():
            self._notify(miner, job, True)
        return job

    def new_job(self, clean: bool = False) -> PoolJob:
        """A new job of the same block (new transactions)."""
        job = self._next_job(False)
        for miner in self._mining():
            self._notify(miner, job, clean)
        return job

    def _mining(self) -> list[Miner]:
        return [m for m in self.connected() if m.sent]

    def set_difficulty(self, difficulty: float, notify: bool = True) -> None:
        """A new difficulty for every miner (for the jobs after it; `notify`: send one)."""
        self.difficulty = float(difficulty)
        for miner in self._mining():
            miner.difficulty = self.difficulty
            self._send(miner, {"id": None, "method": "mining.set_difficulty",
                               "params": [self.difficulty]})
        if notify:
            self.new_job()

    def set_version_mask(self, mask: int) -> None:
        """mining.set_version_mask to every miner that negotiated rolling (valid at once)."""
        self.version_mask = mask
        for miner in self._mining():
            if miner.mask is not None:
                miner.mask = mask
                self._send(miner, {"id": None, "method": "mining.set_version_mask",
                                   "params": [f"{mask:08x}"]})

    def set_extranonce(self, miner: Miner | None = None) -> str:
        """A new extranonce1 (used from the next notify on), sent to one miner or all."""
        en1 = secrets.token_hex(self.extranonce1_size)
        for m in [miner] if miner is not None else self._mining():
            m.next_extranonce1 = en1
            self._send(m, {"id": None, "method": "mining.set_extranonce",
                           "params": [en1, self.extranonce2_size]})
        self.new_job()
        return en1

    def reconnect(self, host: str | None = None, port: int | None = None,
                  wait_s: float = 0) -> None:
        for miner in self.connected():
            self._send(miner, {"id": None, "method": "client.reconnect",
                               "params": [host, port, wait_s]})

    def show_message(self, text: str) -> None:
        for miner in self.connected():
            self._send(miner, {"id": None, "method": "client.show_message", "params": [text]})

    def ping(self) -> None:
        for miner in self.connected():
            self._send(miner, {"id": next(self._ids), "method": "mining.ping", "params": []})

    def get_version(self) -> None:
        for miner in self.connected():
            self._send(miner, {"id": next(self._ids), "method": "client.get_version",
                               "params": []})

    def send_raw(self, data: bytes) -> None:
        """Bytes as they are to every connected miner (garbage, half lines, bad JSON)."""
        for miner in self.connected():
            with miner.lock, contextlib.suppress(OSError):
                miner.sock.sendall(data)

    def reject_shares(self, code: int = 23, reason: str = "Rejected by the lab pool") -> None:
        """From now on every valid share is answered with error `code` (a rejected burst)."""
        self.rejecting = (code, reason)

    def accept_shares(self) -> None:
        """Valid shares are accepted again."""
        self.rejecting = None

    def answered(self, outcome: str) -> int:
        """Shares of `outcome` whose verdict reached the miner (what its own counts can show)."""
        with self._lock:
            return sum(1 for s in self.shares if s.outcome == outcome and s.answered)

    def accepted(self, miner: int | None = None) -> list[ShareCheck]:
        with self._lock:
            return [s for s in self.shares if s.outcome == "accepted"
                    and (miner is None or s.miner == miner)]


