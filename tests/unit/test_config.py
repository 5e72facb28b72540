"""Config: the sample loads, every error names the key and what is allowed, flags build the same."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

import agent
from agent.config import (
    AgentConfig,
    add_arguments,
    config_from_args,
    config_from_mapping,
    load_config,
    with_chain,
)
from agent.errors import ConfigError

SAMPLE = Path(agent.__file__).parent / "agent.sample.toml"
BASE = {"chain": {"port": "/dev/ttyUSB0"}, "board": {"port": "/dev/ttyACM0"}}


def with_(section: str, **keys):
    raw = {k: dict(v) for k, v in BASE.items()}
    raw.setdefault(section, {}).update(keys)
    return raw


def error_of(raw) -> str:
    with pytest.raises(ConfigError) as exc:
        config_from_mapping(raw)
    return str(exc.value)


def test_sample_config_loads_and_resolves_paths_next_to_it():
    cfg = load_config(SAMPLE)
    assert isinstance(cfg, AgentConfig)
    assert cfg.chain.family == "BM1370" and cfg.envelope.max_power_w == 19.0
    assert cfg.governor.vf_points == ((100.0, 1000.0), (525.0, 1150.0))
    assert cfg.grid.operator_keys[0].kid == "op-2026"
    assert cfg.grid.operator_keys[0].path == str(SAMPLE.parent.resolve()
                                                  / "keys/operator-2026.pub.pem")
    assert cfg.grid.state_dir == str(SAMPLE.parent.resolve() / "state")


def test_minimal_config_derives_family_defaults():
    cfg = config_from_mapping(with_("chain", family="BM1366", chips=6))
    env = cfg.envelope
    # a fifth above the family default (485 MHz), within ESP-Miner's presets (up to 575)
    assert (env.max_freq_mhz, env.min_vcore_mv, env.max_vcore_mv) == (575.0, 1100, 1200)
    assert env.trip_clear_temp_c == env.max_chip_temp_soft_c - 10
    assert 50 < env.max_power_w < 80  # six chips of ~9 W
    bm1370 = config_from_mapping(BASE).envelope
    # one Gamma-class chip: 19 W at 525 MHz / 1150 mV, but a board drawing 15 % less than the
    # model reaches only 18.7 W at 625 MHz: the rating is what every such board can hold
    assert bm1370.max_power_w == 18.0 and bm1370.max_freq_mhz == 625.0
    assert env.ramp_max_w_s == 2 * env.max_power_w
    assert cfg.governor.default_target_w == env.max_power_w
    assert cfg.governor.vf_points == ((100.0, 1100.0), (485.0, 1200.0))
    assert cfg.grid.broker_url is None


def test_out_of_range_names_key_and_range():
    assert error_of(with_("envelope", max_power_w=5000)) == \
        "envelope.max_power_w: 5000 is out of range [1, 4000]"
    assert error_of(with_("chain", chips=0)) == "chain.chips: 0 is out of range [1, 256]"
    assert error_of(with_("governor", fan_min_pct=101)) == \
        "governor.fan_min_pct: 101 is out of range [0, 100]"


@pytest.mark.parametrize(
    "raw, message",
    [
        (with_("chain", colour="red"), "chain.colour: unknown key"),
        ({**BASE, "extra": {}}, "extra: unknown section"),
        ({**BASE, "chian": {}}, "chian: unknown section (did you mean 'chain'?)"),
        (with_("chain", port=""), "chain.port: expected a non-empty string, got ''"),
        ({"board": {"port": "x"}}, "chain.port: required"),
        (with_("chain", chips="4"), "chain.chips: expected an integer, got '4'"),
        (with_("chain", chips=True), "chain.chips: expected an integer"),
        (with_("envelope", max_power_w="lots"), "envelope.max_power_w: expected a number"),
        (with_("envelope", max_power_w=float("nan")), "envelope.max_power_w: expected a finite"),
        (with_("grid", insecure_no_tls="yes"), "grid.insecure_no_tls: expected true or false"),
        (with_("chain", family="BM1234"), "chain.family: 'BM1234' is not one of BM1397"),
        (with_("log", level="LOUD"), "log.level: 'LOUD' is not one of DEBUG"),
        (with_("envelope", max_chip_temp_soft_c=80, max_chip_temp_hard_c=75),
         "envelope.max_chip_temp_hard_c: 75 is out of range [80, 125]"),
        (with_("envelope", min_freq_mhz=500, max_freq_mhz=400),
         "envelope.max_freq_mhz: 400 is out of range [500, 800]"),
        (with_("envelope", min_vcore_mv=1200, max_vcore_mv=1100),
         "envelope.max_vcore_mv: 1100 is out of range [1200, 1800]"),
        (with_("envelope", max_power_w=20) | {"governor": {"default_target_w": 30}},
         "governor.default_target_w: 30 is out of range [0, 20]"),
        (with_("governor", fan_target_temp_c=70), "governor.fan_target_temp_c: 70"),
        (with_("governor", vf_points=[[500, 1100], [200, 1150]]), "governor.vf_points"),
        (with_("governor", vf_points=[[200, 1000]]), "governor.vf_points: needs at least two"),
        (with_("governor", vf_points=[[200, "x"], [500, 1150]]),
         "governor.vf_points[0][1]: expected a number"),
        (with_("grid", broker_url="http://x"), "grid.broker_url: 'http://x' is not"),
        (with_("grid", site="a b"), "grid.site: 'a b' must match"),
        (with_("grid", client_id="a/b"), "grid.client_id: 'a/b' must match"),
        (with_("grid", broker_url="mqtts://h:8883", site="s", device="d"),
         "grid.operator_keys: at least one"),
        (with_("grid", broker_url="mqtts://h", site="s"), "grid.device: required"),
        (with_("grid", operator_keys=[{"kid": "k"}]), "grid.operator_keys[0].path: required"),
        (with_("grid", operator_keys=[{"kid": "k", "path": "p", "x": 1}]),
         "grid.operator_keys[0].x: unknown key"),
        (with_("grid", operator_keys="k.pem"), "grid.operator_keys: expected a list"),
        ({**BASE, "chain": "x"}, "chain: expected a table"),
    ],
)
def test_errors_name_the_key(raw, message):
    assert message in error_of(raw)


def test_the_mqtt_client_id_is_the_device_id_unless_the_config_names_one():
    from agent.grid.link import LinkSettings

    grid = {"broker_url": "mqtts://h", "site": "s1", "device": "d1", "insecure_dev": True}
    assert LinkSettings.from_config(config_from_mapping(with_("grid", **grid)).grid).client_id \
        is None
    named = config_from_mapping(with_("grid", **grid, client_id="s1.d1")).grid
    assert LinkSettings.from_config(named).client_id == "s1.d1"


def test_bad_files_are_config_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[chain\nport=1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")


def parse(argv):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_flags_alone_build_a_config(tmp_path):
    args = parse(["--chain", "/dev/ttyUSB1", "--board", "socket://localhost:7000",
                  "--target-w", "15", "--nonce-difficulty", "64", "--broker", "mqtt://127.0.0.1:1883",
                  "--site", "s1", "--device", "d1", "--operator-key", "op.pem", "--kid", "k1",
                  "--state-dir", str(tmp_path), "--insecure-no-tls", "--restart-spread-s", "0"])
    cfg = config_from_args(args)
    assert cfg.grid.restart_spread_s == 0.0  # the lab's way to skip the spread
    assert cfg.chain.port == "/dev/ttyUSB1" and cfg.board.port == "socket://localhost:7000"
    assert cfg.governor.default_target_w == 15.0 and cfg.chain.nonce_difficulty == 64.0
    assert cfg.grid.broker_url == "mqtt://127.0.0.1:1883" and cfg.grid.insecure_no_tls is True
    assert (cfg.grid.site, cfg.grid.device) == ("s1", "d1")
    assert cfg.grid.operator_keys[0].kid == "k1"
    assert Path(cfg.grid.operator_keys[0].path).is_absolute()
    assert cfg.grid.state_dir == str(tmp_path.resolve())


def test_flags_without_a_file_need_both_ports():
    with pytest.raises(ConfigError, match=r"--board PORT is required \(or --config FILE\)"):
        config_from_args(parse(["--chain", "/dev/ttyUSB0"]))


def test_flags_override_the_file_and_are_validated_the_same(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_text(SAMPLE.read_text())
    cfg = config_from_args(parse(["--config", str(path), "--target-w", "12"]))
    assert cfg.governor.default_target_w == 12.0 and cfg.chain.port == "/dev/ttyUSB0"
    assert cfg.grid.insecure_no_tls is False  # an absent flag keeps the file's value
    with pytest.raises(ConfigError, match=r"governor.default_target_w: 99 is out of range"):
        config_from_args(parse(["--config", str(path), "--target-w", "99"]))
    with pytest.raises(ConfigError, match="--kid"):
        config_from_args(parse(["--config", str(path), "--operator-key", "a.pem"]))


def test_the_emulator_difficulty_is_accepted_as_written_and_family_chips_pin_the_chain():
    args = parse(["--chain", "a", "--board", "b", "--nonce-difficulty", "2**-24"])
    cfg = config_from_args(args)
    assert cfg.chain.nonce_difficulty == 2.0**-24
    assert cfg.chain_unpinned == ("family", "chips")  # the agent probes the chain
    cfg = config_from_args(parse(["--chain", "a", "--board", "b", "--family", "BM1366",
                                  "--chips", "6"]))
    assert (cfg.chain.family, cfg.chain.chips, cfg.chain_unpinned) == ("BM1366", 6, ())
    assert cfg == with_chain(config_from_args(parse(["--chain", "a", "--board", "b"])),
                             "BM1366", 6)
    with pytest.raises(ConfigError, match=r"chain.chips: 300 is out of range \[1, 256\]"):
        with_chain(cfg, "BM1370", 300)
    with pytest.raises(SystemExit):
        parse(["--nonce-difficulty", "2**x"])


def test_insecure_dev_lifts_the_operator_key_requirement():
    grid = {"broker_url": "mqtt://127.0.0.1:1883", "site": "s", "device": "d"}
    assert "grid.operator_keys: at least one" in error_of(with_("grid", **grid))
    cfg = config_from_args(parse(["--chain", "a", "--board", "b", "--broker", grid["broker_url"],
                                  "--site", "s", "--device", "d", "--insecure-dev"]))
    assert cfg.grid.insecure_dev is True and cfg.grid.operator_keys == ()


def test_a_target_above_one_chip_waits_for_the_chip_count_when_it_is_detected():
    cfg = config_from_args(parse(["--chain", "a", "--board", "b", "--target-w", "45"]))
    assert "chips" in cfg.chain_unpinned
    four = with_chain(cfg, "BM1370", 4)  # detection found 4 chips: 45 W is within their rating
    assert four.governor.default_target_w == 45 and four.envelope.max_power_w >= 45
    with pytest.raises(ConfigError, match=r"governor\.default_target_w"):
        with_chain(cfg, "BM1370", 1)  # one chip cannot draw 45 W: refused with the key
    with pytest.raises(ConfigError, match=r"governor\.default_target_w"):  # a pinned chain at once
        config_from_args(parse(["--chain", "a", "--board", "b", "--chips", "1",
                                "--target-w", "45"]))
