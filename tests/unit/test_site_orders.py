"""Which device commands the site controller sends: deadband, refresh before exp, the site ramp
shared by the moves in flight, site-wide commands; its seq across restarts; the meter."""

from __future__ import annotations

import random

import cbor2
import pytest

from agent.site.meter import Meter, reading_w
from agent.site.orders import Order, OrderBook, Want
from agent.site.sequence import SeqBlock


def book() -> OrderBook:
    return OrderBook(validity_s=60, refresh_s=20, deadband_frac=0.02, deadband_min_w=10,
                     rng=random.Random(1))


def want(share: int | None, power: float | None = None) -> Want:
    return Want(share, power, max_w=1000, ramp_max_w_s=500)


def answered(b: OrderBook, orders: list[Order], now_s: float, eta_s: float) -> None:
    """The orders went out and every device accepted its command at `now_s`, announcing its
    move's end `eta_s` later (what a device's ack says)."""
    for i, o in enumerate(orders):
        assert o.device is not None
        cmd_id = f"{o.device}{now_s}{i}".encode()
        b.issued(o.device, cmd_id)
        b.acked(o.device, cmd_id, now_s, eta_s)


def test_a_share_moving_less_than_the_deadband_sends_nothing() -> None:
    b = book()
    assert [o.power_w for o in b.plan(0.0, {"d": want(500, 500)}, 10_000)] == [500]
    assert b.plan(1.0, {"d": want(515, 500)}, 10_000) == []  # 2 % of 1000 W is 20 W
    orders = b.plan(2.0, {"d": want(530, 500)}, 10_000)
    assert [(o.device, o.op, o.power_w) for o in orders] == [("d", "setpoint", 530)]


def test_commands_are_bounded_and_refreshed_before_they_lapse() -> None:
    b = book()
    first = b.plan(0.0, {"d": want(500, 500)}, 10_000)[0]
    assert 51 <= first.validity_s <= 60
    assert b.plan(first.validity_s - 21, {"d": want(500, 500)}, 10_000) == []
    again = b.plan(first.validity_s - 19, {"d": want(500, 500)}, 10_000)
    assert [(o.op, o.power_w) for o in again] == [("setpoint", 500)]


def test_switching_off_is_a_standby_command() -> None:
    b = book()
    b.plan(0.0, {"d": want(500, 500)}, 10_000)
    orders = b.plan(1.0, {"d": want(None, 500)}, 10_000)
    assert [(o.op, o.power_w) for o in orders] == [("standby", None)]
    assert b.is_on("d") is False and b.switched_s["d"] == 1.0


def test_the_moves_in_flight_never_ramp_faster_than_the_site() -> None:
    b = book()
    wants = {"a": want(900, 100), "b": want(500, 100), "c": want(100, 100)}
    sent = b.plan(0.0, wants, 600)
    answered(b, sent, 0.01, 2.0)
    orders = {o.device: o for o in sent}
    # 800 W and 400 W to move with 600 W/s: shared in proportion, both end after 2 s
    assert orders["a"].ramp_w_s == 400 and orders["b"].ramp_w_s == 200
    assert orders["c"].ramp_w_s == 1  # no move: the least ramp a command can carry
    assert orders["a"].ramp_w_s + orders["b"].ramp_w_s <= 600
    # while they are under way the site's ramp is used up: a new move waits
    later = b.plan(1.0, {**wants, "c": want(600, 100)}, 600)
    assert later == [] and b.deferred == 1
    after = b.plan(2.5, {**wants, "c": want(600, 100)}, 600)
    assert [(o.device, o.ramp_w_s) for o in after] == [("c", 500)]  # its own limit


def test_a_move_held_back_keeps_its_share_of_the_site_ramp() -> None:
    """A device whose new share must wait goes on with its earlier move: another device's move
    may not take that ramp (else the site moves faster than its limit)."""
    b = book()
    first = b.plan(0.0, {"a": want(600, 0), "c": want(600, 0)}, 600)
    assert sorted(o.ramp_w_s for o in first) == [300, 300]  # both under way for 2 s
    answered(b, first, 0.01, 2.0)
    later = b.plan(0.5, {"b": want(500, 400), "a": want(1000, 150)}, 600)
    assert later == [] and b.deferred == 2  # the site's ramp is in use till 2.0
    assert b.in_flight_w_s(0.5) <= 600
    after = b.plan(2.5, {"b": want(500, 400), "a": want(1000, 600)}, 600)
    assert sorted(o.device for o in after) == ["a", "b"]
    assert sum(o.ramp_w_s or 0 for o in after) <= 600


