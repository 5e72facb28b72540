"""Replay protection that survives kill -9: last accepted seq per kid, recent ids with their acks.

The state is a small JSON file written atomically (temp file, fsync, rename, fsync of the folder)
before an accepted command is applied or acked, so a restart never reopens a replay window. The
folder it lives in is checked before the agent goes online (`check_state_dir`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def _dumps(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"), sort_keys=True)


class Encoded(str):
    """JSON text that `StateFile.save` puts in as it is: a large part of a document encoded
    once and kept (`ReplayGuard.encoded`), not again on every save."""


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
        """Write `data` as JSON; its `Encoded` values go in as they are."""
        text = _dumps({k: v for k, v in data.items() if not isinstance(v, Encoded)})
        parts = [f"{_dumps(k)}:{v}" for k, v in sorted(data.items()) if isinstance(v, Encoded)]
        if parts:
            text = text[:-1] + ("," if len(text) > 2 else "") + ",".join(parts) + "}"
        self.write_bytes(text.encode("utf-8"))

    def write_bytes(self, blob: bytes) -> None:
        """Replace the file with `blob`, or raise OSError and leave it as it was.

        The bytes go to a temp file beside it, created anew with `mode` (never one left by a
        crash or by someone else, which another reader may hold open), written whole however
        short the writes, synced, then renamed over the file; the folder is synced last. The
        common case costs no more system calls than that: the folder is made, and a stale temp
        file removed, only when the create says so (a fleet of devices saves on every command)."""
        folder = os.path.dirname(self.path) or "."
        tmp = os.path.join(folder, os.path.basename(self.path) + ".tmp")
        fd = self._create(folder, tmp)
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
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def _create(self, folder: str, tmp: str) -> int:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        try:
            return os.open(tmp, flags, self.mode)
        except FileExistsError:  # left by a crash, or someone else's: never written into
            os.unlink(tmp)
        except FileNotFoundError:  # no folder yet
            os.makedirs(folder, exist_ok=True)
        return os.open(tmp, flags, self.mode)

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
        # each recent entry's JSON text, with the entry it was made from (entries are replaced,
        # never changed in place, so the same tuple means the same text)
        self._rows: dict[bytes, tuple[tuple[bytes, int, dict[str, Any]], str]] = {}

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

    def record(self, kid: bytes, cmd_id: bytes, seq: int,
               ack: dict[str, Any]) -> Callable[[], None]:
        """Take an accepted command; returns what undoes exactly that (its state not saved)."""
        last = self.last_seq.get(kid)
        # an id seen already (never after `lookup` said "new"): keep the whole order to undo
        recent = OrderedDict(self.recent) if cmd_id in self.recent else None
        self.last_seq[kid] = max(seq, -1 if last is None else last)
        self.recent[cmd_id] = (kid, seq, dict(ack))
        self.recent.move_to_end(cmd_id)
        dropped = []
        while len(self.recent) > self.recent_max:
            dropped.append(self.recent.popitem(last=False))

        def undo() -> None:
            if last is None:
                del self.last_seq[kid]
            else:
                self.last_seq[kid] = last
            if recent is not None:
                self.recent = recent
                return
            del self.recent[cmd_id]
            for old_id, entry in reversed(dropped):
                self.recent[old_id] = entry
                self.recent.move_to_end(old_id, last=False)
        return undo

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

    def encoded(self) -> Encoded:
        """`to_json()` as JSON text; each recent entry is encoded once, when it changes (up to
        `recent_max` entries are written with every command)."""
        rows = {}
        for cmd_id, entry in self.recent.items():
            row = self._rows.get(cmd_id)
            if row is None or row[0] is not entry:
                kid, seq, ack = entry
                row = (entry, _dumps({"id": cmd_id.hex(), "kid": kid.hex(), "seq": seq,
                                      "ack": _ack_to_json(ack)}))
            rows[cmd_id] = row
        self._rows = rows
        head = _dumps({"floor_ms": self.floor_ms,
                       "last_seq": {kid.hex(): seq for kid, seq in self.last_seq.items()}})
        return Encoded(f'{head[:-1]},"recent":[{",".join(text for _, text in rows.values())}]}}')

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
