"""Prometheus metrics of a `DeviceView` (`prometheus_client`), named as Prometheus asks: one
`gridminer_` prefix, base units (watts, volts, amperes, hertz, celsius, joules, ratio), `_total`
counters for what accumulates (energy, hashes, shares, hardware errors, grid commands by
result), gauges for what is measured now. A figure the agent does not have is left out."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agent.grid.contract import MODES
from agent.surface.view import DeviceView

PREFIX = "gridminer_"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _gauge(name: str, doc: str, value: float | None) -> Iterator[Metric]:
    if value is not None:
        yield GaugeMetricFamily(PREFIX + name, doc, value=value)


def _scaled(value: float | None, factor: float) -> float | None:
    return None if value is None else value * factor


def metrics_of(view: DeviceView) -> Iterator[Metric]:
    """Every metric family of one view."""
    ident = view.identity
    info = GaugeMetricFamily(PREFIX + "build_info", "The agent's version and the chain it runs",
                             labels=["version", "asic_model", "chips"])
    info.add_metric([ident.version, ident.family, str(ident.chips)], 1.0)
    yield info
    mode = GaugeMetricFamily(PREFIX + "mode", "The governor's mode (1: the current one)",
                             labels=["mode"])
    for name in MODES:
        mode.add_metric([name], 1.0 if name == view.mode else 0.0)
    yield mode
    yield from _gauge("board_up", "1 while the board's sample is current", float(view.board_ok))
    yield from _gauge("uptime_seconds", "Seconds since the agent started", view.uptime_s)
    yield from _gauge("power_watts", "Measured power", view.power_w)
    yield from _gauge("power_target_watts", "The power the governor is steering to",
                      view.target_w)
    yield from _gauge("power_min_watts", "The lowest power the device declares", view.min_w)
    yield from _gauge("power_max_watts", "The envelope's power cap", view.max_w)
    yield from _gauge("input_volts", "Board input voltage", view.input_v)
    yield from _gauge("input_amperes", "Board input current", view.input_a)
    yield from _gauge("core_volts", "Chip core voltage", _scaled(view.vcore_mv, 1e-3))
    yield from _gauge("frequency_hertz", "Chip clock", _scaled(view.freq_mhz, 1e6))
    temps = GaugeMetricFamily(PREFIX + "temperature_celsius", "Temperatures",
                              labels=["sensor"])
    for sensor, value in (("chip_max", view.chip_temp_c), ("board", view.board_temp_c),
                          ("vr", view.vr_temp_c)):
        if value is not None:
            temps.add_metric([sensor], value)
    yield temps
    yield from _gauge("fan_rpm", "Fan speed (revolutions per minute)", view.fan_rpm)
    yield from _gauge("fan_duty_ratio", "Fan duty, 0 to 1", _scaled(view.fan_pct, 0.01))
    yield from _gauge("hashrate_hashes_per_second", "Hashrate from verified nonces (windowed)",
                      _scaled(view.hashrate_ghs, 1e9))
    yield from _gauge("expected_hashrate_hashes_per_second",
                      "Frequency x small cores x chips", _scaled(view.expected_hashrate_ghs, 1e9))
    yield CounterMetricFamily(PREFIX + "energy_joules", "Energy measured since start",
                              value=view.energy_j_total)
    yield CounterMetricFamily(PREFIX + "hashes", "Hashes proven by verified nonces",
                              value=view.hashes_total)
    yield CounterMetricFamily(PREFIX + "hardware_errors", "Nonces that failed verification",
                              value=view.hw_errors_total)
    shares = CounterMetricFamily(PREFIX + "shares", "Shares answered by the pools",
                                 labels=["result"])
    for result, count in sorted(view.shares_total.items()):
        shares.add_metric([result], count)
    yield shares
    commands = CounterMetricFamily(PREFIX + "commands", "Signed grid commands by result",
                                   labels=["result"])
    for result, count in sorted(view.commands_total.items()):
        commands.add_metric([result], count)
    yield commands


class ViewCollector(Collector):
    """A collector of the latest view (`latest()` returns None before the first one)."""

    def __init__(self, latest: Callable[[], DeviceView | None]) -> None:
        self.latest = latest

    def collect(self) -> Iterator[Metric]:
        view = self.latest()
        if view is not None:
            yield from metrics_of(view)


def exposition(latest: Callable[[], DeviceView | None]) -> Callable[[], bytes]:
    """The text exposition of the latest view, as a function to call per scrape."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ViewCollector(latest))
    return lambda: generate_latest(registry)
