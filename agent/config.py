"""The agent's configuration: a TOML file (or command-line flags) validated into frozen dataclasses.

Each section is a dataclass whose fields declare their ranges (`agent.tomlschema.key`); every
error names the key and what is allowed, e.g. ``envelope.max_power_w: 5000 is out of range
[1, 4000]``; unknown sections and keys are rejected by name, so a typo never silently drops a
limit. Defaults that depend on the chip family (voltage and frequency bounds, the V/f curve, the
power cap) are derived after parsing, with the checks of keys that constrain each other.
`agent/agent.sample.toml` documents every key.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.errors import ConfigError
from agent.grid.contract import CLIENT_ID_RE, NAME_RE
from agent.tomlschema import (
    build,
    check_range,
    convert,
    fmt,
    key,
    range_error,
    read_toml,
    reject_unknown,
)
from firmware_bridge.chips import FAMILIES, profile

if TYPE_CHECKING:
    from agent.control.power_model import ModelParams, VfCurve

_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


@dataclass(frozen=True)
class ChainConfig:
    """[chain]: the ASIC chain's serial port and how to drive it."""

    port: str = key()  # pyserial port or URL (/dev/ttyUSB0, rfc2217://host:port, asicemu://...)
    family: str = key("BM1370", choices=FAMILIES)  # absent: the agent probes the chain
    chips: int = key(1, lo=1, hi=256)  # absent: the agent probes the chain
    baud: int = key(115200, lo=9600, hi=10_000_000)
    freq_step_mhz: float = key(6.25, lo=0.5, hi=200.0)
    freq_step_interval_s: float = key(0.004, lo=0.0, hi=10.0)
    nonce_difficulty: float | None = key(None, lo=1e-12, hi=2.0**64)
    ticket_difficulty: int = key(0, lo=0, hi=2**32)  # 0: chosen for ~64 nonces/s (chainstats)


@dataclass(frozen=True)
class BoardConfig:
    """[board]: the board-management link to the bridge firmware."""

    port: str = key()
    # the power supply between the wall and the board input; below 1 every power the agent
    # measures, reports and is commanded is wall (AC) power = board input / psu_efficiency
    psu_efficiency: float = key(1.0, lo=0.5, hi=1.0)


@dataclass(frozen=True)
class EnvelopeConfig:
    """[envelope]: the hard safety envelope; no command can lift it."""

    max_chip_temp_soft_c: float = key(65.0, lo=30.0, hi=120.0)
    max_chip_temp_hard_c: float = key(75.0, lo=35.0, hi=125.0)
    trip_clear_temp_c: float | None = key(None, lo=10.0, hi=115.0)  # default: soft - 10
    max_vr_temp_c: float = key(105.0, lo=50.0, hi=150.0)
    max_power_w: float | None = key(None, lo=1.0, hi=4000.0)  # default: rating, reachable
    overpower_margin_pct: float = key(10.0, lo=0.0, hi=100.0)
    overpower_s: float = key(2.0, lo=0.1, hi=60.0)
    min_freq_mhz: float = key(100.0, lo=50.0, hi=800.0)
    max_freq_mhz: float | None = key(None, lo=50.0, hi=800.0)  # default: 1.2 x family default
    min_vcore_mv: int | None = key(None, lo=1000, hi=1800)  # default: family preset floor
    max_vcore_mv: int | None = key(None, lo=1000, hi=1800)  # default: family default
    ramp_max_w_s: float | None = key(None, lo=0.1, hi=100_000.0)  # default: 2 * max_power_w
    trip_hold_s: float = key(30.0, lo=0.0, hi=3600.0)
    sensor_stale_s: float = key(1.0, lo=0.05, hi=60.0)
    sensor_frozen_s: float = key(10.0, lo=0.5, hi=3600.0)


