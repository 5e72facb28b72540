"""The running agent, wired: ports, board link, chain detection and take-over, driver, governor,
runtime, the optional grid link, HTTP listener and home broker, in the order a start on a hash
board needs them.

`run_agent(config)` is what `gridminer agent` runs; its pieces (`preflight`, `open_serial`,
`read_bridge`, `acknowledge_old_trip`, `find_running_chain`, `detect_chain`, `take_over`,
`build_grid`, `wind_down_for`, `start_surface`, `view_publisher`, `build_home`) are the seams
the tests and benchmarks use. Nothing here parses
arguments or prints: errors are raised (`ConfigError`, `GridLinkError`, `ChainError`,
`BoardLinkError`) and the command line turns them into messages and exit codes.

The start, in order: every check that needs no hardware (`preflight`: the power target, the
pools' settings, the state folder, the broker URL and TLS files, the operator keys), before any
port is opened; the bridge's limits (INFO) against the envelope; a trip the bridge latched
before this agent started acknowledged (it is history, not an ongoing fault); a chain found
hashing taken over, else one the config leaves open probed, its power brought up through the
board first when a stop or a trip cut it (and cut again if the start fails after all).
"""

from __future__ import annotations

import importlib
import logging
import signal
import threading
from dataclasses import dataclass
from typing import Any

from agent.errors import BoardLinkError, ChainError, ConfigError

log = logging.getLogger("gridminer.agent")

#: pyserial URL schemes served by the lab emulator; `hil` registers them when imported
LAB_SCHEMES = ("asicemu://", "asicboard://")
#: a chip-fault reset waits at most two full ramps plus this for the load to come down
WIND_DOWN_SLACK_S = 5.0
PROBE_ATTEMPTS = 3
#: exit status when the grid link gave up because another client holds this device id
EXIT_DEVICE_ID_TAKEN = 3
#: after the board powered the chain for a probe, before the first frame
POWER_SETTLE_S = 0.25
#: the most chips a probe can find: a power target above the rating of that chain fails at once
MAX_CHIPS = 256


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


@dataclass(frozen=True)
class GridParts:
    """The grid link's pieces, checked and made before any port is opened (`prepare_grid`)."""

    link: Any  # agent.grid.link.GridLink, not started
    keys: Any  # {kid bytes: Ed25519 public key}


def prepare_grid(config: Any, clock: Any = None) -> GridParts:
    """The [grid] section's checks, the ones the link and the session run (nothing repeated
    here): the state folder (`agent.grid.trust`), the broker URL, transport and TLS files
    (`GridLink`'s security checks; nothing connects yet), the operator keys
    (`load_operator_keys`). GridLinkError naming what is wrong."""
    from agent.grid.link import GridLink, LinkSettings
    from agent.grid.session import load_operator_keys
    from agent.grid.trust import check_state_dir

    grid = config.grid
    check_state_dir(grid.state_dir, grid.insecure_dev)
    link = GridLink(LinkSettings.from_config(grid), clock)
    keys = load_operator_keys(grid.operator_keys, grid.insecure_dev)
    return GridParts(link, keys)


def check_target(config: Any) -> None:
    """The power target against the chain: `agent.config` checks it once the chip count is
    known; with the count left to the probe, a target above the rating of the largest chain the
    probe could find (MAX_CHIPS of the family, or of any family) fails now, with the config's
    own message. ConfigError."""
    from agent.config import with_chain
    from firmware_bridge.chips import FAMILIES

    if "chips" not in config.chain_unpinned:
        return  # checked when the config was read
    families = FAMILIES if "family" in config.chain_unpinned else (config.chain.family,)
    refusals: list[ConfigError] = []
    for family in families:
        try:
            with_chain(config, family, MAX_CHIPS)
            return
        except ConfigError as exc:
            refusals.append(exc)
    raise ConfigError(f"{refusals[-1]} (the rating of {MAX_CHIPS} x {families[-1]}, the "
                      "largest chain a probe can find)")


def preflight(config: Any, clock: Any = None) -> GridParts | None:
    """Every check that needs no hardware, before any port is opened, so that a bad flag or
    file fails at once with its own message and leaves the board untouched: the power target
    (`check_target`), the pools' settings (`agent.pool.pool_endpoints`: URL, worker, password
    file, CA file), then the grid link's (`prepare_grid`). Returns the grid's pieces (None
    without [grid] broker_url). ConfigError / GridLinkError."""
    from agent.pool import pool_endpoints

    check_target(config)
    pool_endpoints(config)
    if not config.grid.broker_url:
        return None
    return prepare_grid(config, clock)


