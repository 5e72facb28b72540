"""Replay protection that survives kill -9: last accepted seq per kid, recent ids with their acks.

The state is a small JSON file written atomically (temp file, fsync, rename, fsync of the folder)
before an accepted command is applied or acked, so a restart never reopens a replay window. The
folder it lives in is checked before the agent goes online (`check_state_dir`).
"""

from __future__ import annotations

import errno
import json
import logging
import os
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class StateFile:
    """A file replaced atomically on every save: a JSON document (`save`) or bytes (`write_bytes`).

    `mode` is the file's exact permission bits (the umask does not loosen or tighten them);
    `writer` is os.write, a seam for tests (short writes, ENOSPC, EIO)."""

    def __init__(self, path: str | os.PathLike[str],
                 writer: Callable[[int, memoryview], int] = os.write, mode: int = 0o600) -> None:
        self.path = Path(path)
        self.writer = writer
        self.mode = mode

    def load(self) -> dict[str, Any] | None:
        """The saved document, None if there is none; ValueError if it is unreadable."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"{self.path}: not a JSON object")
        return data

    def save(self, data: dict[str, Any]) -> None:
        self.write_bytes(json.dumps(data, separators=(",", ":"), sort_keys=True).encode("utf-8"))

    def write_bytes(self, blob: bytes) -> None:
        """Replace the file with `blob`, or raise OSError and leave it as it was.

        The bytes go to a temp file beside it, created anew with `mode` (never one left by a
        crash or by someone else, which another reader may hold open), written whole however
        short the writes, synced, then renamed over the file; the folder is synced last."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, self.mode)
        try:
            try:
                os.fchmod(fd, self.mode)
                rest = memoryview(blob)
                while rest:
                    written = self.writer(fd, rest)
                    if written <= 0:
                        raise OSError(errno.EIO, "the write took no bytes")
                    rest = rest[written:]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def quarantine(self) -> Path:
        """Move an unreadable file aside (kept for inspection) and return its new name."""
        bad = self.path.with_name(self.path.name + ".corrupt")
        os.replace(self.path, bad)
        return bad


def _ack_to_json(ack: dict[str, Any]) -> dict[str, Any]:
    """An ack as stored: bytes become {"hex": ...} so that `_ack_from_json` restores them."""
    return {k: ({"hex": v.hex()} if isinstance(v, bytes) else v) for k, v in ack.items()}


def _ack_from_json(ack: dict[str, Any]) -> dict[str, Any]:
    return {k: (bytes.fromhex(v["hex"]) if isinstance(v, dict) else v) for k, v in ack.items()}


class ReplayGuard:
    """Last accepted `seq` per `kid` and the acks of the most recent accepted ids.

    `floor_ms`: set when the state starts afresh (first start, a state file lost or unreadable):
    commands issued before this wall time are replays for every kid with no accepted seq yet.
    """

    def __init__(self, recent_max: int = 256) -> None:
        self.recent_max = recent_max
        self.last_seq: dict[bytes, int] = {}
        self.recent: OrderedDict[bytes, tuple[bytes, int, dict[str, Any]]] = OrderedDict()
        self.floor_ms: int | None = None

    def lookup(
        self, kid: bytes, cmd_id: bytes, seq: int, iat_ms: int
    ) -> tuple[str, dict[str, Any] | None]:
        """("new", None) | ("duplicate", original ack) | ("replayed", None)."""
        seen = self.recent.get(cmd_id)
        if seen is not None:
            seen_kid, seen_seq, ack = seen
            if seen_kid == kid and seen_seq == seq:
                return "duplicate", dict(ack)
            return "replayed", None  # an id is used once
        last = self.last_seq.get(kid)
        if last is not None and seq <= last:
            return "replayed", None
        if last is None and self.floor_ms is not None and iat_ms < self.floor_ms:
            return "replayed", None
        return "new", None

    def record(self, kid: bytes, cmd_id: bytes, seq: int, ack: dict[str, Any]) -> None:
        self.last_seq[kid] = max(seq, self.last_seq.get(kid, -1))
        self.recent[cmd_id] = (kid, seq, dict(ack))
        self.recent.move_to_end(cmd_id)
        while len(self.recent) > self.recent_max:
            self.recent.popitem(last=False)

    def update_ack(self, cmd_id: bytes, ack: dict[str, Any]) -> None:
        seen = self.recent.get(cmd_id)
        if seen is not None:
            self.recent[cmd_id] = (seen[0], seen[1], dict(ack))

    def to_json(self) -> dict[str, Any]:
        return {
            "last_seq": {kid.hex(): seq for kid, seq in self.last_seq.items()},
            "recent": [
                {"id": i.hex(), "kid": k.hex(), "seq": s, "ack": _ack_to_json(a)}
                for i, (k, s, a) in self.recent.items()
            ],
            "floor_ms": self.floor_ms,
        }

    def load_json(self, data: dict[str, Any]) -> None:
        self.last_seq = {bytes.fromhex(k): int(v) for k, v in data.get("last_seq", {}).items()}
        self.recent.clear()
        for row in data.get("recent", []):
            self.recent[bytes.fromhex(row["id"])] = (
                bytes.fromhex(row["kid"]),
                int(row["seq"]),
                _ack_from_json(row["ack"]),
            )
        floor = data.get("floor_ms")
        self.floor_ms = int(floor) if floor is not None else None