@dataclass(frozen=True)
class GovernorConfig:
    """[governor]: power tracking, the V/f curve, the power model and the fan loop."""

    default_target_w: float | None = key(None, lo=0.0, hi=4000.0)  # default: max_power_w
    control_period_s: float = key(0.1, lo=0.01, hi=5.0)
    correction: str = key("gain", choices=("gain", "offset"))
    correction_ki_per_s: float = key(3.0, lo=0.0, hi=50.0)
    correction_limit_pct: float = key(50.0, lo=0.0, hi=90.0)
    learn_offset: bool = key(True)
    response_delay_s: float = key(0.2, lo=0.0, hi=5.0)
    response_tau_s: float = key(0.1, lo=0.0, hi=5.0)
    freq_settle_s: float = key(0.3, lo=0.0, hi=5.0)
    thermal_derate_pct_c_s: float = key(5.0, lo=0.1, hi=100.0)
    thermal_release_pct_s: float = key(2.0, lo=0.1, hi=100.0)
    fan_target_temp_c: float = key(60.0, lo=30.0, hi=90.0)
    fan_min_pct: int = key(25, lo=0, hi=100)
    fan_startup_pct: int = key(70, lo=0, hi=100)
    fan_kp_pct_c: float = key(5.0, lo=0.0, hi=100.0)
    fan_ki_pct_c_s: float = key(0.5, lo=0.0, hi=100.0)
    vf_points: tuple[tuple[float, float], ...] | None = key(None)  # [[freq_mhz, vcore_mv], ...]
    chip_power_w: float | None = key(None, lo=0.1, hi=500.0)  # at family default f/V, 60 degC
    regulator_efficiency: float = key(0.92, lo=0.3, hi=1.0)
    board_overhead_w: float = key(1.5, lo=0.0, hi=1000.0)


@dataclass(frozen=True)
class OperatorKey:
    """One operator public key: its COSE key id and the PEM file."""

    kid: str = key()
    path: str = key(path=True)


@dataclass(frozen=True)
class GridConfig:
    """[grid]: the MQTT link (semantics: agent/gridlink.py); a validated container here."""

    broker_url: str | None = key(None)  # mqtts://host:8883; absent: no grid link
    site: str | None = key(None)
    device: str | None = key(None)
    client_id: str | None = key(None)  # the MQTT client id; absent: the device id (contract §1)
    prefix: str = key("gridminer")
    operator_keys: tuple[OperatorKey, ...] = key(())
    client_cert_file: str | None = key(None, path=True)
    client_key_file: str | None = key(None, path=True)
    ca_file: str | None = key(None, path=True)
    username: str | None = key(None)
    password_file: str | None = key(None, path=True)
    state_dir: str = key("state", path=True)
    telemetry_period_s: float = key(1.0, lo=0.05, hi=3600.0)
    max_validity_s: float = key(86400.0, lo=1.0, hi=30 * 86400.0)
    clock_skew_s: float = key(30.0, lo=0.0, hi=3600.0)
    restart_spread_s: float = key(30.0, lo=0.0, hi=3600.0)
    insecure_no_tls: bool = key(False)
    insecure_dev: bool = key(False)  # lab only: no operator key needed, loose secret files
    telemetry_buffer: int = key(3600, lo=0, hi=10_000_000)


@dataclass(frozen=True)
class PoolConfig:
    """[[pool]]: one Stratum V1 pool; the entries are in priority order (semantics:
    agent/pool)."""

    url: str = key()  # stratum+tcp://HOST:PORT or stratum+ssl://HOST:PORT
    user: str = key()  # the worker name, often ADDRESS.WORKER or ACCOUNT.WORKER
    password: str | None = key(None)  # absent (and no password_file): "x"
    password_file: str | None = key(None, path=True)
    ca_file: str | None = key(None, path=True)  # stratum+ssl: CAs to trust (default: system)
    version_rolling: bool = key(True)  # ask for BIP 310 version rolling (mining.configure)
    suggest_difficulty: float | None = key(None, lo=1e-12, hi=2.0**64)
    extranonce_subscribe: bool = key(False)  # some pools hang up on it: off by default


@dataclass(frozen=True)
class StratumConfig:
    """[stratum]: how the pool client fails over between the [[pool]] entries and reconnects."""

    failover_after_s: float = key(3.0, lo=0.1, hi=86400.0)
    retry_min_s: float = key(1.0, lo=0.01, hi=3600.0)
    retry_max_s: float = key(30.0, lo=0.01, hi=3600.0)
    connect_timeout_s: float = key(10.0, lo=0.1, hi=300.0)
    silence_timeout_s: float = key(120.0, lo=1.0, hi=3600.0)


@dataclass(frozen=True)
class LogConfig:
    """[log]: logging level and how often a status line is logged."""

    level: str = key("INFO", choices=_LOG_LEVELS)
    status_period_s: float = key(10.0, lo=0.0, hi=86400.0)