def build_grid(config: Any, runtime: Any, clock: Any,
               parts: GridParts | None = None) -> tuple[Any, Any]:
    """(GridSession, GridLink) from the [grid] section (its pieces from `preflight`, else made
    here), wired to the runtime: accepted commands go to the governor, telemetry reads the
    runtime's snapshot, inbound messages wake the control thread. GridLinkError/ConfigError when
    keys, the broker URL or the state folder are unusable."""
    from agent.control.runtime import GovernorSink
    from agent.grid.session import GridPolicy, GridSession

    grid = config.grid
    if parts is None:
        parts = prepare_grid(config, clock)
    sink = GovernorSink(runtime.governor, on_apply=runtime.request_tick)
    session = GridSession(parts.link, sink, parts.keys, grid.state_dir,
                          snapshot=runtime.snapshot, policy=GridPolicy.from_config(grid),
                          clock=clock)
    parts.link.on_inbound = runtime.notify_grid
    parts.link.on_fatal = lambda text: runtime.fail(f"grid: {text}", EXIT_DEVICE_ID_TAKEN)
    return session, parts.link


def start_surface(config: Any) -> Any:
    """The [http] listener (`agent.surface.server.SurfaceServer`), bound and serving before the
    board or the chain is touched, so that a busy or forbidden address fails at once
    (ConfigError); it answers "starting" until it is given the runtime's view (`latest`).
    None without [http] listen."""
    if config.http.listen is None:
        return None
    from agent.surface.listen import parse_listen
    from agent.surface.server import SurfaceServer

    host, port = parse_listen(config.http.listen)
    return SurfaceServer(host, port, lambda: None).start()


def view_publisher(config: Any, runtime: Any) -> Any:
    """The runtime's figures as the outward surfaces show them: a view published after the
    control ticks (`agent.surface.view.ViewPublisher`)."""
    from agent.surface.view import Identity, ViewPublisher

    publisher = ViewPublisher(runtime, Identity.from_config(config))
    runtime.on_tick.append(publisher.refresh)
    return publisher


def build_home(config: Any, runtime: Any, publisher: Any, clock: Any) -> tuple[Any, Any]:
    """(HomeSession, HomeLink) from the [home] and [surplus] sections, the session serviced
    after every control tick (after `publisher`'s); the link is not started. ConfigError when
    the broker URL or its files are unusable."""
    from agent.home.discovery import Topics
    from agent.home.link import HomeLink
    from agent.home.meter import MeterReader
    from agent.home.session import HomeSession, HomeSettings
    from agent.home.surplus import SurplusFollower, SurplusSettings
    from agent.home.target import LocalTarget, grid_in_charge

    home, surplus = config.home, config.surplus
    topics = Topics.for_device(home.discovery_prefix, home.device_id,
                               home.base_topic or f"gridminer/{home.device_id}")
    subscriptions = [topics.birth]
    if home.local_control:
        subscriptions += [topics.set_power, topics.set_mining]
        log.warning("local control from the home broker is on (home.local_control): unsigned "
                    "commands set the power limit and mining, inside the envelope and never "
                    "over a signed grid command")
    if surplus.meter_topic is not None:
        subscriptions.append(surplus.meter_topic)
    link = HomeLink(home.broker_url, f"gridminer-{home.device_id}", topics.availability,
                    tuple(subscriptions), home.username, home.password_file, home.ca_file)
    caps = runtime.governor.caps()
    follower = None
    if surplus.meter_topic is not None:
        follower = SurplusFollower(
            SurplusSettings(margin_w=surplus.margin_w, rise_tau_s=surplus.rise_tau_s,
                            fall_tau_s=surplus.fall_tau_s, stale_s=surplus.stale_s,
                            dwell_s=surplus.dwell_s),
            float(caps["min_w"]), float(caps["max_w"]))
    target = LocalTarget(runtime.governor, config.governor.default_target_w, follower,
                         grid_in_charge(runtime))
    session = HomeSession(
        link, HomeSettings(device_id=home.device_id, name=home.name, topics=topics,
                           discovery=home.discovery, local_control=home.local_control,
                           meter_topic=surplus.meter_topic,
                           state_period_s=home.state_period_s),
        publisher.latest, target, clock,
        MeterReader(surplus.meter_field, surplus.meter_positive, surplus.meter_scale))
    runtime.on_tick.append(session.service)
    return session, link


