"""The running agent, wired: ports, board link, chain detection and take-over, driver, governor,
runtime and the optional grid link, in the order a start on a hash board needs them.

`run_agent(config)` is what `gridminer agent` runs; its pieces (`open_serial`, `find_running_chain`,
`detect_chain`, `take_over`, `build_grid`, `wind_down_for`) are the seams the tests and benchmarks
use. Nothing here parses arguments or prints: errors are raised (`ConfigError`, `GridLinkError`,
`ChainError`, `BoardLinkError`) and the command line turns them into messages and exit codes.
"""

from __future__ import annotations

import importlib
import logging
import signal
import threading
from typing import Any

from agent.errors import BoardLinkError, ChainError

log = logging.getLogger("gridminer.agent")

#: pyserial URL schemes served by the lab emulator; `hil` registers them when imported
LAB_SCHEMES = ("asicemu://", "asicboard://")
#: a chip-fault reset waits at most two full ramps plus this for the load to come down
WIND_DOWN_SLACK_S = 5.0
PROBE_ATTEMPTS = 3


class AgentFailed(Exception):
    """The runtime stopped on a fatal error; `code` is the exit status it asks for."""

    def __init__(self, text: str, code: int) -> None:
        super().__init__(text)
        self.code = code


def open_serial(url: str, what: str, baudrate: int, timeout_s: float) -> Any:
    """A pyserial port by path or URL (`agent.chain.port.open_port`); the lab's emulator URLs
    load `hil` first."""
    from agent.chain.port import open_port

    if url.startswith(LAB_SCHEMES):
        importlib.import_module("hil")  # lab URL handlers; never needed on a real board
    return open_port(url, what, baudrate, timeout_s)


def build_grid(config: Any, runtime: Any, clock: Any) -> tuple[Any, Any]:
    """(GridSession, GridLink) from the [grid] section, wired to the runtime: accepted commands
    go to the governor, telemetry reads the runtime's snapshot, inbound messages wake the
    control thread. GridLinkError/ConfigError when keys, the broker URL or the state folder are
    unusable."""
    from agent.control.runtime import GovernorSink
    from agent.grid.link import GridLink, LinkSettings
    from agent.grid.session import GridPolicy, GridSession, load_operator_keys
    from agent.grid.trust import check_state_dir

    grid = config.grid
    check_state_dir(grid.state_dir, grid.insecure_dev)
    settings = LinkSettings.from_config(grid)
    link = GridLink(settings, clock)
    keys = load_operator_keys(grid.operator_keys, grid.insecure_dev)
    sink = GovernorSink(runtime.governor, on_apply=runtime.request_tick)
    session = GridSession(link, sink, keys, grid.state_dir, snapshot=runtime.snapshot,
                          policy=GridPolicy.from_config(grid), clock=clock)
    link.on_inbound = runtime.notify_grid
    return session, link

def detect_chain(config: Any, chain_port: Any, board: Any, clock: Any,
                 running: Any = None) -> Any:
    """`config` with the [chain] family and chip count it leaves out taken from the chain
    (`running`, a chain found hashing, as it answered; else probed, at the fast baud first and
    after a reset through the board link only when nothing runs); unchanged when both are given.
    ChainError when no chip answers, ConfigError when what answered is out of range."""
    from agent.chain.takeover import ProbeResult, probe_chain
    from agent.config import with_chain
    from firmware_bridge.chips import PROFILES

    unpinned = config.chain_unpinned
    if not unpinned:
        return config
    family = None if "family" in unpinned else config.chain.family
    for attempt in range(1, PROBE_ATTEMPTS + 1):
        try:
            if running is not None and running.family in PROFILES:
                found = ProbeResult(running.family, running.chip_id, running.count,
                                    running.addresses, running)
            else:
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


def find_running_chain(config: Any, chain_port: Any, board: Any,
                       clock: Any) -> tuple[Any, Any]:
    """(board sample, RunningChain or None): a chain the board powers that answers a chip-ID
    read at the fast baud is already hashing (the agent restarted); it must not be reset."""
    from agent.chain.takeover import read_running_chain

    try:
        sample = board.read_sample()
    except BoardLinkError as exc:
        log.warning("no board sample at start (%s); bringing the chain up cold", exc)
        return None, None
    if not getattr(sample, "chain_powered", False):
        return sample, None
    family = None if "family" in config.chain_unpinned else config.chain.family
    running = read_running_chain(chain_port, clock, family)
    if running is not None:
        log.info("the chain is running: %d x %s at %.2f MHz, board at %.1f W", running.count,
                 running.family, running.freq_mhz, sample.power_w)
    return sample, running


