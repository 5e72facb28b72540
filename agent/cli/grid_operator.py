"""`gridminer operator`: the grid operator's command line.

    gridminer operator keygen --key op.pem
    gridminer operator setpoint|curtail|resume|standby|ping --site S (--device D | --all) ...
    gridminer operator watch --site S [--once | --count N] [--json]

Exit status: 0 every addressed device accepted, 1 one rejected, 2 one did not answer in time
(watch --once/--count: no device of the site has reported), 3 an error here (key, broker,
arguments).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.errors import GridLinkError
from agent.grid import cose
from agent.grid.contract import FALLBACKS, PREFIX
from agent.grid.replay import StateFile
from agent.grid.trust import check_private_file
from agent.site.client import BrokerOptions, Operator
from agent.site.signer import CommandSigner, SeqCounter, kid_for
from agent.site.view import watch

EXIT_OK, EXIT_REJECTED, EXIT_TIMEOUT, EXIT_ERROR = 0, 1, 2, 3


UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
#: the devices' default maximum validity (exp - iat); a longer command comes back `expired`
DEVICE_MAX_VALIDITY = "24h"


def parse_duration(text: str) -> float:
    """'90s', '15m', '2h', '1d' -> seconds; a number without a unit is refused."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not m:
        raise ValueError(f"duration {text!r}: use e.g. 90s, 15m, 2h")
    if not m.group(2):
        raise ValueError(f"duration {text!r} has no unit: write {text}s, {text}m or {text}h")
    return float(m.group(1)) * UNITS_S[m.group(2)]


def command_fields(args: argparse.Namespace, now_s: float) -> dict[str, Any]:
    """What to sign, checked first against what every device will refuse (ValueError says why,
    before anything is signed): power and ramp out of the contract's range, a validity over the
    devices' maximum. `--for` counts from `--at` when both are given."""
    if getattr(args, "power_w", None) is not None and args.power_w < 0:
        raise ValueError(f"--power-w {args.power_w}: a power target is 0 W or more")
    if args.ramp_w_s is not None and args.ramp_w_s < 1:
        raise ValueError(f"--ramp-w-s {args.ramp_w_s}: a ramp limit is 1 W/s or more")
    valid_for_s = parse_duration(args.valid_for)
    if valid_for_s <= 0:
        raise ValueError(f"--for {args.valid_for}: a command must be valid for some time")
    lead_s = 0.0 if args.at is None else args.at - now_s
    if lead_s < 0:
        raise ValueError(f"--at {args.at:.0f} is {-lead_s:.0f} s in the past")
    validity_s = lead_s + valid_for_s
    max_s = parse_duration(args.max_validity)
    if validity_s > max_s:
        raise ValueError(
            f"--for {args.valid_for}" + (f" from --at in {lead_s:.0f} s" if lead_s else "")
            + f" is {validity_s / 3600:.1f} h from now, over the devices' maximum validity "
            f"({args.max_validity}; a device refuses it as `expired`). If the devices allow "
            "more, say so with --max-validity")
    fields: dict[str, Any] = {"validity_s": validity_s}
    if args.action == "setpoint":
        fields["power_w"] = args.power_w
    if args.ramp_w_s is not None:
        fields["ramp_w_s"] = args.ramp_w_s
    if args.fallback is not None:
        fields["fallback"] = args.fallback
    if args.at is not None:
        fields["nbf_ms"] = int(args.at * 1000)
    return fields


def describe_ack(device: str, ack: dict[str, Any], rtt_s: float | None = None) -> str:
    """One ack as a person reads it: `d1: accepted, 40 W, limited by ramp, eta 1.3 s`."""
    parts = [str(ack.get("result", "?"))]
    if ack.get("reason"):
        parts[0] += f" ({ack['reason']})"
    if ack.get("applied_w") is not None:
        parts.append(f"{ack['applied_w']:g} W")
    if ack.get("limited_by"):
        parts.append(f"limited by {ack['limited_by']}")
    if ack.get("eta_ms") is not None:
        parts.append(f"eta {ack['eta_ms'] / 1000:.1f} s")
    if rtt_s is not None:
        parts.append(f"round trip {rtt_s * 1000:.0f} ms")
    text = f"{device}: " + ", ".join(parts)
    return text + (f": {ack['detail']}" if ack.get("detail") else "")


def _common(p: argparse.ArgumentParser, needs_key: bool) -> None:
    p.add_argument("--broker", default="mqtt://127.0.0.1:1883", metavar="URL",
                   help="mqtt://HOST:PORT or mqtts://HOST:PORT")
    p.add_argument("--prefix", default=PREFIX)
    p.add_argument("--ca", metavar="FILE", help="CA certificate of the broker (mqtts)")
    p.add_argument("--cert", metavar="FILE", help="client certificate (mqtts)")
    p.add_argument("--client-key", metavar="FILE", help="client certificate key (mqtts)")
    p.add_argument("--username")
    p.add_argument("--password-file", metavar="FILE")
    p.add_argument("--timeout", type=float, default=5.0, metavar="S",
                   help="seconds to wait for acks (watch: total time, default forever)")
    p.add_argument("--site", required=True)
    p.add_argument("--insecure-dev", action="store_true",
                   help="accept a private key or password file readable by others (lab only)")
    if needs_key:
        p.add_argument("--key", required=True, metavar="PRIVATE.pem", help="operator private key")
        p.add_argument("--kid", help="key id (default: derived from the key)")
        p.add_argument("--seq-file", metavar="FILE",
                       help="persisted seq counter (default: PRIVATE.pem.seq.json)")