def check_bridge(config: Any, info: dict[str, Any], port: str = "") -> None:
    """Refuse an envelope the bridge firmware would refuse or undercut (its INFO, the board
    link's limits): a core-voltage window wider than the bridge's SET_VCORE accepts, a hard chip
    or regulator limit at or above the bridge's own trip (it would cut the chain before the
    agent's envelope acts), a heartbeat time-out the agent cannot keep, a chip family other than
    the one the bridge parks on a trip. ConfigError naming the key and the bridge's value."""
    from agent.control.runtime import HEARTBEAT_PERIOD_S
    from firmware_bridge.link import INVALID_I16

    env = config.envelope
    where = f"the bridge on {port}" if port else "the bridge"
    lo, hi = info.get("vcore_min_mv"), info.get("vcore_max_mv")
    if hi is not None and env.max_vcore_mv > hi:
        raise ConfigError(f"envelope.max_vcore_mv: {env.max_vcore_mv} mV is above the "
                          f"{hi} mV {where} accepts (its vcore_max_mv); lower it")
    if lo is not None and env.min_vcore_mv < lo:
        raise ConfigError(f"envelope.min_vcore_mv: {env.min_vcore_mv} mV is below the "
                          f"{lo} mV {where} accepts (its vcore_min_mv); raise it")
    for key, limit_c, bridge_key in (
            ("max_chip_temp_hard_c", env.max_chip_temp_hard_c, "trip_temp_dc"),
            ("max_vr_temp_c", env.max_vr_temp_c, "vr_trip_temp_dc")):
        trip_dc = info.get(bridge_key)
        if trip_dc is not None and trip_dc != INVALID_I16 and limit_c * 10 >= trip_dc:
            raise ConfigError(f"envelope.{key}: {limit_c:g} C is not below the "
                              f"{trip_dc / 10:g} C at which {where} trips ({bridge_key}): "
                              "the bridge would cut the chain before the envelope acts")
    timeout_ms = info.get("heartbeat_timeout_ms")
    if timeout_ms is not None and timeout_ms < 2000 * HEARTBEAT_PERIOD_S:
        raise ConfigError(f"{where} trips after {timeout_ms} ms without a request "
                          f"(heartbeat_timeout_ms); the agent heartbeats every "
                          f"{HEARTBEAT_PERIOD_S:g} s: give the bridge at least "
                          f"{2000 * HEARTBEAT_PERIOD_S:.0f} ms")
    family = info.get("family")
    if family and "family" not in config.chain_unpinned and family != config.chain.family:
        raise ConfigError(f"chain.family: {config.chain.family}, but {where} is set up for "
                          f"{family} (a trip would park the chips with {family}'s PLL frame); "
                          "fix the config or the bridge's family")


def read_bridge(config: Any, board: Any) -> dict[str, Any]:
    """The bridge's INFO, checked against the config (`check_bridge`). BoardLinkError when the
    bridge does not answer (an agent that cannot reach its bridge at start does not know what
    it drives), ConfigError when the envelope does not fit it."""
    from firmware_bridge.link import PROTOCOL_VERSION

    try:
        info: dict[str, Any] = board.info()
    except BoardLinkError as exc:
        raise BoardLinkError(f"board link on {config.board.port}: the bridge firmware did not "
                             f"answer ({exc})") from None
    if info.get("protocol") != PROTOCOL_VERSION:
        raise BoardLinkError(f"board link on {config.board.port}: the bridge speaks protocol "
                             f"{info.get('protocol')}, the agent {PROTOCOL_VERSION}")
    check_bridge(config, info, config.board.port)
    log.info("bridge on %s: %s, chain power window %s-%s mV, chip trip at %.1f C, watchdog %d ms",
             config.board.port, info.get("family") or "?", info.get("vcore_min_mv"),
             info.get("vcore_max_mv"), (info.get("trip_temp_dc") or 0) / 10,
             info.get("heartbeat_timeout_ms") or 0)
    return info