@dataclass(frozen=True)
class HttpConfig:
    """[http]: the optional read-only HTTP listener (AxeOS-compatible API, Prometheus metrics;
    semantics: agent/surface)."""

    listen: str | None = key(None)  # HOST:PORT, or PORT on loopback; absent: no listener


@dataclass(frozen=True)
class HomeConfig:
    """[home]: the home's MQTT broker (Home Assistant's): discovery, state, the owner's local
    control (semantics: agent/home)."""

    broker_url: str | None = key(None)  # mqtt://homeassistant.local:1883; absent: none
    username: str | None = key(None)
    password_file: str | None = key(None, path=True)
    ca_file: str | None = key(None, path=True)
    device_id: str = key("gridminer")  # [A-Za-z0-9_-]: unique ids and topics
    name: str = key("gridminer")  # the device's name in Home Assistant
    discovery: bool = key(True)  # false: the device is removed from Home Assistant
    discovery_prefix: str = key("homeassistant")
    base_topic: str | None = key(None)  # default: gridminer/<device_id>
    state_period_s: float = key(5.0, lo=0.2, hi=3600.0)
    # unsigned commands from the home broker (power limit, mining on/off), inside the envelope
    # and never over a signed grid command: the owner's trust decision, off by default
    local_control: bool = key(False)


@dataclass(frozen=True)
class SurplusConfig:
    """[surplus]: hold the load at the home meter's export minus a margin (semantics:
    agent/home/surplus.py); the meter is read from the [home] broker."""

    meter_topic: str | None = key(None)  # absent: no surplus following
    meter_field: str | None = key(None)  # dotted JSON path (ENERGY.Power); absent: a number
    meter_positive: str = key("import", choices=("import", "export"))
    meter_scale: float = key(1.0, lo=1e-6, hi=1e6)  # reading x scale = W (1000 for kW)
    margin_w: float = key(10.0, lo=0.0, hi=100_000.0)
    rise_tau_s: float = key(30.0, lo=0.0, hi=3600.0)
    fall_tau_s: float = key(2.0, lo=0.0, hi=3600.0)
    stale_s: float = key(30.0, lo=1.0, hi=3600.0)
    dwell_s: float = key(60.0, lo=0.0, hi=86400.0)