def take_over(config: Any, running: Any, sample: Any, chain_port: Any, board: Any, clock: Any,
              driver: Any, governor: Any, runtime: Any) -> bool:
    """Adopt a running chain without a reset (True). When it is not what the config says, wind
    it down at the ramp limit first, so that the cold bring-up's reset drops no load (False)."""
    from agent.chain.settings import START_FREQ_MHZ
    from agent.chain.takeover import wind_down

    problem = running.problem(config.chain.family, config.chain.chips)
    if problem is None:
        now = clock.monotonic()
        freq = running.freq_mhz
        vcore = float(getattr(sample, "vcore_mv", 0) or 0)
        power = float(getattr(sample, "power_w", 0) or 0)
        governor.adopt(now, freq, vcore, power, sample)
        driver.adopt(now, running)
        runtime.adopt(now, freq)
        return True
    if running.freq_mhz <= START_FREQ_MHZ + 0.5:
        log.info("the chain answers at the fast rate at its reset clock; bringing it up cold")
        return False
    log.warning("the running chain cannot be taken over (%s): winding it down at the ramp "
                "limit before a reset", problem)
    model = governor.model
    temp = governor.envelope.check.hottest_c
    vcore = float(getattr(sample, "vcore_mv", 0) or 0) or governor.curve_vcore(running.freq_mhz)
    overhead = model.params.overhead_w
    # the model is for the configured chain: scale its chain power to what the board draws now
    modelled = model.power_w(running.freq_mhz, vcore, temp) - overhead
    measured = float(getattr(sample, "power_w", 0) or 0) - overhead
    scale = min(4.0, max(1.0, measured / modelled)) if modelled > 0 and measured > 0 else 1.0

    def power_w(freq_mhz: float) -> float:
        return overhead + scale * (model.power_w(freq_mhz, vcore, temp) - overhead)

    wind_down(chain_port, clock, running.family, running.freq_mhz, power_w,
              governor.ramp_max_w_s, tick=board.heartbeat)
    return False


def wind_down_for(governor: Any) -> Any:
    """How the driver brings the load down before a chip-fault reset: through the governor, at
    its ramp, to its lowest frequency (`agent.chain.recovery.WindDown`)."""
    from agent.chain.recovery import WindDown

    return WindDown(governor.power_at, lambda: governor.envelope.check.power_w,
                    governor.ramp_max_w_s, governor.min_freq_mhz,
                    timeout_s=WIND_DOWN_SLACK_S
                    + 2.0 * governor.max_power_w / governor.ramp_max_w_s)


def run_agent(config: Any) -> int:
    """Run the agent until SIGINT/SIGTERM (0) or a fatal runtime error (its exit status)."""
    from agent.chain.driver import ChainDriver
    from agent.chain.settings import ChainSettings
    from agent.chain.work import LocalWorkSource
    from agent.clock import SystemClock
    from agent.control.governor import Governor
    from agent.control.runtime import Runtime

    clock = SystemClock()
    wake = threading.Event()
    closers: list[Any] = []
    chain_port = open_serial(config.chain.port, "chain", config.chain.baud, 0.05)
    closers.append(chain_port.close)
    try:
        from agent.chain.board import BoardClient

        board_port = open_serial(config.board.port, "board", 115200, 0.02)
        closers.append(board_port.close)
        board = BoardClient(board_port, psu_efficiency=config.board.psu_efficiency)
        sample, running = find_running_chain(config, chain_port, board, clock)
        config = detect_chain(config, chain_port, board, clock, running)
        if config.grid.insecure_dev:
            log.warning("INSECURE DEVELOPMENT MODE (grid.insecure_dev): operator keys are "
                        "optional and secret files others can read are accepted; never use "
                        "this on a production site")
        settings = ChainSettings.from_config(config.chain, config.envelope)
        driver = ChainDriver(chain_port, settings, clock, LocalWorkSource(clock), board=board,
                             wake=wake)
        governor = Governor(config, clock)
        driver.wind_down = wind_down_for(governor)
        runtime = Runtime(clock, driver, board, governor,
                          period_s=config.governor.control_period_s,
                          status_period_s=config.log.status_period_s, wake=wake,
                          on_stop=[board_port.close])
        if running is not None:
            take_over(config, running, sample, chain_port, board, clock, driver, governor,
                      runtime)
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
        raise AgentFailed(runtime.error, code)
    return code
