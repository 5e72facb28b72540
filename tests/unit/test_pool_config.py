"""[[pool]] entries and [stratum] in the config file; --pool/--pool-user/--pool-password-file on
the command line; the endpoints the client gets from them."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from test_config import BASE, error_of

from agent.config import add_arguments, config_from_args, config_from_mapping, load_config
from agent.errors import ConfigError
from agent.pool import PoolEndpoint, pool_endpoints


def with_pools(*pools: dict) -> dict:
    return {**BASE, "pool": list(pools)}


def test_no_pool_is_local_work():
    cfg = config_from_mapping(BASE)
    assert cfg.pools == () and cfg.stratum.failover_after_s == 3.0


def test_pools_in_priority_order_with_their_options(tmp_path: Path):
    (tmp_path / "pw").write_text("s3cret\n")
    (tmp_path / "agent.toml").write_text(
        '[chain]\nport = "/dev/ttyUSB0"\n[board]\nport = "/dev/ttyACM0"\n'
        '[[pool]]\nurl = "stratum+tcp://pool.example.net:3333"\nuser = "addr.rig"\n'
        'password_file = "pw"\nsuggest_difficulty = 512\n'
        '[[pool]]\nurl = "stratum+ssl://backup.example.org:443"\nuser = "addr.rig"\n'
        'version_rolling = false\nextranonce_subscribe = true\n'
        '[stratum]\nfailover_after_s = 5\nretry_max_s = 4\n')
    cfg = load_config(tmp_path / "agent.toml")
    assert [p.url for p in cfg.pools] == ["stratum+tcp://pool.example.net:3333",
                                         "stratum+ssl://backup.example.org:443"]
    assert cfg.pools[0].password_file == str(tmp_path / "pw")
    assert cfg.stratum.failover_after_s == 5.0 and cfg.stratum.retry_max_s == 4.0
    first = PoolEndpoint.from_config(cfg.pools[0])
    second = PoolEndpoint.from_config(cfg.pools[1])
    assert (first.host, first.port, first.tls, first.password) == \
        ("pool.example.net", 3333, False, "s3cret")
    assert first.suggest_difficulty == 512.0 and first.version_rolling
    assert (second.tls, second.password, second.version_rolling, second.extranonce_subscribe) == \
        (True, "x", False, True)


@pytest.mark.parametrize(("pool", "message"), [
    ({"url": "http://pool:80", "user": "u"}, "pool[0].url: 'http://pool:80' is not "
                                             "stratum+tcp://HOST:PORT"),
    ({"url": "stratum+tcp://pool:3333"}, "pool[0].user: required"),
    ({"user": "u"}, "pool[0].url: required"),
    ({"url": "stratum+tcp://pool:3333", "user": "u", "password": "a", "password_file": "b"},
     "pool[0]: give password or password_file, not both"),
    ({"url": "stratum+tcp://pool:3333", "user": "u", "colour": 1},
     "pool[0].colour: unknown key"),
    ({"url": "stratum+tcp://pool:3333", "user": "u", "suggest_difficulty": 0},
     "pool[0].suggest_difficulty: 0 is out of range"),
])
def test_bad_pool_entries_name_the_entry_and_key(pool, message):
    assert message in error_of(with_pools(pool))


def test_a_single_pool_table_is_a_mistake_with_a_hint():
    raw = {**BASE, "pool": {"url": "stratum+tcp://pool:3333", "user": "u"}}
    assert "pool: expected a list of tables ([[pool]]" in error_of(raw)


def test_retry_bounds_must_be_ordered():
    assert "stratum.retry_max_s" in error_of({**BASE, "stratum": {"retry_min_s": 10,
                                                                   "retry_max_s": 5}})


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(["--chain", "/dev/ttyUSB0", "--board", "/dev/ttyACM0", *argv])


def test_pool_flags_in_priority_order(tmp_path: Path):
    (tmp_path / "pw").write_text("p\n")
    cfg = config_from_args(parse("--pool", "stratum+tcp://a.example:3333",
                                 "--pool", "stratum+ssl://b.example:443",
                                 "--pool-user", "addr.rig",
                                 "--pool-password-file", str(tmp_path / "pw")))
    assert [(p.url, p.user, p.password_file) for p in cfg.pools] == [
        ("stratum+tcp://a.example:3333", "addr.rig", str(tmp_path / "pw")),
        ("stratum+ssl://b.example:443", "addr.rig", str(tmp_path / "pw"))]
    two = config_from_args(parse("--pool", "stratum+tcp://a:1", "--pool", "stratum+tcp://b:2",
                                 "--pool-user", "one", "--pool-user", "two"))
    assert [p.user for p in two.pools] == ["one", "two"]
    assert all(p.password_file is None for p in two.pools)


def test_pool_flags_replace_the_files_pools(tmp_path: Path):
    (tmp_path / "agent.toml").write_text(
        '[chain]\nport = "/dev/ttyUSB0"\n[board]\nport = "/dev/ttyACM0"\n'
        '[[pool]]\nurl = "stratum+tcp://file.example:3333"\nuser = "f"\n')
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--config", str(tmp_path / "agent.toml"),
                              "--pool", "stratum+tcp://flag.example:3333", "--pool-user", "u"])
    assert [p.url for p in config_from_args(args).pools] == ["stratum+tcp://flag.example:3333"]
    args = parser.parse_args(["--config", str(tmp_path / "agent.toml")])
    assert [p.url for p in config_from_args(args).pools] == ["stratum+tcp://file.example:3333"]


@pytest.mark.parametrize(("argv", "message"), [
    (("--pool", "stratum+tcp://a:1"), "--pool-user USER is required with --pool"),
    (("--pool-user", "u"), "give --pool URL as well"),
    (("--pool", "stratum+tcp://a:1", "--pool", "stratum+tcp://b:2", "--pool", "stratum+tcp://c:3",
      "--pool-user", "u", "--pool-user", "v"), "--pool-user: give it once for all --pool"),
    (("--pool", "tcp://a:1", "--pool-user", "u"), "pool[0].url"),
])
def test_bad_pool_flags(argv, message):
    with pytest.raises(ConfigError) as exc:
        config_from_args(parse(*argv))
    assert message in str(exc.value)


def test_an_unreadable_password_file_is_a_config_error(tmp_path: Path):
    cfg = config_from_mapping(with_pools({"url": "stratum+tcp://a:1", "user": "u",
                                          "password_file": str(tmp_path / "missing")}))
    with pytest.raises(ConfigError, match=r"pool\.password_file: cannot read"):
        PoolEndpoint.from_config(cfg.pools[0])


@pytest.mark.parametrize(("text", "message"), [
    ("\n", "is empty (leave password_file out"),
    ("one\ntwo\n", "holds more than one line"),
    ("pa\x07ss\n", "holds the control character"),
])
def test_a_password_file_the_pool_could_not_use_is_refused(tmp_path: Path, text, message):
    (tmp_path / "pw").write_text(text)
    cfg = config_from_mapping(with_pools({"url": "stratum+tcp://a:1", "user": "u",
                                          "password_file": str(tmp_path / "pw")}))
    with pytest.raises(ConfigError, match=r"pool\[0\]\.password_file: ") as exc:
        pool_endpoints(cfg)
    assert message in str(exc.value)


@pytest.mark.parametrize(("user", "message"), [
    ("  ", "pool[0].user: the worker name is empty"),
    ("addr.rig ", "has blanks around it"),
    ("addr\trig", "control character"),
])
def test_a_worker_name_the_pool_could_not_use_is_refused(user, message):
    cfg = config_from_mapping(with_pools({"url": "stratum+tcp://a:1", "user": user}))
    with pytest.raises(ConfigError) as exc:
        pool_endpoints(cfg)
    assert message in str(exc.value)


def test_the_pool_endpoints_keep_the_order_and_a_tls_pool_needs_a_readable_ca(tmp_path: Path):
    cfg = config_from_mapping(with_pools(
        {"url": "stratum+tcp://a:1", "user": "u", "password": "p w"},
        {"url": "stratum+ssl://b:2", "user": "u"}))
    assert [(e.host, e.tls, e.password) for e in pool_endpoints(cfg)] == [
        ("a", False, "p w"), ("b", True, "x")]
    bad = config_from_mapping(with_pools({"url": "stratum+ssl://b:2", "user": "u",
                                          "ca_file": str(tmp_path / "none.pem")}))
    with pytest.raises(ConfigError, match="ca_file"):
        pool_endpoints(bad)