def acknowledge_old_trip(board: Any) -> Any:
    """A trip the bridge latched before this agent started (typically `heartbeat_timeout`: the
    previous agent stopped or was killed and the bridge idled the chain after 5 s) is history,
    not an ongoing fault: acknowledge it (CLEAR_TRIP), so that the chain comes back at the ramp
    rather than after a trip hold the latch would never end. The bridge keeps a latch whose
    cause remains (too hot, a failed sensor); the agent then starts tripped like after any trip.
    Returns the board sample to start from (None when the bridge gives none)."""
    try:
        sample = board.read_sample()
    except BoardLinkError as exc:
        log.warning("no board sample at start (%s)", exc)
        return None
    reason = getattr(sample, "trip_reason", None)
    if getattr(sample, "bridge_state", None) != "tripped" or not reason:
        return sample
    try:
        board.clear_trip(reason)
    except BoardLinkError as exc:
        if "unknown_type" in str(exc):
            log.warning("the bridge latched %s before this agent started, and its firmware is "
                        "older than CLEAR_TRIP: update it (the latch clears only when the chain "
                        "is powered on)", reason)
        else:
            log.warning("the bridge latched %s before this agent started and keeps it (%s): "
                        "the agent starts tripped and returns once the cause is gone", reason,
                        exc)
        return sample
    log.info("the bridge latched %s before this agent started (bridge up %.0f s); acknowledged: "
             "the chain comes back at the ramp", reason, getattr(sample, "uptime_ms", 0) / 1000)
    try:
        return board.read_sample()
    except BoardLinkError:
        return sample


def power_for_probe(config: Any, board: Any, clock: Any) -> str | None:
    """The chain is unpowered (a stop or a trip cut it) and the config leaves it to the probe:
    power it through the board at the envelope's lowest core voltage. None when powered, else
    why not (a board whose chain power the agent cannot switch: the probe then finds the chain
    as it is)."""
    vcore = int(config.envelope.min_vcore_mv)
    try:
        board.set_vcore_mv(vcore)
        board.set_chain_power(True)
    except BoardLinkError as exc:
        log.warning("the chain is unpowered and the board did not power it (%s); probing it as "
                    "it is", exc)
        return str(exc)
    log.info("the chain is unpowered: powered it at %d mV through the board to probe it", vcore)
    clock.sleep(POWER_SETTLE_S)
    return None

def detect_chain(config: Any, chain_port: Any, board: Any, clock: Any,
                 running: Any = None, sample: Any = None,
                 bridge: dict[str, Any] | None = None) -> Any:
    """`config` with the [chain] family and chip count it leaves out taken from the chain
    (`running`, a chain found hashing, as it answered; else probed, at the fast baud first and
    after a reset through the board link only when nothing runs); unchanged when both are given.
    A chain the board `sample` reports unpowered is powered through the board first
    (`power_for_probe`), and powered off again when the detection fails. The config for the
    chain found is checked against the `bridge`'s INFO (`check_bridge`). ChainError when no
    chip answers, ConfigError when what answered is out of range."""
    unpinned = config.chain_unpinned
    if not unpinned:
        return config
    unpowered: str | None = None  # why the board did not power an unpowered chain
    powered_here = False
    if running is None and sample is not None and not getattr(sample, "chain_powered", True):
        unpowered = power_for_probe(config, board, clock)
        powered_here = unpowered is None
    try:
        config = _detect(config, chain_port, board, clock, running, unpowered)
        if bridge is not None:
            check_bridge(config, bridge, config.board.port)
        return config
    except (ChainError, ConfigError):
        if powered_here:  # leave the board as it was found
            try:
                board.set_chain_power(False)
            except BoardLinkError as exc:
                log.warning("powering the chain off again failed: %s", exc)
        raise


def _detect(config: Any, chain_port: Any, board: Any, clock: Any, running: Any,
            unpowered: str | None) -> Any:
    from agent.chain.takeover import ProbeResult, probe_chain
    from agent.config import with_chain
    from firmware_bridge.chips import PROFILES

    unpinned = config.chain_unpinned
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
                why = (f"; the board reports the chain unpowered and did not power it "
                       f"({unpowered})" if unpowered else "")
                raise ChainError(f"probing the chain on {config.chain.port}: {exc}{why}") \
                    from None
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


def take_over(config: Any, running: Any, sample: Any, clock: Any, driver: Any, governor: Any,
              runtime: Any) -> bool:
    """Take a chain found hashing over where its load is: the governor adopts it at its
    measured power, the runtime as powered. One that is what the config says hashes on without
    a reset (True). One that is not is wound down by the driver at the ramp while the control
    loop runs (state "winding", as before a chip-fault reset; the governor's reference goes
    down to its floor), then reset and brought up cold as the config says (False). One at its
    reset clock is left to the cold bring-up at once (False)."""
    from agent.chain.settings import START_FREQ_MHZ

    problem = running.problem(config.chain.family, config.chain.chips)
    if problem is not None and running.freq_mhz <= START_FREQ_MHZ + 0.5:
        log.info("the chain answers at the fast rate at its reset clock; bringing it up cold")
        return False
    now = clock.monotonic()
    freq = running.freq_mhz
    vcore = float(getattr(sample, "vcore_mv", 0) or 0)
    power = float(getattr(sample, "power_w", 0) or 0)
    governor.adopt(now, freq, vcore, power, sample)
    if problem is None:
        driver.adopt(now, running)
    else:
        if driver.wind_down is None:
            driver.wind_down = wind_down_for(governor)
        driver.wind_down_running(now, running, f"the running chain cannot be taken over: "
                                               f"{problem}")
    runtime.adopt(now, freq)
    return problem is None