def test_a_move_is_in_flight_until_its_device_answers_and_then_until_the_end_it_announced(
) -> None:
    """A command that reaches its device late (a busy broker or device) must not be overtaken by
    the next batch: its ramp stays taken until the device has answered, and then until the end
    the device announced, so the site never moves at two ramps at once."""
    b = book()
    first = b.plan(0.0, {"a": want(600, 0)}, 600)  # modelled: over at 1.0
    b.issued("a", b"cmd-a")
    late = {"a": want(600, 0), "b": want(600, 0)}
    assert b.plan(1.5, late, 600) == [] and b.deferred == 1  # no answer from "a" yet
    b.acked("a", b"older", 1.6, 0.0)  # an answer to another command says nothing of this move
    assert b.plan(1.7, late, 600) == []
    b.acked("a", b"cmd-a", 1.8, 1.0)  # it started late: over at 2.8 by its own estimate
    assert b.plan(2.5, late, 600) == [] and b.in_flight_w_s(2.5) == first[0].ramp_w_s
    assert [o.device for o in b.plan(2.9, late, 600)] == ["b"]


def test_a_move_never_answered_holds_the_ramp_for_a_bounded_time() -> None:
    b = book()
    b.plan(0.0, {"a": want(600, 0)}, 600)  # at its own 500 W/s: over at 1.2; ack_wait_s 2.0
    late = {"a": want(600, 600), "b": want(600, 0)}  # "a" got there; its answer was lost
    assert b.plan(3.1, late, 600) == []
    assert [o.device for o in b.plan(3.3, late, 600)] == ["b"]


def test_a_site_wide_command_goes_once_and_curtail_is_refreshed() -> None:
    b = book()
    b.plan(0.0, {"d": want(500, 500)}, 10_000)
    order = b.plan_site(1.0, "curtail", 50)
    assert order is not None and order.device is None and order.ramp_w_s == 50
    assert b.plan_site(2.0, "curtail", 50) is None
    assert b.plan_site(order.validity_s - 18, "curtail", 50) is not None  # refreshed
    assert b.plan_site(100.0, "standby", 50) is not None  # another op goes at once
    # back to shares: every device is addressed afresh
    assert [o.device for o in b.plan(600.0, {"d": want(500, 500)}, 10_000)] == ["d"]
    with pytest.raises(ValueError, match="no site-wide command"):
        b.plan_site(700.0, "resume", 50)  # the site's resume is a target, reached device by device


def test_the_seq_survives_a_restart_without_a_write_per_command(tmp_path) -> None:
    path = tmp_path / "seq.json"
    seq = SeqBlock(path, b"k", block=100)
    values = [seq.next() for _ in range(150)]
    assert values == sorted(set(values))
    writes = path.stat().st_mtime_ns
    seq.next()
    assert path.stat().st_mtime_ns == writes  # inside the reserved block
    again = SeqBlock(path, b"k", block=100)  # a kill -9 and a restart
    assert again.next() > values[-1]


def test_an_unreadable_seq_state_is_refused(tmp_path) -> None:
    path = tmp_path / "seq.json"
    path.write_text("{nonsense")
    with pytest.raises(Exception, match="seq state"):
        SeqBlock(path, b"k")


@pytest.mark.parametrize(("payload", "expected"), [
    (cbor2.dumps({"power_w": 1234.5}), 1234.5),
    (b'{"power_w": 99}', 99.0),
    (b"1500000", 1500000.0),
    (b"-3", None),
    (b"nan", None),
    (cbor2.dumps({"power_w": True}), None),
    (b"\xff\x00", None),
])
def test_meter_readings(payload: bytes, expected: float | None) -> None:
    assert reading_w(payload) == expected


def test_a_stale_meter_reads_nothing() -> None:
    meter = Meter("m", stale_s=3.0)
    meter.update(b"100", 10.0)
    meter.update(b"garbage", 11.0)
    assert meter.value_w(12.0) == 100.0 and meter.ignored == 1
    assert meter.value_w(13.5) is None


def test_a_share_up_to_the_device_s_rating_goes_however_small_the_move() -> None:
    """A fleet climbing together arrives at full power a little at a time: a deadband at the
    top would leave every device a few W short of its rating for good."""
    b = book()
    b.plan(0.0, {"d": want(985, 985)}, 10_000)
    assert [o.power_w for o in b.plan(1.0, {"d": want(1000, 985)}, 10_000)] == [1000]
    assert b.plan(2.0, {"d": want(1000, 1000)}, 10_000) == []
