"""`gridminer agent`: run the edge agent on a hash board.

    gridminer agent --config agent.toml
    gridminer agent --chain /dev/ttyUSB0 --board /dev/ttyACM0 [--family F --chips N]
                    [--target-w 20] [--nonce-difficulty D]
                    [--broker mqtts://HOST:8883 --site S --device D --operator-key PUB.pem
                     --kid KID --state-dir DIR [--insecure-no-tls]]
                    [--http HOST:PORT]

Flags override the file. `--http` serves the read-only AxeOS-compatible API and Prometheus
metrics (a bare port: loopback only). The home's broker ([home], [surplus]: Home Assistant, the
roof's surplus) is configured in the file.

When neither the file nor the flags give the chip family or count, the agent probes the chain
and runs with what answered. A chain that is already hashing (the agent was restarted: the board
powers it and it answers at the fast baud) is taken over without a reset, its load moved at the
ramp limit from where it is; one that answers but is not what the config says is wound down at
the ramp limit first, then reset and brought up. A bad config or flag is one line on stderr and
exit status 2; a chain that is not what the config says (or that does not answer the probe) is
exit status 1; SIGINT/SIGTERM idle the chain and exit 0.
"""

from __future__ import annotations

import argparse
import logging
import sys

from agent.errors import BoardLinkError, ChainError, ConfigError, GridLinkError


def configure(parser: argparse.ArgumentParser) -> None:
    from agent.config import add_arguments

    add_arguments(parser)


def _fail(text: str, code: int) -> int:
    print(f"gridminer agent: {text}", file=sys.stderr, flush=True)
    return code


def run(args: argparse.Namespace) -> int:
    from agent.app import AgentFailed, run_agent
    from agent.config import config_from_args

    try:
        config = config_from_args(args)
    except ConfigError as exc:
        return _fail(str(exc), 2)
    logging.basicConfig(
        level=getattr(logging, config.log.level, logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return run_agent(config)
    except AgentFailed as exc:
        return _fail(str(exc), exc.code)
    except ConfigError as exc:
        return _fail(str(exc), 2)
    except GridLinkError as exc:
        return _fail(f"grid: {exc}", 2)
    except (ChainError, BoardLinkError) as exc:
        return _fail(str(exc), 1)
