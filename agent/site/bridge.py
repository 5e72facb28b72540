"""The site broker's bridge to a central broker (Mosquitto `connection` section): the grid
operator talks to the central broker only, and reaches the site as device `site` (spec §7).

Only the site controller's topics cross: its `cmd` comes in; its retained `status`, its
`telemetry` and its acks (`ack` and the operator's Response Topics under `ack/`) go out.
Device topics, the site-wide `all/cmd` and device telemetry stay on the site broker, so a
central operator cannot bypass the site controller and the uplink carries one device's traffic.

The bridge speaks MQTT 5 (Response Topic, Correlation Data and Message Expiry cross with the
messages) and reconnects with jittered backoff; its client id on the central broker is unique per
site. `cleansession false` keeps the site side of its session (status and acks published during
an outage wait on the site broker). On the central side an MQTT 5 bridge's session lasts
`session_expiry_s` after the link drops, so that a command sent during a short outage waits
there (and is still checked for expiry when it lands); that needs Mosquitto 2.1 or later
(`bridge_session_expiry_interval`): a Mosquitto 2.0 bridge starts a fresh central session at
every reconnect, and a command sent while the link was down is not delivered. `notifications`
publishes the link's state (1/0, the 0 as the bridge's Will) on
`$SYS/broker/connection/<client id>/state`, or on `notification_topic` for a central broker that
keeps `$SYS` to itself.

`bridge_config(site, central_url, ...)` returns the section (include it in the site broker's
mosquitto.conf, e.g. from an `include_dir`); `write_bridge(path, text)` writes it 0600, since a
remote password may be in it.
"""

from __future__ import annotations

import os
from pathlib import Path

from agent.errors import ConfigError, GridLinkError
from agent.grid.broker import parse_broker_url
from agent.grid.contract import NAME_RE, PREFIX, SITE_DEVICE

#: (topic under PREFIX/SITE/site, direction, QoS): the contract's QoS per topic (spec §2)
BRIDGED = (
    ("cmd", "in", 1),
    ("status", "out", 1),
    ("telemetry", "out", 0),
    ("ack/#", "out", 1),  # `ack` itself and the operators' Response Topics under it
)


def bridge_config(
    site: str,
    central_url: str,
    *,
    prefix: str = PREFIX,
    client_id: str | None = None,
    ca_file: str | None = None,
    cert_file: str | None = None,
    key_file: str | None = None,
    username: str | None = None,
    password: str | None = None,
    try_private: bool = True,
    session_expiry_s: int | None = None,
    notification_topic: str | None = None,
    keepalive_s: int = 30,
    restart_s: tuple[int, int] = (2, 30),
    insecure_no_tls: bool = False,
) -> str:
    """The bridge section for `site` to the central broker at `central_url` (mqtt:// or
    mqtts://). TLS options apply to mqtts (`ca_file` default: the system's CA directory);
    plain mqtt:// to a non-loopback host needs `insecure_no_tls` (the contract wants TLS on
    every non-loopback link). `try_private` is Mosquitto's bridge extension: keep it for a
    Mosquitto central broker, turn it off for others. `session_expiry_s` (Mosquitto >= 2.1)
    keeps the central session across outages. ConfigError says what is wrong."""
    if not NAME_RE.match(site):
        raise ConfigError(f"site {site!r} must match [A-Za-z0-9_-]{{1,64}}")
    try:
        address = parse_broker_url(central_url)
    except GridLinkError as exc:
        raise ConfigError(str(exc)) from exc
    if address.websockets:
        raise ConfigError(f"central broker {central_url!r}: a Mosquitto bridge speaks MQTT over "
                          "TCP only (mqtt:// or mqtts://), not websockets")
    if not address.tls and not address.loopback and not insecure_no_tls:
        raise ConfigError(f"central broker {central_url!r} is not on loopback: use mqtts:// "
                          "(or insecure_no_tls for a lab)")
    if not address.tls and (ca_file or cert_file or key_file):
        raise ConfigError("CA/certificate files given for a plain mqtt:// central broker")
    if (cert_file is None) != (key_file is None):
        raise ConfigError("a client certificate needs both its certificate and its key file")
    if password is not None and username is None:
        raise ConfigError("a password needs a username")
    if session_expiry_s is not None and not 0 <= session_expiry_s <= 0xFFFFFFFF:
        raise ConfigError(f"session expiry {session_expiry_s} s: 0 to 4294967295")
    if keepalive_s < 5:
        raise ConfigError(f"keepalive {keepalive_s} s: Mosquitto's minimum is 5 s")
    base_s, cap_s = restart_s
    if not 1 <= base_s <= cap_s:
        raise ConfigError(f"restart backoff {restart_s}: need 1 <= base <= cap seconds")
    client_id = client_id or f"gridminer-bridge-{site}"
    host = f"[{address.host}]" if ":" in address.host else address.host
    values = {"prefix": prefix, "client id": client_id, "CA file": ca_file,
              "certificate file": cert_file, "key file": key_file, "username": username,
              "password": password, "notification topic": notification_topic}
    for name, value in values.items():
        if value is not None and (not value or any(c.isspace() for c in value)):
            raise ConfigError(f"{name} {value!r}: empty or holds whitespace, which a "
                              "mosquitto.conf value cannot")
    if any(c in prefix for c in "+#/"):
        raise ConfigError(f"prefix {prefix!r}: one topic level, no wildcards")

    lines = [
        f"# gridminer: site {site} bridged to {address.scheme}://{host}:{address.port}",
        f"connection gridminer-{site}",
        f"address {host}:{address.port}",
        f"remote_clientid {client_id}",
        "bridge_protocol_version mqttv50",
        "cleansession false",
        "start_type automatic",
        f"restart_timeout {base_s} {cap_s}",
        f"keepalive_interval {keepalive_s}",
        f"try_private {'true' if try_private else 'false'}",
        "bridge_outgoing_retain true",
        "notifications true",
    ]
    if notification_topic is not None:
        lines.append(f"notification_topic {notification_topic}")
    if session_expiry_s is not None:
        lines.append(f"bridge_session_expiry_interval {session_expiry_s}")
    if username is not None:
        lines.append(f"remote_username {username}")
    if password is not None:
        lines.append(f"remote_password {password}")
    if address.tls:
        lines.append(f"bridge_cafile {ca_file}" if ca_file else "bridge_capath /etc/ssl/certs")
        if cert_file and key_file:
            lines += [f"bridge_certfile {cert_file}", f"bridge_keyfile {key_file}"]
        lines.append("bridge_insecure false")  # the central's certificate must name its host
    tree = f"{prefix}/{site}/{SITE_DEVICE}"
    lines += [f"topic {tree}/{sub} {direction} {qos}" for sub, direction, qos in BRIDGED]
    return "\n".join(lines) + "\n"


def write_bridge(path: str | os.PathLike[str], text: str) -> Path:
    """Write a bridge section readable by its owner only (it may hold the remote password)."""
    out = Path(path)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.chmod(out, 0o600)
    return out
