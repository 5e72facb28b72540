"""The operator's signing side: command maps signed as COSE_Sign1 (Ed25519, the topic as AAD) and
the issuer's `seq`, kept strictly increasing per key id across processes (spec section 3)."""

from __future__ import annotations

import fcntl
import hashlib
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.errors import GridLinkError
from agent.grid import cose
from agent.grid.contract import ALL, ANY_DEVICE, PREFIX, VERSION
from agent.grid.replay import StateFile
from agent.grid.trust import check_private_file


def kid_for(public_key: Any) -> str:
    """The default key id of a public key: 16 hex digits of the SHA-256 of its raw bytes."""
    return hashlib.sha256(cose.raw_public(public_key)).hexdigest()[:16]


@dataclass(frozen=True)
class SignedCommand:
    """One signed command ready to publish."""

    topic: str
    payload: bytes  # the COSE_Sign1
    command: dict[str, Any]  # the command map that was signed

    @property
    def id(self) -> bytes:
        return bytes(self.command["id"])

    @property
    def seq(self) -> int:
        return int(self.command["seq"])

    @property
    def exp_ms(self) -> int:
        return int(self.command["exp"])


class CommandSigner:
    """Builds and signs command maps for one operator key (spec section 3)."""

    def __init__(self, key: Ed25519PrivateKey, kid: str | bytes, prefix: str = PREFIX) -> None:
        self.key = key
        self.kid = kid.encode("utf-8") if isinstance(kid, str) else bytes(kid)
        self.prefix = prefix

    @classmethod
    def from_file(cls, path: str | Path, kid: str | None = None, prefix: str = PREFIX,
                  insecure_dev: bool = False) -> CommandSigner:
        check_private_file(path, "operator private key", insecure_dev)
        try:
            key = cose.load_private_key(Path(path).read_bytes())
        except (OSError, ValueError) as exc:
            raise GridLinkError(f"operator key {path}: {exc}") from exc
        return cls(key, kid or kid_for(key.public_key()), prefix)

    def topic(self, site: str, dev: str | None) -> str:
        target = ALL if dev in (None, ANY_DEVICE) else dev
        return f"{self.prefix}/{site}/{target}/cmd"

    def build(
        self,
        site: str,
        dev: str | None,
        op: str,
        *,
        seq: int,
        now_ms: int | None = None,
        validity_s: float = 900.0,
        power_w: int | None = None,
        ramp_w_s: int | None = None,
        nbf_ms: int | None = None,
        fallback: str | None = None,
        cmd_id: bytes | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> SignedCommand:
        """A signed command; `dev` None (or "*") targets every device of the site."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        cmd: dict[str, Any] = {
            "v": VERSION,
            "id": cmd_id if cmd_id is not None else secrets.token_bytes(16),
            "seq": seq,
            "site": site,
            "dev": ANY_DEVICE if dev in (None, ANY_DEVICE) else dev,
            "iat": now_ms,
        }
        if nbf_ms is not None:
            cmd["nbf"] = nbf_ms
        cmd["exp"] = now_ms + round(validity_s * 1000)
        cmd["op"] = op
        if power_w is not None:
            cmd["power_w"] = int(power_w)
        if ramp_w_s is not None:
            cmd["ramp_w_s"] = int(ramp_w_s)
        if fallback is not None:
            cmd["fallback"] = fallback
        cmd.update(extra or {})
        topic = self.topic(site, dev)
        return SignedCommand(topic, self.sign(topic, cmd), cmd)

    def sign(self, topic: str, cmd: Mapping[str, Any]) -> bytes:
        """Sign any map (tests craft bad ones on purpose)."""
        return cose.sign(cbor2.dumps(dict(cmd)), self.key, self.kid, topic.encode("utf-8"))


class SeqCounter:
    """The issuer's `seq` per kid: max(last + 1, now in ms), kept in a locked JSON file so several
    operator processes sharing a key never reuse a value (and a lost file only jumps forward)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def next(self, kid: bytes) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_name(self.path.name + ".lock")
        with open(lock_path, "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            store = StateFile(self.path)
            try:
                data = store.load() or {}
            except ValueError:
                data = {}
            last = int(data.get(kid.hex(), -1))
            seq = max(last + 1, int(time.time() * 1000))
            data[kid.hex()] = seq
            store.save(data)
            return seq