def _target(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--device", help="one device")
    group.add_argument("--all", action="store_true", help="every device of the site")
    p.add_argument("--for", dest="valid_for", default="15m", metavar="DURATION",
                   help="how long the command holds, from now or from --at: 90s, 15m, 2h "
                        "(default 15m)")
    p.add_argument("--max-validity", default=DEVICE_MAX_VALIDITY, metavar="DURATION",
                   help=f"the devices' maximum validity (default {DEVICE_MAX_VALIDITY})")
    p.add_argument("--json", action="store_true", help="acks as JSON lines")
    p.add_argument("--ramp-w-s", type=int, metavar="R", help="ramp limit, W/s")
    p.add_argument("--fallback", choices=FALLBACKS)
    p.add_argument("--at", type=float, metavar="EPOCH_S", help="not before (Unix seconds)")


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = sub.add_parser("keygen", help="make an Ed25519 operator key pair, print its kid")
    p.add_argument("--key", required=True, metavar="PRIVATE.pem", help="private key to write")
    p.add_argument("--pub", metavar="PUBLIC.pem", help="public key (default: PRIVATE.pub.pem)")
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    p = sub.add_parser("setpoint", help="set a device's power target")
    _common(p, True)
    _target(p)
    p.add_argument("--power-w", type=int, required=True, metavar="W")
    for name, text in (("curtail", "hold the deepest ready-to-resume load"),
                       ("resume", "return to the configured default target"),
                       ("standby", "power the chain down"),
                       ("ping", "ack only (latency probe)")):
        p = sub.add_parser(name, help=text)
        _common(p, True)
        _target(p)
    p = sub.add_parser("watch", help="live table of a site's devices")
    _common(p, False)
    p.add_argument("--once", action="store_true", help="print one table and exit")
    p.add_argument("--count", type=int, metavar="N", help="print N tables and exit")
    p.add_argument("--interval", type=float, default=1.0, metavar="S")
    p.add_argument("--json", action="store_true", help="JSON lines instead of a table")


def _broker_options(args: argparse.Namespace) -> BrokerOptions:
    password = None
    if args.password_file:
        check_private_file(args.password_file, "password file", args.insecure_dev)
        password = Path(args.password_file).read_text(encoding="utf-8").strip()
    return BrokerOptions(args.broker, args.ca, args.cert, args.client_key, args.username, password)


def keygen(args: argparse.Namespace) -> int:
    key_path = Path(args.key)
    pub_path = Path(args.pub) if args.pub else key_path.with_name(key_path.stem + ".pub.pem")
    for path in (key_path, pub_path):
        if path.exists() and not args.force:
            print(f"{path} exists (use --force to overwrite)", file=sys.stderr)
            return EXIT_ERROR
    key = Ed25519PrivateKey.generate()
    # Each file is replaced whole by a new one (0600 from its first byte): a reader of an old,
    # looser file never sees the new key, and the public key is not writable by group/others.
    try:
        StateFile(key_path, mode=0o600).write_bytes(cose.private_pem(key))
        StateFile(pub_path, mode=0o644).write_bytes(cose.public_pem(key.public_key()))
    except OSError as exc:
        print(f"gridminer operator: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(f"private key {key_path} (0600), public key {pub_path}", file=sys.stderr)
    print(kid_for(key.public_key()))
    return EXIT_OK


def run(args: argparse.Namespace) -> int:
    if args.action == "keygen":
        return keygen(args)
    try:
        options = _broker_options(args)
        if args.action == "watch":
            with Operator(options).connect(args.timeout if args.timeout else 5.0) as op:
                count = 1 if args.once else args.count
                printed = watch(op, args.site, args.prefix, sys.stdout, count=count,
                                interval_s=args.interval, as_json=args.json,
                                timeout_s=None if count is None else max(args.timeout, 1.0) * 2,
                                err=sys.stderr)
                return EXIT_OK if printed or count is None else EXIT_TIMEOUT
        build = command_fields(args, time.time())
        signer = CommandSigner.from_file(args.key, args.kid, args.prefix, args.insecure_dev)
        seq = SeqCounter(args.seq_file or f"{args.key}.seq.json")
        with Operator(options, signer, seq).connect(args.timeout) as op:
            online = set(op.online_devices(args.site))
            nobody = args.device not in online if args.device is not None else not online
            wait_s = 0.0 if nobody else args.timeout
            sent_s = time.monotonic()
            signed, replies = op.send(args.site, None if args.all else args.device, args.action,
                                      timeout_s=wait_s, expect=None if args.device else
                                      sorted(online), **build)
            missing = sorted(op.last_wanted - {r.device for r in replies})
            if args.all and not online:
                missing = ["?"]
            offline = set(missing) - online
    except (GridLinkError, ValueError, OSError) as exc:
        print(f"gridminer operator: {exc}", file=sys.stderr)
        return EXIT_ERROR
    for reply in replies:
        rtt = reply.received_s - sent_s if args.action == "ping" else None
        print(json.dumps(reply.to_json(), sort_keys=True) if args.json
              else describe_ack(reply.device, reply.ack, rtt))
    for device in missing:
        why = (f"no device of site {args.site} is online" if device == "?" else
               "not online: the broker holds the command for it until it lapses"
               if device in offline else f"no answer within {args.timeout:g} s")
        if args.json:
            print(json.dumps({"device": device, "id": signed.id.hex(), "seq": signed.seq,
                              "result": "timeout", "detail": why}, sort_keys=True))
        else:
            print(why if device == "?" else f"{device}: {why}")
    if missing:
        return EXIT_TIMEOUT
    return EXIT_OK if all(r.ok for r in replies) else EXIT_REJECTED
