"""Where a pool is and who the agent is there: `stratum+tcp://` / `stratum+ssl://` URLs, the
worker's credentials and per-pool options, and which `client.reconnect` targets are followed."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from agent.errors import ConfigError

SCHEMES = {"stratum+tcp": False, "stratum+ssl": True, "stratum+tls": True}
#: the password sent when none is configured (pools ignore it; `x` is the custom)
DEFAULT_PASSWORD = "x"
#: the bits BM1366/68/70 can roll (0xA4 holds mask >> 13, 16 bits) and BIP 320 leaves free
ROLLABLE_MASK = 0x1FFFE000

_URL_RE = re.compile(r"^([a-z+]+)://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):(\d{1,5})/?$")


def parse_url(url: str, where: str = "pool.url") -> tuple[str, int, bool]:
    """(host, port, tls) of a pool URL; ConfigError naming `where` when it is not
    stratum+tcp://HOST:PORT or stratum+ssl://HOST:PORT."""
    m = _URL_RE.match(url.strip())
    if not m or m.group(1) not in SCHEMES:
        raise ConfigError(f"{where}: {url!r} is not stratum+tcp://HOST:PORT or "
                          f"stratum+ssl://HOST:PORT")
    port = int(m.group(3))
    if not 1 <= port <= 65535:
        raise ConfigError(f"{where}: port {port} is out of range [1, 65535]")
    return m.group(2).strip("[]"), port, SCHEMES[m.group(1)]


@dataclass(frozen=True)
class PoolEndpoint:
    """One pool of the ordered list: address, worker, password and options."""

    url: str
    host: str
    port: int
    tls: bool
    user: str
    password: str = DEFAULT_PASSWORD
    ca_file: str | None = None
    version_rolling: bool = True
    suggest_difficulty: float | None = None
    extranonce_subscribe: bool = False

    @classmethod
    def from_url(cls, url: str, user: str, **options: Any) -> PoolEndpoint:
        host, port, tls = parse_url(url)
        return cls(url, host, port, tls, user, **options)

    @classmethod
    def from_config(cls, pool: Any, where: str = "pool") -> PoolEndpoint:
        """From a `[[pool]]` entry (agent.config.PoolConfig); reads its password file
        (ConfigError when it cannot)."""
        password = pool.password
        if pool.password_file is not None:
            try:
                password = Path(pool.password_file).read_text(encoding="utf-8").strip("\r\n")
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"{where}.password_file: cannot read {pool.password_file}: "
                                  f"{getattr(exc, 'strerror', None) or exc}") from None
        return cls.from_url(pool.url, pool.user,
                            password=DEFAULT_PASSWORD if password is None else password,
                            ca_file=pool.ca_file, version_rolling=pool.version_rolling,
                            suggest_difficulty=pool.suggest_difficulty,
                            extranonce_subscribe=pool.extranonce_subscribe)

    @property
    def address(self) -> str:
        """host:port as a log line shows it."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def redirected(self, host: str | None, port: int | None) -> PoolEndpoint:
        """This endpoint moved by `client.reconnect` (None: keep the host or the port)."""
        return replace(self, host=host or self.host, port=port or self.port)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def redirect_allowed(current: str, target: str | None) -> bool:
    """Whether `client.reconnect` may send the agent from host `current` to `target`: the same
    host, or a name in the same domain (what follows the first label, cgminer's rule). A pool
    cannot send a miner's hashrate to someone else's server."""
    if target is None or target.lower() == current.lower():
        return True
    if _is_ip(current) or _is_ip(target):
        return False
    cur_domain = current.lower().partition(".")[2]
    new_domain = target.lower().partition(".")[2]
    return bool(cur_domain) and "." in cur_domain and cur_domain == new_domain
