"""`gridminer operator`: what every device would refuse is refused here, before anything is
signed, with a message that says why; acks read as sentences."""

from __future__ import annotations

import pytest

from agent.cli import build_parser
from agent.cli.grid_operator import command_fields, describe_ack, parse_duration

NOW_S = 1_800_000_000.0


def fields(*extra: str) -> dict:
    argv = ["operator", "setpoint", "--site", "s", "--device", "d", "--key", "k.pem", *extra]
    args = build_parser("operator").parse_args(argv)
    return command_fields(args, NOW_S)


def test_a_plain_setpoint_holds_fifteen_minutes() -> None:
    assert fields("--power-w", "40") == {"validity_s": 900.0, "power_w": 40}


@pytest.mark.parametrize(("argv", "message"), [
    (["--power-w", "-5"], "--power-w -5: a power target is 0 W or more"),
    (["--power-w", "5", "--ramp-w-s", "0"], "--ramp-w-s 0: a ramp limit is 1 W/s or more"),
    (["--power-w", "5", "--for", "48h"], "over the devices' maximum validity (24h;"),
    (["--power-w", "5", "--for", "15"], "has no unit: write 15s, 15m or 15h"),
    (["--power-w", "5", "--for", "soon"], "use e.g. 90s, 15m, 2h"),
    (["--power-w", "5", "--at", str(NOW_S - 60)], "60 s in the past"),
    (["--power-w", "5", "--at", str(NOW_S + 23 * 3600), "--for", "2h"],
     "25.0 h from now, over the devices' maximum validity"),
])
def test_what_a_device_would_refuse_is_refused_before_signing(argv: list[str],
                                                              message: str) -> None:
    with pytest.raises(ValueError) as err:
        fields(*argv)
    assert message in str(err.value)


def test_for_counts_from_at() -> None:
    got = fields("--power-w", "5", "--at", str(NOW_S + 3600), "--for", "10m")
    assert got["nbf_ms"] == int((NOW_S + 3600) * 1000)
    assert got["validity_s"] == pytest.approx(3600 + 600)  # exp = nbf + 10 min


def test_a_longer_validity_is_sent_when_the_devices_allow_it() -> None:
    assert fields("--power-w", "5", "--for", "48h", "--max-validity", "3d")["validity_s"] == \
        48 * 3600


def test_durations_take_units() -> None:
    assert [parse_duration(t) for t in ("90s", "15m", "2h", "1d")] == [90, 900, 7200, 86400]


def test_acks_read_as_sentences() -> None:
    assert describe_ack("d1", {"result": "accepted", "applied_w": 40.0, "limited_by": "ramp",
                               "eta_ms": 1300}) == "d1: accepted, 40 W, limited by ramp, eta 1.3 s"
    assert describe_ack("d2", {"result": "rejected", "reason": "expired",
                               "detail": "exp is in the past"}) == \
        "d2: rejected (expired): exp is in the past"
    assert describe_ack("d3", {"result": "accepted"}, rtt_s=0.0123) == \
        "d3: accepted, round trip 12 ms"


@pytest.mark.parametrize(("argv", "prog"), [
    (["agent", "--chian", "/dev/ttyUSB0"], "gridminer agent"),
    (["operator", "setpoint", "--site", "s", "--device", "d", "--key", "k", "--power-w", "4",
      "--bogus"], "gridminer operator setpoint"),
])
def test_a_mistyped_option_is_reported_by_its_subcommand(argv: list[str], prog: str,
                                                         capsys: pytest.CaptureFixture) -> None:
    from agent.cli import main

    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: {prog} ") and f"{prog}: error: unrecognized arguments" in err
