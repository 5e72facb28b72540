"""The outward surfaces' pieces without sockets (agent/surface): the listen address, the
published view and its totals, the AxeOS JSON and the Prometheus text of a view."""

from __future__ import annotations

import argparse
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.config import add_arguments, config_from_args, config_from_mapping
from agent.errors import ConfigError
from agent.surface import axeos
from agent.surface.listen import is_loopback, parse_listen
from agent.surface.metrics import exposition
from agent.surface.view import Identity, Tally, ViewPublisher

CHAIN = {"chain": {"port": "/dev/null", "family": "BM1370", "chips": 4},
         "board": {"port": "/dev/null"}}


@pytest.mark.parametrize(("text", "expected"), [
    ("8080", ("127.0.0.1", 8080)),
    (":80", ("127.0.0.1", 80)),
    ("0.0.0.0:80", ("0.0.0.0", 80)),
    ("[::1]:9100", ("::1", 9100)),
    ("miner.local:8000", ("miner.local", 8000)),
])
def test_a_listen_address_defaults_to_loopback(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["host", "1.2.3.4:99999", "a b:80", "", "[zz]:80", "80:"])
def test_a_bad_listen_address_is_refused_by_name(text: str) -> None:
    with pytest.raises(ConfigError, match=r"http\.listen"):
        parse_listen(text)


def test_only_loopback_addresses_count_as_this_machine() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("127.9.8.7") and is_loopback("::1")
    assert is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5")
    assert not is_loopback("miner.local")


def test_the_listener_comes_from_the_file_or_the_flag() -> None:
    assert config_from_mapping(CHAIN).http.listen is None
    cfg = config_from_mapping({**CHAIN, "http": {"listen": "0.0.0.0:80"}})
    assert cfg.http.listen == "0.0.0.0:80"
    with pytest.raises(ConfigError, match=r"http\.listen: 'nowhere'"):
        config_from_mapping({**CHAIN, "http": {"listen": "nowhere"}})
    with pytest.raises(ConfigError, match=r"http\.port"):
        config_from_mapping({**CHAIN, "http": {"port": 80}})
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--chain", "/dev/null", "--board", "/dev/null", "--http", "9100"])
    assert config_from_args(args).http.listen == "9100"


def test_a_total_only_grows_and_a_restarted_count_adds_to_it() -> None:
    t = Tally()
    assert t.advance(None) == 0.0
    assert t.advance(5) == 5.0
    assert t.advance(7, weight=2.0) == 9.0
    assert t.advance(3) == 12.0  # the source started again from zero and counted 3
    assert t.advance(float("nan")) == 12.0
    assert t.advance(4) == 13.0


IDENTITY = Identity(family="BM1370", chips=4, small_cores=2040, version="gridminer-9",
                    hostname="shed", mac="AA:BB:CC:DD:EE:FF", pool_host="pool.example",
                    pool_port=3333, pool_user="bc1q.w1")


class FakeRuntime:
    """The parts of agent.control.runtime.Runtime a ViewPublisher reads."""

    def __init__(self) -> None:
        self.snap: dict[str, Any] = {
            "mode": "mining", "target_w": 60.0, "power_w": 59.5, "hashrate_ghs": 4100.0,
            "freq_mhz": 500.0, "vcore_mv": 1140, "temp_c": 61.0, "board_temp_c": 40.0,
            "fan_pct": 35, "hw_err": 2, "chips_ok": 4, "energy_wh": 1.0, "board": "ok",
            "pool": "stratum+tcp://pool.example:3333", "pool_accepted": 10,
            "pool_rejected": 1, "pool_stale": 0}
        self.sample = SimpleNamespace(vin_v=12.0, iin_a=4.96, vr_temp_c=48.0, fan_rpm=3000)
        self.chain = SimpleNamespace(valid=100, ticket_difficulty=64.0,
                                     expected_hashrate_ghs=4080.0)
        self.governor = SimpleNamespace(caps=lambda: {"min_w": 19.0, "max_w": 70.0})
        self.grid = SimpleNamespace(counters={"accepted": 3, "rejected": 1})

    def snapshot(self) -> dict[str, Any]:
        return dict(self.snap)


def test_the_view_is_rebuilt_at_its_period_with_totals_from_the_runtime() -> None:
    rt = FakeRuntime()
    pub = ViewPublisher(rt, IDENTITY, period_s=0.5)
    assert pub.latest() is None
    pub.refresh(100.0)
    view = pub.latest()
    assert view is not None and view.power_w == 59.5 and view.vr_temp_c == 48.0
    assert view.energy_j_total == pytest.approx(3600.0)
    assert view.hashes_total == 100 * 64 * 2**32
    assert view.commands_total == {"accepted": 3, "rejected": 1, "duplicate": 0}
    rt.snap["energy_wh"] = 2.0
    rt.chain.valid = 150
    pub.refresh(100.2)  # not due yet
    assert pub.latest() is view
    pub.refresh(100.5)
    later = pub.latest()
    assert later is not None and later.uptime_s == pytest.approx(0.5)
    assert later.energy_j_total == pytest.approx(7200.0)
    assert later.hashes_total == 150 * 64 * 2**32