@dataclass(frozen=True)
class AgentConfig:
    """The whole configuration; every derived default is filled in."""

    chain: ChainConfig
    board: BoardConfig
    envelope: EnvelopeConfig
    governor: GovernorConfig
    grid: GridConfig
    log: LogConfig
    stratum: StratumConfig = field(default_factory=StratumConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    home: HomeConfig = field(default_factory=HomeConfig)
    surplus: SurplusConfig = field(default_factory=SurplusConfig)
    pools: tuple[PoolConfig, ...] = ()  # [[pool]], in priority order; none: local work
    source: str = "<args>"  # file the config came from
    #: [chain] keys the config leaves out ("family", "chips"): the agent probes the chain and
    #: fills them in with `with_chain`
    chain_unpinned: tuple[str, ...] = ()
    #: the config as parsed, before derived defaults (what `with_chain` derives again from)
    as_given: Any = field(default=None, compare=False, repr=False)


_SECTIONS: dict[str, type] = {
    "chain": ChainConfig,
    "board": BoardConfig,
    "envelope": EnvelopeConfig,
    "governor": GovernorConfig,
    "grid": GridConfig,
    "log": LogConfig,
    "stratum": StratumConfig,
    "http": HttpConfig,
    "home": HomeConfig,
    "surplus": SurplusConfig,
}


def model_params(cfg: AgentConfig) -> ModelParams:
    """The power model's constants for this board (agent.control.power_model)."""
    from agent.control.power_model import ModelParams

    gov = cfg.governor
    return ModelParams.for_family(
        cfg.chain.family, cfg.chain.chips, chip_power_w=gov.chip_power_w,
        regulator_efficiency=gov.regulator_efficiency, overhead_w=gov.board_overhead_w,
        psu_efficiency=cfg.board.psu_efficiency)


def _envelope(cfg: AgentConfig) -> EnvelopeConfig:
    """[envelope] with the chip family's frequency and voltage bounds filled in, and the keys that
    constrain each other checked."""
    from agent.control.power_model import MIN_VCORE_MV, default_max_freq_mhz

    prof = profile(cfg.chain.family)
    env = cfg.envelope
    env = dataclasses.replace(
        env,
        max_freq_mhz=env.max_freq_mhz if env.max_freq_mhz is not None
        else float(max(default_max_freq_mhz(prof.family), env.min_freq_mhz + 1)),
        min_vcore_mv=env.min_vcore_mv if env.min_vcore_mv is not None
        else MIN_VCORE_MV[prof.family],
        max_vcore_mv=env.max_vcore_mv if env.max_vcore_mv is not None
        else int(prof.default_vcore_mv),
        trip_clear_temp_c=env.trip_clear_temp_c if env.trip_clear_temp_c is not None
        else env.max_chip_temp_soft_c - 10.0,
    )
    assert env.max_freq_mhz is not None and env.min_vcore_mv is not None
    assert env.max_vcore_mv is not None and env.trip_clear_temp_c is not None
    if env.max_chip_temp_hard_c <= env.max_chip_temp_soft_c:
        raise range_error("envelope.max_chip_temp_hard_c", env.max_chip_temp_hard_c,
                          env.max_chip_temp_soft_c, 125, "above max_chip_temp_soft_c")
    if env.trip_clear_temp_c >= env.max_chip_temp_soft_c:
        raise range_error("envelope.trip_clear_temp_c", env.trip_clear_temp_c, 10,
                          env.max_chip_temp_soft_c, "below max_chip_temp_soft_c")
    if env.max_freq_mhz <= env.min_freq_mhz:
        raise range_error("envelope.max_freq_mhz", env.max_freq_mhz, env.min_freq_mhz, 800,
                          "above min_freq_mhz")
    if env.max_vcore_mv < env.min_vcore_mv:
        raise range_error("envelope.max_vcore_mv", env.max_vcore_mv, env.min_vcore_mv, 1800,
                          "at least min_vcore_mv")
    return env


def _vf_curve(cfg: AgentConfig, env: EnvelopeConfig) -> tuple[GovernorConfig, VfCurve]:
    """[governor] with the family's default V/f points filled in, and its checked curve."""
    from agent.control.power_model import VfCurve

    prof = profile(cfg.chain.family)
    gov = cfg.governor
    assert env.min_vcore_mv is not None and env.max_vcore_mv is not None
    if gov.vf_points is None:
        foot = (env.min_freq_mhz, float(env.min_vcore_mv))
        knee_f = float(prof.default_freq_mhz)
        if knee_f <= env.min_freq_mhz:
            assert env.max_freq_mhz is not None
            knee_f = env.max_freq_mhz
        gov = dataclasses.replace(gov, vf_points=(foot, (knee_f, float(prof.default_vcore_mv))))
    assert gov.vf_points is not None
    if len(gov.vf_points) < 2:
        raise ConfigError("governor.vf_points: needs at least two [freq_mhz, vcore_mv] points")
    for i, (f, v) in enumerate(gov.vf_points):
        check_range(f"governor.vf_points[{i}][0]", f, {"lo": 50.0, "hi": 800.0})
        check_range(f"governor.vf_points[{i}][1]", v, {"lo": 500.0, "hi": 1800.0})
    try:
        curve = VfCurve(gov.vf_points, env.min_vcore_mv, env.max_vcore_mv)
    except ValueError as exc:
        raise ConfigError(f"governor.vf_points: {exc}") from None
    if not curve.supports(env.min_freq_mhz, env.max_vcore_mv):
        raise ConfigError(
            f"governor.vf_points: min_freq_mhz {fmt(env.min_freq_mhz)} needs more than "
            f"envelope.max_vcore_mv {env.max_vcore_mv}"
        )
    return gov, curve


def _derive(cfg: AgentConfig) -> AgentConfig:
    """Fill family-dependent defaults and check the keys that constrain each other."""
    from agent.control.power_model import PowerModel

    env = _envelope(cfg)
    gov, curve = _vf_curve(cfg, env)
    rating_derived = env.max_power_w is None
    if rating_derived:
        assert env.max_freq_mhz is not None
        model = PowerModel(model_params(cfg))
        # the rating at the family default, and reachable (at the fan's target temperature)
        # by a board drawing 15 % less than the model; rounded down
        top = model.rated_max_w(curve, env.max_freq_mhz, gov.fan_target_temp_c)
        env = dataclasses.replace(env, max_power_w=float(min(4000, max(1, math.floor(top)))))
    assert env.max_power_w is not None
    max_power_w: float = env.max_power_w
    if env.ramp_max_w_s is None:
        env = dataclasses.replace(env, ramp_max_w_s=2.0 * max_power_w)
    if gov.default_target_w is None:
        gov = dataclasses.replace(gov, default_target_w=max_power_w)
    assert gov.default_target_w is not None
    # with the chip count left to detection the rating is not known yet: `with_chain` checks
    # the target again once the agent has counted the chips
    chips_known = not (rating_derived and "chips" in cfg.chain_unpinned)
    if gov.default_target_w > max_power_w and chips_known:
        raise range_error("governor.default_target_w", gov.default_target_w, 0, max_power_w,
                          "envelope.max_power_w")
    if gov.fan_target_temp_c >= env.max_chip_temp_soft_c:
        raise range_error("governor.fan_target_temp_c", gov.fan_target_temp_c, 30,
                          env.max_chip_temp_soft_c, "below envelope.max_chip_temp_soft_c")
    _check_grid(cfg.grid)
    _check_pools(cfg)
    if cfg.http.listen is not None:
        from agent.surface.listen import parse_listen

        parse_listen(cfg.http.listen)
    _check_home(cfg)
    return dataclasses.replace(cfg, envelope=env, governor=gov)


def _check_pools(cfg: AgentConfig) -> None:
    from agent.pool.endpoint import parse_url

    for i, pool in enumerate(cfg.pools):
        parse_url(pool.url, f"pool[{i}].url")
        if pool.password is not None and pool.password_file is not None:
            raise ConfigError(f"pool[{i}]: give password or password_file, not both")
    if cfg.stratum.retry_max_s < cfg.stratum.retry_min_s:
        raise range_error("stratum.retry_max_s", cfg.stratum.retry_max_s,
                          cfg.stratum.retry_min_s, 3600, "at least retry_min_s")


def _check_home(cfg: AgentConfig) -> None:
    home, surplus = cfg.home, cfg.surplus
    if not NAME_RE.match(home.device_id):
        raise ConfigError(f"home.device_id: {home.device_id!r} must match [A-Za-z0-9_-]{{1,64}}")
    for name in ("discovery_prefix", "base_topic"):
        value = getattr(home, name)
        if value is not None and (not value or any(c in value for c in "+#\0")
                                  or value.startswith("/") or value.endswith("/")):
            raise ConfigError(f"home.{name}: {value!r} is not a topic prefix")
    if surplus.meter_topic is not None:
        if home.broker_url is None:
            raise ConfigError("surplus.meter_topic: needs home.broker_url (the broker the "
                              "meter publishes to)")
        if not surplus.meter_topic or any(c in surplus.meter_topic for c in "+#\0"):
            raise ConfigError(f"surplus.meter_topic: {surplus.meter_topic!r} is not a topic")
    if home.broker_url is not None:
        from agent.errors import GridLinkError
        from agent.grid.broker import parse_broker_url

        try:
            parse_broker_url(home.broker_url)
        except GridLinkError as exc:
            raise ConfigError(f"home.broker_url: {exc}") from None


def _check_grid(grid: GridConfig) -> None:
    for name in ("site", "device"):
        value = getattr(grid, name)
        if value is not None and not NAME_RE.match(value):
            raise ConfigError(f"grid.{name}: {value!r} must match [A-Za-z0-9_-]{{1,64}}")
    if grid.client_id is not None and not CLIENT_ID_RE.match(grid.client_id):
        raise ConfigError(f"grid.client_id: {grid.client_id!r} must match [A-Za-z0-9._:-]{{1,128}}")
    if grid.broker_url is None:
        return
    m = re.match(r"^(mqtts?|wss?)://([^/:]+|\[[0-9A-Fa-f:]+\])(:(\d{1,5}))?/?$", grid.broker_url)
    if not m:
        raise ConfigError(
            f"grid.broker_url: {grid.broker_url!r} is not mqtt://HOST[:PORT] or mqtts://HOST[:PORT]"
        )
    if m.group(4) is not None and not 1 <= int(m.group(4)) <= 65535:
        raise ConfigError(f"grid.broker_url: port {m.group(4)} is out of range [1, 65535]")
    for name in ("site", "device"):
        if getattr(grid, name) is None:
            raise ConfigError(f"grid.{name}: required when grid.broker_url is set")
    if not grid.operator_keys and not grid.insecure_dev:
        raise ConfigError("grid.operator_keys: at least one {kid, path} is required")
    kids = [k.kid for k in grid.operator_keys]
    if len(set(kids)) != len(kids):
        raise ConfigError("grid.operator_keys: duplicate kid")


def config_from_mapping(raw: Mapping[str, Any], base_dir: Path | None = None,
                        source: str = "<args>") -> AgentConfig:
    """Validate a TOML-shaped mapping into an AgentConfig (raises ConfigError)."""
    if not isinstance(raw, Mapping):
        raise ConfigError("config: expected a table")
    reject_unknown("", raw, (*_SECTIONS, "pool"), noun="section")
    sections = {name: build(cls, name, raw.get(name, {}), base_dir)
                for name, cls in _SECTIONS.items()}
    pools = convert(tuple[PoolConfig, ...], raw.get("pool", []), "pool", base_dir)
    chain_raw = raw.get("chain", {})
    unpinned = tuple(k for k in ("family", "chips") if k not in chain_raw)
    given = AgentConfig(source=source, chain_unpinned=unpinned, pools=pools, **sections)
    return _derive(dataclasses.replace(given, as_given=given))


def with_chain(cfg: AgentConfig, family: str, chips: int) -> AgentConfig:
    """`cfg` for the chain found on the port: [chain] family and chips set (validated like the
    file's keys) and every default that depends on them derived again from the config as given.
    ConfigError when the chain is out of range."""
    given = cfg.as_given if cfg.as_given is not None else cfg
    values = {f.name: getattr(given.chain, f.name) for f in dataclasses.fields(ChainConfig)}
    values.update(family=family, chips=chips)
    chain = build(ChainConfig, "chain", values)
    given = dataclasses.replace(given, chain=chain, chain_unpinned=(), as_given=None)
    return _derive(dataclasses.replace(given, as_given=given))


def load_config(path: str | Path) -> AgentConfig:
    """Read and validate a TOML config file; relative paths are taken from the file's folder."""
    p = Path(path)
    return config_from_mapping(read_toml(p), p.resolve().parent, str(p))


def parse_difficulty(text: str) -> float:
    """A positive difficulty from the command line: a number (0.001, 6e-8) or a power written
    2**-24 or 2^-24 (argparse type; ArgumentTypeError otherwise)."""
    t = str(text).strip().replace("^", "**")
    try:
        if "**" in t:
            base, _, exp = t.partition("**")
            value = float(base) ** float(exp)
        else:
            value = float(t)
    except (ValueError, OverflowError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"not a difficulty: {text!r}") from None
    if not (isinstance(value, float) and value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"difficulty must be > 0, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The agent's config flags: `--config FILE` and the flags that override (or replace) it."""
    parser.add_argument("--config", metavar="FILE", help="TOML config (see agent.sample.toml)")
    parser.add_argument("--chain", metavar="PORT", help="ASIC chain serial port or pyserial URL")
    parser.add_argument("--board", metavar="PORT", help="board-management serial port or URL")
    parser.add_argument("--family", choices=FAMILIES,
                        help="chip family (default: the config's, else probed from the chain)")
    parser.add_argument("--chips", type=int, metavar="N",
                        help="chips on the chain (default: the config's, else probed)")
    parser.add_argument("--target-w", type=float, metavar="W", help="default power target")
    parser.add_argument("--nonce-difficulty", type=parse_difficulty, metavar="D",
                        help="difficulty nonces are verified at (6e-8, 2**-24)")
    parser.add_argument("--broker", metavar="URL", help="MQTT broker, mqtts://host:8883")
    parser.add_argument("--site", metavar="S", help="site id")
    parser.add_argument("--device", metavar="D", help="device id")
    parser.add_argument("--operator-key", metavar="PUB.pem", action="append",
                        help="operator public key (repeat with --kid for several)")
    parser.add_argument("--kid", metavar="KID", action="append", help="key id of --operator-key")
    parser.add_argument("--state-dir", metavar="DIR", help="persistent state folder")
    parser.add_argument("--restart-spread-s", type=float, metavar="S",
                        help="random wait before ramping up after a restart (default 30; 0 in "
                             "a lab, never on a site: a whole site would re-energise at once)")
    parser.add_argument("--insecure-no-tls", action="store_true", default=None,
                        help="allow a broker without TLS (lab only)")
    parser.add_argument("--insecure-dev", action="store_true", default=None,
                        help="development only: run without an operator key (every command is "
                             "rejected) and accept secret files others can read")
    parser.add_argument("--http", metavar="HOST:PORT",
                        help="serve the read-only AxeOS-compatible API and /metrics here (a "
                             "bare PORT: loopback; another host is reachable beyond this "
                             "machine)")
    parser.add_argument("--pool", metavar="URL", action="append",
                        help="Stratum V1 pool, stratum+tcp://HOST:PORT or stratum+ssl://..."
                             " (repeat for failover pools, in priority order; replaces the "
                             "file's [[pool]] entries)")
    parser.add_argument("--pool-user", metavar="USER", action="append",
                        help="worker name at the pool (once for all --pool, or once each)")
    parser.add_argument("--pool-password-file", metavar="FILE", action="append",
                        help="file holding the pool password (once for all, or once each; "
                             "default password: x)")


def config_from_args(args: argparse.Namespace) -> AgentConfig:
    """The config from `add_arguments` flags: the `--config` file (if any) with the flags on top."""
    path = getattr(args, "config", None)
    raw: dict[str, Any] = read_toml(path) if path else {}
    base_dir = Path(path).resolve().parent if path else None

    def put(section: str, name: str, value: Any) -> None:
        if value is not None:
            raw.setdefault(section, {})
            if not isinstance(raw[section], dict):
                raise ConfigError(f"{section}: expected a table")
            raw[section][name] = value

    if not path:
        for flag, name in (("--chain", "chain"), ("--board", "board")):
            if getattr(args, name, None) is None:
                raise ConfigError(f"{flag} PORT is required (or --config FILE)")
    put("chain", "port", getattr(args, "chain", None))
    put("chain", "family", getattr(args, "family", None))
    put("chain", "chips", getattr(args, "chips", None))
    put("board", "port", getattr(args, "board", None))
    put("governor", "default_target_w", getattr(args, "target_w", None))
    put("chain", "nonce_difficulty", getattr(args, "nonce_difficulty", None))
    put("grid", "broker_url", getattr(args, "broker", None))
    put("grid", "site", getattr(args, "site", None))
    put("grid", "device", getattr(args, "device", None))
    put("grid", "insecure_no_tls", getattr(args, "insecure_no_tls", None))
    put("grid", "insecure_dev", getattr(args, "insecure_dev", None))
    put("grid", "restart_spread_s", getattr(args, "restart_spread_s", None))
    put("http", "listen", getattr(args, "http", None))
    state_dir = getattr(args, "state_dir", None)
    put("grid", "state_dir", str(Path(state_dir).resolve()) if state_dir else None)
    keys = list(getattr(args, "operator_key", None) or [])
    kids = list(getattr(args, "kid", None) or [])
    if keys or kids:
        if len(keys) != len(kids):
            raise ConfigError("--operator-key/--kid: give one --kid for each --operator-key")
        put("grid", "operator_keys",
            [{"kid": k, "path": str(Path(p).resolve())} for p, k in zip(keys, kids, strict=True)])
    pools = _pools_from_args(args)
    if pools is not None:
        raw["pool"] = pools
    return config_from_mapping(raw, base_dir, str(path) if path else "<args>")


def _pools_from_args(args: argparse.Namespace) -> list[dict[str, Any]] | None:
    """[[pool]] entries from --pool/--pool-user/--pool-password-file (None: no --pool)."""
    urls = list(getattr(args, "pool", None) or [])
    users = list(getattr(args, "pool_user", None) or [])
    files = list(getattr(args, "pool_password_file", None) or [])
    if not urls:
        if users or files:
            raise ConfigError("--pool-user/--pool-password-file: give --pool URL as well")
        return None

    def each(values: list[str], flag: str) -> list[str | None]:
        given: list[str | None] = list(values)
        if not given:
            return [None] * len(urls)
        if len(given) == 1:
            return given * len(urls)
        if len(given) != len(urls):
            raise ConfigError(f"{flag}: give it once for all --pool, or once for each")
        return given

    if not users:
        raise ConfigError("--pool-user USER is required with --pool")
    entries = []
    for url, user, file in zip(urls, each(users, "--pool-user"),
                               each(files, "--pool-password-file"), strict=True):
        entry: dict[str, Any] = {"url": url, "user": user}
        if file is not None:
            entry["password_file"] = str(Path(file).resolve())
        entries.append(entry)
    return entries
