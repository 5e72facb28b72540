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


def _no_controls(value: str, where: str, what: str) -> None:
    """A worker name or password goes to the pool as it is: refuse one with a control character
    (a stray newline from a file or a shell); ConfigError naming `where`."""
    bad = next((c for c in value if ord(c) < 0x20 or ord(c) == 0x7F), None)
    if bad is not None:
        raise ConfigError(f"{where}: the {what} holds the control character {bad!r}")


def check_worker(user: str, where: str) -> None:
    """Refuse a worker name that is empty, has blanks around it or control characters in it;
    ConfigError naming `where`."""
    if not user.strip():
        raise ConfigError(f"{where}: the worker name is empty; give the one the pool knows you "
                          "by (often ADDRESS.WORKER)")
    if user != user.strip():
        raise ConfigError(f"{where}: the worker name {user!r} has blanks around it; remove them")
    _no_controls(user, where, "worker name")


def read_password(path: str, where: str) -> str:
    """The password in file `path`: its one line, without the line end. ConfigError naming
    `where` when the file cannot be read, is empty or holds more than one line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: cannot read {path}: "
                          f"{getattr(exc, 'strerror', None) or exc}") from None
    password = text.rstrip("\r\n")
    if not password:
        raise ConfigError(f"{where}: {path} is empty (leave password_file out to send the "
                          f"default password {DEFAULT_PASSWORD!r})")
    if "\n" in password:
        raise ConfigError(f"{where}: {path} holds more than one line; the password is its "
                          "only line")
    _no_controls(password, where, "password")
    return password


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
        """From a `[[pool]]` entry (agent.config.PoolConfig): its URL and worker checked, its
        password file read. ConfigError naming `where` and the key when one is unusable."""
        check_worker(pool.user, f"{where}.user")
        password = pool.password
        if pool.password_file is not None:
            password = read_password(pool.password_file, f"{where}.password_file")
        elif password is not None:
            _no_controls(password, f"{where}.password", "password")
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