def test_a_lost_board_leaves_the_measured_figures_out_of_the_axeos_info() -> None:
    rt = FakeRuntime()
    rt.snap.update(board="lost", power_w=None, temp_c=None, board_temp_c=None, vcore_mv=None,
                   fan_pct=None)
    pub = ViewPublisher(rt, IDENTITY)
    pub.refresh(0.0)
    view = pub.latest()
    assert view is not None and not view.board_ok and view.vr_temp_c is None
    info = axeos.system_info(view)
    for gone in ("power", "temp", "vrTemp", "voltage", "current", "fanrpm"):
        assert gone not in info
    # what pyasic's config reader and expected hashrate need is always there
    for kept in ("stratumURL", "stratumPort", "stratumUser", "autofanspeed", "smallCoreCount",
                 "asicCount", "frequency", "macAddr", "ASICModel"):
        assert kept in info


def test_the_axeos_info_speaks_esp_miner_units() -> None:
    pub = ViewPublisher(FakeRuntime(), IDENTITY)
    pub.refresh(0.0)
    view = pub.latest()
    assert view is not None
    info = axeos.system_info(view)
    assert info["hashRate"] == 4100.0  # GH/s
    assert info["voltage"] == 12000.0 and info["current"] == 4960.0  # mV, mA
    assert info["temp"] == 61.0 and info["vrTemp"] == 48.0 and info["power"] == 59.5
    assert (info["stratumURL"], info["stratumPort"]) == ("pool.example", 3333)
    assert info["sharesAccepted"] == 10 and info["miningPaused"] is False
    assert axeos.system_asic(view)["asicCount"] == 4
    assert "AxeOS-compatible" in axeos.index_page(view)
    assert "AxeOS-compatible" in axeos.index_page(None)


def test_the_metrics_are_in_base_units_and_leave_unknown_figures_out() -> None:
    rt = FakeRuntime()
    pub = ViewPublisher(rt, IDENTITY)
    render = exposition(pub.latest)
    assert render() == b""  # nothing before the first view
    pub.refresh(0.0)
    families = {f.name: f for f in text_string_to_metric_families(render().decode())}
    assert families["gridminer_energy_joules"].type == "counter"
    assert families["gridminer_energy_joules"].samples[0].name.endswith("_total")
    assert families["gridminer_core_volts"].samples[0].value == pytest.approx(1.14)
    assert families["gridminer_fan_duty_ratio"].samples[0].value == pytest.approx(0.35)
    assert families["gridminer_hashrate_hashes_per_second"].samples[0].value == 4.1e12
    temps = {s.labels["sensor"]: s.value for s in families["gridminer_temperature_celsius"]
             .samples}
    assert temps == {"chip_max": 61.0, "board": 40.0, "vr": 48.0}
    rt.snap.update(board="lost", power_w=None, temp_c=None, board_temp_c=None)
    pub.refresh(1.0)
    families = {f.name: f for f in text_string_to_metric_families(render().decode())}
    assert "gridminer_power_watts" not in families
    assert families["gridminer_board_up"].samples[0].value == 0.0
    assert not families["gridminer_temperature_celsius"].samples


def test_the_view_follows_a_running_runtime_and_a_failing_hook_stops_nothing(caplog) -> None:
    from test_driver_runtime import make, run_for

    from agent.config import config_from_mapping as cfg_of

    clock, _port, _board, driver, rt, _lines, _closed, _cfg = make()
    cfg = cfg_of({"chain": {"port": "x", "chips": 4}, "board": {"port": "y"}})
    pub = ViewPublisher(rt, Identity.from_config(cfg))

    def broken(now_s: float) -> None:
        raise RuntimeError("a surface bug")

    rt.on_tick += [broken, pub.refresh]
    run_for(rt, clock, 5.0)
    view = pub.latest()
    assert driver.hashing and view is not None  # the loop went on past the broken hook
    assert view.mode == "mining" and view.power_w is not None and view.power_w > 0
    assert view.energy_j_total > 0  # (the fake chain returns no nonces: hashes in the agent test)
    assert view.identity.family == "BM1370" and len(view.identity.mac) == 17
    assert "a tick hook failed" in caplog.text
