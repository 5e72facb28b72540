"""`gridminer agent`: run the edge agent on a hash board.

    gridminer agent --config agent.toml
    gridminer agent --chain /dev/ttyUSB0 --board /dev/ttyACM0 [--family F --chips N]
                    [--target-w 20] [--nonce-difficulty D]
                    [--broker mqtts://HOST:8883 --site S --device D --operator-key PUB.pem
                     --kid KID --state-dir DIR [--insecure-no-tls]]

Flags override the file. When neither the file nor the flags give the chip family or count, the
agent resets the chain through the board link, probes it and runs with what answered. A bad
config or flag is one line on stderr and exit status 2; a chain that is not what the config says
(or that does not answer the probe) is exit status 1; SIGINT/SIGTERM idle the chain and exit 0.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import threading
from typing import Any

from agent.errors import BoardLinkError, ChainError, ConfigError, GridLinkError

log = logging.getLogger("gridminer.agent")

#: pyserial URL schemes served by the lab emulator; `hil` registers them when imported
LAB_SCHEMES = ("asicemu://", "asicboard://")


def configure(parser: argparse.ArgumentParser) -> None:
    from agent.config import add_arguments

    add_arguments(parser)


def _fail(text: str, code: int) -> int:
    print(f"gridminer agent: {text}", file=sys.stderr, flush=True)
    return code


def open_serial(url: str, what: str, baudrate: int, timeout_s: float) -> Any:
    """A pyserial port by path or URL; the lab's emulator URLs load `hil` first."""
    import serial

    if url.startswith(LAB_SCHEMES):
        importlib.import_module("hil")  # lab URL handlers; never needed on a real board
    try:
        return serial.serial_for_url(url, baudrate=baudrate, timeout=timeout_s,
                                     write_timeout=2.0)
    except (serial.SerialException, OSError, ValueError) as exc:
        raise ConfigError(f"{what} port {url}: cannot open ({exc})") from None


def build_grid(config: Any, runtime: Any, clock: Any) -> tuple[Any, Any]:
    """(GridSession, GridLink) from the [grid] section, wired to the runtime: accepted commands
    go to the governor, telemetry reads the runtime's snapshot, inbound messages wake the
    control thread. GridLinkError/ConfigError when keys or the broker URL are unusable."""
    from agent.grid import GridPolicy, GridSession, load_operator_keys
    from agent.gridlink import GridLink, LinkSettings
    from agent.runtime import GovernorSink

    grid = config.grid
    settings = LinkSettings.from_config(grid)
    link = GridLink(settings, clock)
    keys = load_operator_keys(grid.operator_keys, grid.insecure_dev)
    session = GridSession(link, GovernorSink(runtime.governor), keys, grid.state_dir,
                          snapshot=runtime.snapshot, policy=GridPolicy.from_config(grid),
                          clock=clock)
    link.on_inbound = runtime.notify_grid
    return session, link


PROBE_ATTEMPTS = 3


def detect_chain(config: Any, chain_port: Any, board: Any, clock: Any) -> Any:
    """`config` with the [chain] family and chip count it leaves out taken from the chain
    (probed after a reset through the board link); unchanged when both are given.
    ChainError when no chip answers, ConfigError when what answered is out of range."""
    from agent.config import with_chain
    from agent.driver import probe_chain

    unpinned = config.chain_unpinned
    if not unpinned:
        return config
    family = None if "family" in unpinned else config.chain.family
    for attempt in range(1, PROBE_ATTEMPTS + 1):
        try:
            found = probe_chain(chain_port, clock, family, board)
            break
        except ChainError as exc:
            if attempt == PROBE_ATTEMPTS:
                raise ChainError(f"probing the chain on {config.chain.port}: {exc}") from None
            log.warning("probing the chain on %s: %s; trying again", config.chain.port, exc)
    config = with_chain(
        config,
        found.family if "family" in unpinned else config.chain.family,
        found.count if "chips" in unpinned else config.chain.chips,
    )
    log.info("chain detected on %s: %d x %s (chip id 0x%04X); running with %d x %s",
             config.chain.port, found.count, found.family, found.chip_id, config.chain.chips,
             config.chain.family)
    return config


def run(args: argparse.Namespace) -> int:
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
        return _run(config)
    except ConfigError as exc:
        return _fail(str(exc), 2)
    except GridLinkError as exc:
        return _fail(f"grid: {exc}", 2)
    except (ChainError, BoardLinkError) as exc:
        return _fail(str(exc), 1)


def _run(config: Any) -> int:
    from agent.clock import SystemClock
    from agent.driver import ChainDriver, ChainSettings
    from agent.governor import Governor
    from agent.runtime import Runtime
    from agent.work import LocalWorkSource

    clock = SystemClock()
    wake = threading.Event()
    closers: list[Any] = []
    chain_port = open_serial(config.chain.port, "chain", config.chain.baud, 0.05)
    closers.append(chain_port.close)
    try:
        from agent.board import BoardClient

        board_port = open_serial(config.board.port, "board", 115200, 0.02)
        closers.append(board_port.close)
        board = BoardClient(board_port)
        config = detect_chain(config, chain_port, board, clock)
        if config.grid.insecure_dev:
            log.warning("INSECURE DEVELOPMENT MODE (grid.insecure_dev): operator keys are "
                        "optional and secret files others can read are accepted; never use "
                        "this on a production site")
        settings = ChainSettings.from_config(config.chain, config.envelope)
        driver = ChainDriver(chain_port, settings, clock, LocalWorkSource(clock), board=board,
                             wake=wake)
        governor = Governor(config, clock)
        runtime = Runtime(clock, driver, board, governor,
                          period_s=config.governor.control_period_s,
                          status_period_s=config.log.status_period_s, wake=wake,
                          on_stop=[board_port.close])
        if config.grid.broker_url:
            session, link = build_grid(config, runtime, clock)
            runtime.grid = session
            runtime.on_stop.insert(0, link.stop)
            link.start()
    except BaseException:
        for close in reversed(closers):
            close()
        raise

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %d: stopping", signum)
        runtime.request_stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        log.info("agent running: chain %s (%s x%d), board %s, target %.1f W%s",
                 config.chain.port, config.chain.family, config.chain.chips, config.board.port,
                 config.governor.default_target_w,
                 f", grid {config.grid.broker_url}" if config.grid.broker_url else "")
        code = runtime.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if code != 0 and runtime.error:
        return _fail(runtime.error, code)
    return code