def wind_down_for(governor: Any) -> Any:
    """How the driver brings the load down before a chip-fault reset (through the governor, at
    its ramp, to its lowest frequency) and a running chain it cannot take over down to its reset
    (`agent.chain.recovery.WindDown`)."""
    from agent.chain.recovery import WindDown

    return WindDown(governor.power_at, lambda: governor.envelope.check.power_w,
                    governor.ramp_max_w_s, governor.min_freq_mhz,
                    timeout_s=WIND_DOWN_SLACK_S
                    + 2.0 * governor.max_power_w / governor.ramp_max_w_s)


def run_agent(config: Any) -> int:
    """Run the agent until SIGINT/SIGTERM (0) or a fatal runtime error (its exit status)."""
    from agent import hashing
    from agent.chain.driver import ChainDriver
    from agent.chain.settings import ChainSettings
    from agent.clock import SystemClock
    from agent.control.governor import Governor
    from agent.control.runtime import Runtime
    from agent.pool import work_source
    from agent.service import notify

    clock = SystemClock()
    wake = threading.Event()
    if config.grid.insecure_dev:
        log.warning("INSECURE DEVELOPMENT MODE (grid.insecure_dev): operator keys are "
                    "optional and secret files others can read are accepted; never use "
                    "this on a production site")
    grid = preflight(config, clock)  # nothing is opened before this has passed
    closers: list[Any] = []

    def reopen_chain() -> Any:
        return open_serial(config.chain.port, "chain", config.chain.baud, 0.05)

    def reopen_board() -> Any:
        return open_serial(config.board.port, "board", 115200, 0.02)

    chain_port = reopen_chain()
    closers.append(chain_port.close)
    try:
        surface = start_surface(config)
        if surface is not None:
            closers.append(surface.stop)
        from agent.chain.board import BoardClient

        board = BoardClient(reopen_board(), psu_efficiency=config.board.psu_efficiency,
                            reopen=reopen_board)
        closers.append(board.close)
        info = read_bridge(config, board)
        acknowledge_old_trip(board)
        sample, running = find_running_chain(config, chain_port, board, clock)
        chips_probed = "chips" in config.chain_unpinned  # the count comes from the probe below
        config = detect_chain(config, chain_port, board, clock, running, sample, info)
        settings = ChainSettings.from_config(config.chain, config.envelope,
                                             chips_probed=chips_probed)
        work, stop_work = work_source(config, clock, wake)  # [[pool]]s, else local work
        closers.append(stop_work)
        if hashing.COMPILED:
            log.info("%s", hashing.describe())
        else:  # the agent still keeps up (hashlib verifies each nonce), but the board is slower
            log.warning("COMPILED SHA-256d KERNEL NOT LOADED: %s", hashing.describe())
        driver = ChainDriver(chain_port, settings, clock, work, board=board, wake=wake,
                             reopen=reopen_chain)
        closers.append(driver.close)  # its reader would reopen a port closed under it
        governor = Governor(config, clock)
        driver.wind_down = wind_down_for(governor)
        runtime = Runtime(clock, driver, board, governor,
                          period_s=config.governor.control_period_s,
                          status_period_s=config.log.status_period_s, wake=wake,
                          on_stop=[board.close, stop_work])
        if running is not None:
            take_over(config, running, sample, clock, driver, governor, runtime)
        if surface is not None or config.home.broker_url is not None:
            publisher = view_publisher(config, runtime)
            if surface is not None:
                surface.latest = publisher.latest
                runtime.on_stop.insert(0, surface.stop)
            if config.home.broker_url is not None:
                _home, home_link = build_home(config, runtime, publisher, clock)
                runtime.on_stop.insert(0, home_link.stop)
                home_link.start()
        if grid is not None:
            session, link = build_grid(config, runtime, clock, grid)
            runtime.grid = session
            runtime.on_stop.insert(0, link.stop)
            link.start()
    except BaseException:
        for close in reversed(closers):
            close()
        raise
    # a service manager's readiness and watchdog (Type=notify), pinged from the control loop
    service = notify.attach(runtime, hashing.describe())

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %d: stopping", signum)
        if service is not None:
            service.stopping()
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
