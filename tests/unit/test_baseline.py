"""The baseline dispatcher's logic (today's fleet tools): merit order, batches of 1 %, a
confirmation wait per batch, retries; fed status/telemetry maps as a broker would deliver them."""

from __future__ import annotations

import pytest

from agent.grid.telemetry import encode, status_map
from hil.site.baseline import (
    BaselineCore,
    BaselinePolicy,
    Machine,
    awake_plan,
    next_batch,
    shed_order,
)

SITE = "s1"


def fleet(n: int = 6) -> list[Machine]:
    """dev-0 is the most efficient (J/TH 20), dev-(n-1) the least."""
    return [Machine(f"dev-{i}", 100.0, 1000.0, 20.0 + 2 * i) for i in range(n)]


def test_batches_are_one_percent_clamped_to_ten_and_a_hundred():
    policy = BaselinePolicy()
    assert policy.batch_size(1300) == 13
    assert policy.batch_size(500) == 10
    assert policy.batch_size(20_000) == 100
    assert BaselinePolicy(batch_min=1).batch_size(6) == 1


def test_least_efficient_sleep_first_unknown_last():
    ms = [*fleet(3), Machine("mystery", 100.0, 1000.0, None)]
    assert [m.device for m in shed_order(ms)] == ["dev-2", "dev-1", "dev-0", "mystery"]


def test_the_awake_set_is_the_most_efficient_that_fit_the_target():
    ms = fleet(6)  # asleep 6 x 100 W = 600 W; each woken adds 900 W
    assert awake_plan(ms, 600.0) == set()
    assert awake_plan(ms, 2400.0) == {"dev-0", "dev-1"}  # 600 + 1800, a third would exceed
    assert awake_plan(ms, 2399.0) == {"dev-0"}
    assert awake_plan(ms, 1e9) == {m.device for m in ms}


def test_a_batch_sleeps_the_least_efficient_and_wakes_the_most_efficient():
    ms = fleet(6)
    everyone = {m.device for m in ms}
    down = next_batch(ms, everyone, 600.0, size=4)
    assert down.sleep == ("dev-5", "dev-4", "dev-3", "dev-2") and down.wake == ()
    up = next_batch(ms, set(), 1e9, size=4)
    assert up.wake == ("dev-0", "dev-1", "dev-2", "dev-3")
    busy = next_batch(ms, everyone, 600.0, size=4, busy={"dev-5"})
    assert busy.sleep[0] == "dev-4"
    assert not next_batch(ms, {"dev-0", "dev-1"}, 2400.0, size=4)  # already there


class Site:
    """Feeds a core the maps devices publish, with a clock the test moves."""

    def __init__(self, core: BaselineCore, n: int = 6) -> None:
        self.core = core
        self.now = 0.0
        for i in range(n):
            caps = {"min_w": 100, "max_w": 1000, "ramp_max_w_s": 500, "chips": 4,
                    "chip_model": "BM1370", "hashrate_max_ghs": 50_000 - 1000 * i}
            self.status(f"dev-{i}", "online", caps)
            self.telemetry(f"dev-{i}", "mining")

    def status(self, dev: str, state: str, caps: dict | None = None) -> None:
        caps = caps or {"min_w": 100, "max_w": 1000, "ramp_max_w_s": 500,
                        "hashrate_max_ghs": 50_000}
        self.core.observe(f"gridminer/{SITE}/{dev}/status",
                          encode(status_map(state, 1, "t", caps, None, 0)), self.now)

    def telemetry(self, dev: str, mode: str, **extra: float) -> None:
        self.core.observe(f"gridminer/{SITE}/{dev}/telemetry",
                          encode({"v": 1, "mode": mode, **extra}), self.now)

    def step(self, at_s: float) -> list[tuple[str, str]]:
        self.now = at_s
        return self.core.step(at_s)


@pytest.fixture
def site() -> Site:
    policy = BaselinePolicy(batch_min=2, batch_fraction=0.3, confirm_s=5.0, max_retries=1)
    return Site(BaselineCore(SITE, policy))


def test_it_learns_the_fleet_from_status_and_rates_efficiency_from_caps(site):
    ms = {m.device: m for m in site.core.machines(0.0)}
    assert set(ms) == {f"dev-{i}" for i in range(6)}
    assert ms["dev-0"].j_per_th == pytest.approx(1000 / 50.0)
    assert ms["dev-5"].j_per_th == pytest.approx(1000 / 45.0)
    assert site.core.estimate_w(0.0) == 6000.0


def test_measured_efficiency_overrides_the_rating(site):
    site.telemetry("dev-0", "mining", power_w=1000.0, hashrate_ghs=20_000.0)  # 50 J/TH
    assert {m.device: m for m in site.core.machines(0.0)}["dev-0"].j_per_th == 50.0
    site.core.set_target(5100.0)
    assert site.step(0.0) == [("dev-0", "curtail")]  # now the worst machine


def test_batches_wait_for_confirmation_and_retry_what_did_not_confirm(site):
    site.core.set_target(600.0)  # everything to sleep: 6 commands, 2 per batch
    assert site.step(0.0) == [("dev-5", "curtail"), ("dev-4", "curtail")]
    assert site.step(2.0) == []  # waiting out the confirmation
    site.telemetry("dev-5", "curtailed")  # dev-4 never confirms
    assert site.step(4.99) == []
    second = site.step(5.0)
    assert second == [("dev-4", "curtail"), ("dev-3", "curtail")]  # dev-4 retried first
    assert (site.core.batches[-1].confirmed, site.core.batches[-1].unconfirmed) == (1, 1)
    site.telemetry("dev-3", "curtailed")
    third = site.step(10.0)  # dev-4 failed its retry too: left out
    assert ("dev-4", "curtail") not in third and third[0] == ("dev-2", "curtail")
    assert site.core.given_up == 1
    assert "dev-4" not in {m.device for m in site.core.machines(10.0)}


def test_a_new_target_is_planned_at_once_when_idle(site):
    site.core.set_target(6000.0)
    assert site.step(0.0) == []  # all awake already
    site.core.set_target(5100.0)  # five awake (5 x 1000 W + 100 W asleep)
    assert site.step(0.5) == [("dev-5", "curtail")]


def test_offline_and_silent_devices_are_left_out(site):
    site.status("dev-5", "offline")
    assert "dev-5" not in {m.device for m in site.core.machines(0.0)}
    site.now = 20.0
    site.telemetry("dev-0", "mining")
    assert [m.device for m in site.core.machines(20.0)] == ["dev-0"]  # the rest went silent


def test_rejected_acks_are_counted(site):
    site.core.observe(f"gridminer/{SITE}/dev-1/ack",
                      encode({"v": 1, "result": "rejected", "reason": "bad_signature"}), 0.0)
    site.core.observe(f"gridminer/{SITE}/dev-1/ack", b"\xff", 0.0)
    assert site.core.rejected == {"bad_signature": 1}
