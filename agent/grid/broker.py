"""Where the broker is, and the paho socket plumbing that the device's link and the operator's
client share."""

from __future__ import annotations

import ipaddress
import logging
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from agent.errors import GridLinkError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BrokerAddress:
    scheme: str
    host: str
    port: int

    @property
    def tls(self) -> bool:
        return self.scheme in ("mqtts", "wss")

    @property
    def websockets(self) -> bool:
        return self.scheme in ("ws", "wss")

    @property
    def loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host.strip("[]")).is_loopback
        except ValueError:
            return False


def parse_broker_url(url: str) -> BrokerAddress:
    """mqtt://HOST[:PORT], mqtts://HOST[:PORT] (also ws:// and wss://); GridLinkError otherwise."""
    parts = urlsplit(url)
    defaults = {"mqtt": 1883, "mqtts": 8883, "ws": 80, "wss": 443}
    if parts.scheme not in defaults or not parts.hostname:
        raise GridLinkError(f"broker URL {url!r}: expected mqtt://HOST:PORT or mqtts://HOST:PORT")
    try:
        port = parts.port or defaults[parts.scheme]
    except ValueError as exc:
        raise GridLinkError(f"broker URL {url!r}: bad port") from exc
    return BrokerAddress(parts.scheme, parts.hostname, port)


def no_delay(client: Any, userdata: Any, sock: Any) -> None:
    """TCP_NODELAY: an ack and its PUBACK leave at once instead of waiting out Nagle's
    algorithm against the broker's delayed ACK (about 40 ms per small packet)."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        pass


def release_sockets(client: Any) -> None:
    """Close the socket and paho's wake-up socket pair now rather than at garbage collection
    (paho 2.x keeps them until the client object is collected)."""
    reset = getattr(client, "_reset_sockets", None)
    try:
        sock = client.socket()
        if reset is not None:
            reset()
        elif sock is not None:
            sock.close()
    except OSError:
        pass
