"""Where the HTTP listener binds: `HOST:PORT`, `[V6]:PORT` or a bare `PORT` (loopback)."""

from __future__ import annotations

import ipaddress
import re

from agent.errors import ConfigError

LOOPBACK_HOST = "127.0.0.1"
_HOST_PORT = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9_.-]*)):(?P<port>\d+)$")


def parse_listen(text: str, what: str = "http.listen") -> tuple[str, int]:
    """(host, port) of a listen address; a bare port or an empty host binds to loopback.
    ConfigError naming `what` for anything else."""
    spec = str(text).strip()
    if spec.isdigit():
        host, port_text = LOOPBACK_HOST, spec
    else:
        m = _HOST_PORT.match(spec)
        if m is None:
            raise ConfigError(f"{what}: {text!r} is not HOST:PORT, [IPV6]:PORT or PORT")
        host = m.group("v6") or m.group("host") or LOOPBACK_HOST
        port_text = m.group("port")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ConfigError(f"{what}: port {port} is out of range [1, 65535]")
    return host, port


def is_loopback(host: str) -> bool:
    """The address is reachable only from this machine (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
