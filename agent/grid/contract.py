"""The MQTT contract's names and numbers (`spec/grid-protocol.md`), defined once.

Both sides of the contract read them from here: the device (command checks, acks, telemetry,
status), the governor (modes and limits it reports) and the operator side (signer, site view).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

VERSION = 1  # `v` of every map (§3.2, §4, §5, §6)
PREFIX = "gridminer"  # default topic prefix (§2)
MAX_PAYLOAD_BYTES = 4096  # a command over this is `too_large` (§3.3)
SEQ_MODULO = 2**32  # telemetry `seq` wraps here (§6)

NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # SITE and DEVICE (§2)
CLIENT_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")  # an MQTT client id other than the device id
ALL = "all"  # the site-wide command topic's device part (§2)
SITE_DEVICE = "site"  # the site controller's device id (§7)
RESERVED_DEVICES = (ALL, SITE_DEVICE)  # no device may use these ids (§7)
ANY_DEVICE = "*"  # `dev` of a command on the site-wide topic (§3.2)

OPS = ("setpoint", "curtail", "resume", "standby", "ping")  # §3.2
FALLBACKS = ("hold_until_exp", "default_now")  # §3.2, §3.4
DEFAULT_FALLBACK = FALLBACKS[0]
REASONS = (  # §3.3, checked in this order
    "too_large",
    "malformed",
    "bad_signature",
    "wrong_target",
    "unsupported_version",
    "expired",
    "replayed",
    "out_of_range",
    # Added compatibly: the codes above keep their meaning and order; these two may come after.
    "unavailable",  # the device cannot act on commands now: its clock is not trusted (checked
    #                 before `expired`) or its replay state cannot be saved (after `out_of_range`)
    "schedule_full",  # a command for later, while `max_scheduled` already wait for their `nbf`
)
RESULTS = ("accepted", "scheduled", "duplicate", "rejected")  # §4
OK_RESULTS = RESULTS[:3]  # what an operator counts as taken
LIMITS = ("thermal", "power_cap", "ramp", "caps")  # `limited_by` (§4)
MODES = ("starting", "mining", "curtailed", "standby", "tripped")  # `mode` (§5, §6)
CAPS_FIELDS = ("min_w", "max_w", "ramp_max_w_s", "chips", "chip_model", "hashrate_max_ghs")  # §5

CONTENT_TYPE_COSE = 'application/cose; cose-type="cose-sign1"'  # commands
CONTENT_TYPE_CBOR = "application/cbor"  # acks, status, telemetry


@dataclass(frozen=True)
class Topics:
    """The topic names of one device (§2)."""

    site: str
    device: str
    prefix: str = PREFIX

    def _topic(self, leaf: str, device: str | None = None) -> str:
        return f"{self.prefix}/{self.site}/{device or self.device}/{leaf}"

    @property
    def cmd(self) -> str:
        return self._topic("cmd")

    @property
    def site_cmd(self) -> str:
        return self._topic("cmd", ALL)

    @property
    def ack(self) -> str:
        return self._topic("ack")

    @property
    def status(self) -> str:
        return self._topic("status")

    @property
    def telemetry(self) -> str:
        return self._topic("telemetry")

    def validate(self) -> None:
        """Raise ValueError for a site or device id the contract does not allow."""
        for name, value in (("site", self.site), ("device", self.device)):
            if not NAME_RE.match(value):
                raise ValueError(f"{name} {value!r} must match [A-Za-z0-9_-]{{1,64}}")
        if self.device == ALL:
            raise ValueError("device id 'all' is reserved for the site topic")


MAX_RESPONSE_TOPIC_BYTES = 256  # a Response Topic (§2) longer than this is not answered on


def response_topic_problem(topics: Topics, topic: str) -> str | None:
    """Why a command's Response Topic must not carry its ack (None when it may): it must be the
    device's ack topic or lie below it (the ACL of §1 lets the device write nothing else), and be
    a topic one can publish on: no wildcard, no NUL, valid UTF-8, at most 256 bytes."""
    if topic != topics.ack and not topic.startswith(topics.ack + "/"):
        return "outside this device's ack topic"
    if any(c in topic for c in "+#\x00"):
        return "holds a wildcard or NUL"
    try:
        size = len(topic.encode("utf-8"))
    except UnicodeEncodeError:
        return "not UTF-8"
    if size > MAX_RESPONSE_TOPIC_BYTES:
        return f"over {MAX_RESPONSE_TOPIC_BYTES} bytes"
    return None
