"""`gridminer site`: the site controller, the whole site as one grid resource (spec section 7).

    gridminer site --broker URL --site S --operator-key GRID_PUB.pem --kid GRID_KID
                   --key SITE_KEY.pem --key-kid SITE_KID --state-dir DIR
                   [--insecure-no-tls] [--ramp-w-s R] [--meter-topic TOPIC]

The grid operator's public key and kid verify the commands the site takes (on
PREFIX/S/site/cmd); the site's private key and kid sign the commands it sends its devices, which
trust that key. Once it has learned the fleet it prints one line on stdout,
`site S online as PREFIX/S/site: N devices, max W W, ramp R W/s`, and logs on stderr. A bad
flag or file is one line on stderr and exit status 2; SIGINT/SIGTERM publish the site's offline
status and exit 0 (the devices hold their commands until these lapse). When the grid link gives
up for good (another client holds device `site`), the controller stops dispatching, says why in
one line on stderr and exits 3, as the device agent does, so that a supervisor restarts it; the
devices hold their last commands until these lapse, then move to their own defaults.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from agent.errors import GridLinkError
from agent.grid.contract import CLIENT_ID_RE, NAME_RE, PREFIX


def configure(parser: argparse.ArgumentParser) -> None:
    p = parser
    p.add_argument("--broker", required=True, metavar="URL",
                   help="the site broker: mqtts://HOST:8883 (mqtt:// on loopback)")
    p.add_argument("--site", required=True, metavar="S")
    p.add_argument("--operator-key", required=True, metavar="GRID_PUB.pem",
                   help="the grid operator's public key: verifies the commands the site takes")
    p.add_argument("--kid", required=True, metavar="GRID_KID", help="its key id")
    p.add_argument("--key", required=True, metavar="SITE_KEY.pem",
                   help="the site's private key: signs the commands to the devices")
    p.add_argument("--key-kid", required=True, metavar="SITE_KID", help="its key id")
    p.add_argument("--state-dir", required=True, metavar="DIR",
                   help="replay state, birth and seq counters (kept across restarts)")
    p.add_argument("--insecure-no-tls", action="store_true",
                   help="plain MQTT to a non-loopback broker (lab only)")
    p.add_argument("--ramp-w-s", type=float, metavar="R",
                   help="the site's ramp limit, W/s (default: the devices' limits together)")
    p.add_argument("--meter-topic", metavar="TOPIC",
                   help="the site meter's readings (default: the sum of device telemetry)")
    p.add_argument("--prefix", default=PREFIX, help=f"topic prefix (default {PREFIX})")
    p.add_argument("--client-id", metavar="ID",
                   help="its MQTT client id (default: its device id, site); on a broker that "
                        "several sites share, one that names the site, e.g. S.site")
    p.add_argument("--ca", metavar="FILE", help="CA certificate of the broker (mqtts)")
    p.add_argument("--username")
    p.add_argument("--password-file", metavar="FILE")
    p.add_argument("--insecure-dev", action="store_true",
                   help="accept keys and password files readable by others (lab only)")
    p.add_argument("--log-level", default="INFO",
                   choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    _bridge_flags(p)


def _fail(text: str) -> int:
    print(f"gridminer site: {text}", file=sys.stderr, flush=True)
    return 2


def _check_args(args: argparse.Namespace) -> None:
    """ValueError for a flag no file needs to be read for."""
    for name, value in (("--site", args.site), ("--kid", args.kid), ("--key-kid", args.key_kid)):
        if not value or not value.strip():
            raise ValueError(f"{name} is empty")
    if not NAME_RE.match(args.site):
        raise ValueError(f"--site {args.site!r} must match [A-Za-z0-9_-]{{1,64}}")
    if args.ramp_w_s is not None and not (args.ramp_w_s >= 1 and args.ramp_w_s < float("inf")):
        raise ValueError(f"--ramp-w-s {args.ramp_w_s:g}: a ramp limit is 1 W/s or more")
    topic = args.meter_topic
    if topic is not None and (not topic or any(c in topic for c in "+#\x00")):
        raise ValueError(f"--meter-topic {topic!r}: one topic, without wildcards")
    if args.client_id is not None and not CLIENT_ID_RE.match(args.client_id):
        raise ValueError(f"--client-id {args.client_id!r} must match [A-Za-z0-9._:-]{{1,128}}")
    if args.kid == args.key_kid:
        raise ValueError("--kid and --key-kid are the same: the site signs with a key of its own")


def build(args: argparse.Namespace) -> Any:
    """The controller from the flags, every file checked; GridLinkError/ValueError say what is
    wrong. Nothing connects yet."""
    from agent.grid.link import GridLink, LinkSettings
    from agent.grid.session import load_operator_keys
    from agent.grid.trust import check_private_file, check_state_dir
    from agent.site.client import BrokerOptions
    from agent.site.controller import SiteController, SiteSettings
    from agent.site.fleet_client import FleetClient
    from agent.site.sequence import SeqBlock
    from agent.site.signer import CommandSigner

    _check_args(args)
    state_dir = Path(args.state_dir)
    check_state_dir(state_dir, args.insecure_dev)
    keys = load_operator_keys([(args.kid, args.operator_key)], args.insecure_dev)
    signer = CommandSigner.from_file(args.key, args.key_kid, args.prefix, args.insecure_dev)
    link = GridLink(LinkSettings(
        args.broker, args.site, "site", prefix=args.prefix, client_id=args.client_id,
        state_dir=str(state_dir),
        ca_file=args.ca, username=args.username, password_file=args.password_file,
        insecure_no_tls=args.insecure_no_tls, insecure_dev=args.insecure_dev))
    password = None
    if args.password_file:
        check_private_file(args.password_file, "password file", args.insecure_dev)
        password = Path(args.password_file).read_text(encoding="utf-8").strip()
    settings = SiteSettings(args.site, args.prefix, args.ramp_w_s, args.meter_topic)
    topics = SiteController.fleet_topics(args.site, args.prefix, args.meter_topic)
    fleet = FleetClient(BrokerOptions(args.broker, ca_file=args.ca, username=args.username,
                                      password=password, client_id=f"{args.site}.site-dispatch"),
                        topics)
    seq = SeqBlock(state_dir / "site-seq.json", signer.kid)
    return SiteController(settings, link, fleet, signer, seq, keys, state_dir)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=getattr(logging, args.log_level),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    if args.write_bridge:
        return _write_bridge(args)
    try:
        controller = build(args)
    except (GridLinkError, ValueError) as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(f"{exc.filename or ''}: {exc.strerror or exc}")
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()
        controller.wake.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}

    def on_online(summary: dict[str, Any]) -> None:
        print(f"site {args.site} online as {args.prefix}/{args.site}/site: "
              f"{summary['devices']} devices, max {summary['max_w']} W, "
              f"ramp {summary['ramp_max_w_s']} W/s", flush=True)

    controller.on_online = on_online
    try:
        controller.run(stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if controller.fatal is not None:
        from agent.app import EXIT_DEVICE_ID_TAKEN

        print(f"gridminer site: {controller.fatal}; stopped dispatching, the devices hold their "
              "commands until these lapse", file=sys.stderr, flush=True)
        return EXIT_DEVICE_ID_TAKEN
    return 0


def _bridge_flags(p: argparse.ArgumentParser) -> None:
    """--write-bridge: write the site broker's bridge to a central broker and exit."""
    g = p.add_argument_group("bridge to a central broker (docs/site-brokers.md)")
    g.add_argument("--write-bridge", metavar="FILE",
                   help="write the site broker's bridge section to FILE (0600) and exit")
    g.add_argument("--central", metavar="URL", help="the central broker: mqtts://HOST:8883")
    g.add_argument("--central-ca", metavar="FILE", help="CA certificate of the central broker")
    g.add_argument("--central-cert", metavar="FILE", help="the bridge's client certificate")
    g.add_argument("--central-key", metavar="FILE", help="its private key")
    g.add_argument("--central-username", metavar="NAME")
    g.add_argument("--central-password-file", metavar="FILE")
    g.add_argument("--central-session-expiry-s", type=int, metavar="S",
                   help="keep the central session S seconds after a drop (Mosquitto >= 2.1)")
    g.add_argument("--central-not-mosquitto", action="store_true",
                   help="the central broker is not Mosquitto (no try_private)")


def _write_bridge(args: argparse.Namespace) -> int:
    from agent.errors import ConfigError
    from agent.grid.trust import check_private_file
    from agent.site.bridge import bridge_config, write_bridge

    if not args.central:
        return _fail("--write-bridge needs --central URL")
    try:
        password = None
        if args.central_password_file:
            check_private_file(args.central_password_file, "password file", args.insecure_dev)
            password = Path(args.central_password_file).read_text(encoding="utf-8").strip()
        text = bridge_config(
            args.site, args.central, prefix=args.prefix, ca_file=args.central_ca,
            cert_file=args.central_cert, key_file=args.central_key,
            username=args.central_username, password=password,
            try_private=not args.central_not_mosquitto,
            session_expiry_s=args.central_session_expiry_s,
            insecure_no_tls=args.insecure_no_tls)
        path = write_bridge(args.write_bridge, text)
    except (ConfigError, GridLinkError) as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(f"{exc.filename or ''}: {exc.strerror or exc}")
    print(f"bridge of site {args.site} to {args.central} written to {path}", flush=True)
    return 0
