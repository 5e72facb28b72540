"""The site controller's loop with its MQTT sides faked: the grid side (GridSession on a fake
link, the operator's signed commands and the site's acks, status and telemetry) and the fleet
(simulated devices answering the site's commands and publishing status and telemetry)."""

from __future__ import annotations

import itertools
import threading

import cbor2
import pytest

from tests.support.site_sim import SITE_SIGNER, TICK_S, FakeFleet, SimDevice, SiteSim, four_devices


def test_it_learns_the_fleet_before_it_goes_online_with_the_site_caps(tmp_path) -> None:
    rig = SiteSim(tmp_path)
    rig.run(1.0)
    assert not rig.link.started  # listening first
    rig.online()
    caps, mode = rig.link.status[-1]
    assert caps == {"min_w": 0, "max_w": 4000, "ramp_max_w_s": 1000, "chips": 16,
                    "chip_model": "site", "hashrate_max_ghs": pytest.approx(
                        sum(1e6 / (20 + 5 * i) for i in range(4)), rel=1e-3)}
    assert mode == "mining"
    rig.run(1.0)
    tele = rig.link.telemetry()[-1]
    assert tele["power_w"] == 4000 and tele["devices"] == 4 and tele["devices_total"] == 4
    assert tele["flex_up_w"] == 0 and tele["flex_down_w"] == 4000
    assert tele["flex_down_5m_w"] == 4000
    assert "temp_c" not in tele and "freq_mhz" not in tele
    # no command yet: the site's default, its max_w, reached with a command to each device
    assert sorted((c["dev"], c["op"], c["power_w"]) for c in rig.fleet.commands) == [
        (f"d{i}", "setpoint", 1000) for i in range(4)]


def test_the_site_checks_commands_like_a_device(tmp_path) -> None:
    rig = SiteSim(tmp_path).online()
    rig.send(power_w=5000)
    rig.run(TICK_S)
    assert rig.last_ack()["result"] == "rejected" and rig.last_ack()["reason"] == "out_of_range"
    rig.send(power_w=2000, signer=SITE_SIGNER)  # a key the site does not take from its operator
    rig.run(TICK_S)
    assert rig.last_ack()["reason"] == "bad_signature"
    rig.send(power_w=2000, ramp_w_s=2000)  # over the site's ramp limit
    rig.run(TICK_S)
    assert rig.last_ack()["reason"] == "out_of_range"
    rig.send(power_w=2000)
    rig.run(TICK_S)
    ack = rig.last_ack()
    assert ack["result"] == "accepted" and ack["applied_w"] == 2000
    assert ack["eta_ms"] == pytest.approx(2000, abs=300)  # 4000 -> 2000 W at 1000 W/s
    acks = len(rig.link.acks())
    rig.send(power_w=1000, topic="gridminer/s1/all/cmd")  # a site-wide command is not the site's
    rig.run(TICK_S)
    assert len(rig.link.acks()) == acks and rig.link.acked[-1] == rig.mid


def test_the_site_tracks_its_target_at_its_ramp_with_the_efficient_machines(tmp_path) -> None:
    rig = SiteSim(tmp_path).online()
    rig.send(power_w=1500)
    rig.run(8.0)
    assert rig.fleet.power_w == pytest.approx(1500, abs=15)
    steps = [abs(b - a) for a, b in zip(rig.powers, rig.powers[1:], strict=False)]
    assert max(steps) <= 1000 * TICK_S + 1  # never faster than the site's ramp
    devices = rig.fleet.devices
    assert devices["d0"].power_w == pytest.approx(1000, abs=20)
    assert devices["d3"].power_w == 0 and devices["d3"].mode == "standby"
    tele = rig.link.telemetry()[-1]
    assert tele["target_w"] == 1500 and tele["setpoint_w"] == 1500
    state = rig.controller.state()
    assert state["op"] == "setpoint" and state["setpoint_w"] == 1500
    assert {d["device"]: d["status"] for d in state["devices"]}["d3"] == "off"


def test_a_quiet_site_sends_no_commands_but_refreshes_before_exp(tmp_path) -> None:
    rig = SiteSim(tmp_path).online()
    rig.send(power_w=2000)
    rig.run(10.0)
    before = rig.fleet.published
    # no command is due for renewal before the earliest exp less the refresh lead (each
    # command's validity is jittered, so that moment is read from what was sent)
    refresh_s = rig.controller.settings.refresh_s
    quiet_s = min(c["exp"] for c in rig.fleet.commands) / 1000 - refresh_s - rig.clock.time()
    assert quiet_s > 10.0
    rig.run(quiet_s - 0.5)
    assert rig.fleet.published == before  # steady: within the deadband
    rig.run(40.0)
    assert rig.fleet.published > before  # the commands were renewed before they lapsed
    assert all(c["exp"] - c["iat"] <= 60_000 and c["fallback"] == "hold_until_exp"
               for c in rig.fleet.commands)
    assert rig.fleet.power_w == pytest.approx(2000, abs=20)


@pytest.mark.parametrize("fault", ["offline", "tripped", "silent"])
def test_a_lost_device_s_share_is_redistributed(tmp_path, fault: str) -> None:
    rig = SiteSim(tmp_path).online()
    rig.send(power_w=2000)
    rig.run(8.0)
    d0 = rig.fleet.devices["d0"]
    assert d0.power_w == pytest.approx(1000, abs=20)
    if fault == "offline":
        d0.online = False
        rig.fleet.status("d0")
    elif fault == "tripped":
        d0.mode, d0.target_w, d0.power_w = "tripped", 0.0, 0.0  # a trip cuts the power
    else:
        d0.answering = False  # still drawing, no telemetry: unknown, left out
    rig.run(8.0)
    others = sum(d.power_w for n, d in rig.fleet.devices.items() if n != "d0")
    assert others == pytest.approx(2000, abs=30)  # a silent device counts as lost
    status = {d["device"]: d["status"] for d in rig.controller.state()["devices"]}
    assert status["d0"] == {"offline": "offline", "tripped": "tripped", "silent": "stale"}[fault]
    # it was told to stand by: back, it does not jump to where it was (or to its default)
    assert [c["op"] for c in rig.fleet.commands if c["dev"] == "d0"][-1] == "standby"


def test_a_device_lagging_its_setpoint_is_held_and_the_others_make_up(tmp_path) -> None:
    rig = SiteSim(tmp_path).online()
    rig.fleet.devices["d0"].cap_w = 400.0  # thermally limited: never reaches its share
    rig.send(power_w=2500)
    rig.run(15.0)
    assert rig.fleet.power_w == pytest.approx(2500, abs=30)
    assert rig.controller.counters["lagging"] >= 1
    rig.send(power_w=300)  # a lagging device can still give load: the site goes down with it
    rig.run(10.0)
    assert rig.fleet.power_w == pytest.approx(300, abs=30)  # under the 400 W it draws


def test_model_error_is_trimmed_away(tmp_path) -> None:
    """Every device draws 5 % less than told: the PI trim on measured power closes the gap."""
    class Lossy(FakeFleet):
        def advance(self, dt_s: float) -> None:
            super().advance(dt_s)
            for dev in self.devices.values():
                dev.power_w = min(dev.power_w, dev.target_w * 0.95)

    rig = SiteSim(tmp_path, fleet=Lossy(four_devices())).online()
    rig.send(power_w=2000)
    rig.run(30.0)
    assert rig.fleet.power_w == pytest.approx(2000, abs=25)  # within a device's deadband
    assert rig.controller.trim_w > 50


def test_the_draw_of_boards_standing_by_is_no_error_that_grows_with_the_load(tmp_path) -> None:
    """Boards standing by still draw (fans, controller): counted as the load no share moves, it
    is not learnt by the trim as a share of the target, which would leave the site short once
    the target is higher and more boards are on."""
    class Idling(FakeFleet):
        def advance(self, dt_s: float) -> None:
            super().advance(dt_s)
            for dev in self.devices.values():
                if dev.mode == "standby":  # down at its ramp, to its own draw
                    dev.power_w = max(dev.power_w, 10.0)

    devices = {f"d{i}": SimDevice(100, 1000, 500, 20 + i, 10.0, 0.0, mode="standby")
               for i in range(10)}
    rig = SiteSim(tmp_path, fleet=Idling(devices), ramp_w_s=4000.0).online()
    rig.send(power_w=1500)
    rig.run(40.0)
    assert rig.fleet.power_w == pytest.approx(1500, abs=15)  # 8 boards standing by: 80 W
    rig.send(power_w=5000)
    rig.run(6.0)
    assert rig.fleet.power_w == pytest.approx(5000, abs=25)
    rig.run(20.0)
    # and down again: a board winding down to standby is no idle draw yet (no undershoot)
    rig.powers.clear()
    rig.send(power_w=1500)
    rig.run(20.0)
    assert min(rig.powers) >= 1500 - 25
    assert rig.fleet.power_w == pytest.approx(1500, abs=15)


def test_start_ups_are_spread(tmp_path) -> None:
    devices = {f"d{i}": SimDevice(400, 1000, 500, 20 + i, 0.0, 0.0, mode="standby")
               for i in range(12)}
    rig = SiteSim(tmp_path, devices, ramp_w_s=2000.0).online()
    rig.send("standby")
    rig.run(10.0)
    assert rig.fleet.power_w == 0
    rig.send(power_w=10_000)
    started = [0]
    for _ in range(40):
        rig.run(TICK_S)
        started.append(sum(1 for d in rig.fleet.devices.values() if d.target_w > 0))
    # 2000 W/s x 0.25 s over 400 W minimums: one start-up a tick at most
    assert max(b - a for a, b in itertools.pairwise(started)) == 1
    assert started[-1] == 10
    rig.run(2.0)
    assert rig.fleet.power_w == pytest.approx(10_000, abs=100)
    steps = [b - a for a, b in zip(rig.powers, rig.powers[1:], strict=False)]
    assert max(steps) <= 2000 * TICK_S + 1


def test_curtail_and_standby_go_on_the_site_topic_and_resume_to_every_device(tmp_path) -> None:
    rig = SiteSim(tmp_path).online()
    rig.send("curtail")
    rig.run(5.0)
    assert rig.fleet.commands[-1]["dev"] == "*" and rig.fleet.commands[-1]["op"] == "curtail"
    assert rig.fleet.commands[-1]["ramp_w_s"] == 250  # the site's 1000 W/s over four devices
    assert rig.fleet.power_w == pytest.approx(400)
    assert rig.link.status[-1][1] == "curtailed"
    sent = len(rig.fleet.commands)
    rig.send("resume")
    rig.run(TICK_S)
    ack = rig.last_ack()
    assert ack["applied_w"] == 4000 and ack["eta_ms"] == pytest.approx(3600, abs=300)
    rig.run(5.0)
    assert rig.fleet.power_w == 4000
    resumed = rig.fleet.commands[sent:]
    assert {c["dev"] for c in resumed} == {"d0", "d1", "d2", "d3"}  # every device, by name
    steps = [abs(b - a) for a, b in itertools.pairwise(rig.powers)]
    assert max(steps) <= 1000 * TICK_S + 1


def test_a_resume_from_curtail_stops_no_device_and_sends_each_one_command(tmp_path) -> None:
    """Every device is on at its minimum after a curtail. Stopping the worst on the way up, to
    start them again a second later, would drop the site's power while the grid asks for more;
    and a share recomputed every tick would flood the fleet with commands. Each device gets its
    share at the goal once, with a part of the site ramp, so the fleet climbs together."""
    devices = {f"d{i}": SimDevice(100, 1000, 500, 20 + 5 * i) for i in range(8)}
    rig = SiteSim(tmp_path, devices, ramp_w_s=2000.0).online()
    rig.send(power_w=7000)  # all eight needed: none is spare
    rig.run(10.0)
    rig.send("curtail")
    rig.run(5.0)
    assert rig.fleet.power_w == pytest.approx(800)
    sent, powers = len(rig.fleet.commands), len(rig.powers)
    rig.send(power_w=7000)
    rig.run(6.0)
    climb = rig.fleet.commands[sent:]
    assert all(c["op"] == "setpoint" for c in climb)  # no standby on the way up
    assert sorted(c["dev"] for c in climb) == sorted(devices)  # one command each
    assert rig.fleet.power_w == pytest.approx(7000, abs=70)
    rise = rig.powers[powers:]
    assert all(b >= a - 1e-6 for a, b in itertools.pairwise(rise))  # no dip
    assert max(b - a for a, b in itertools.pairwise(rise)) <= 2000 * TICK_S + 1


def test_a_device_whose_retained_status_was_lost_is_asked_again_and_dispatched(tmp_path) -> None:
    """After a restart the broker sends every retained status at once; beyond its queue for the
    controller (Mosquitto's max_queued_messages) they are dropped, and a device republishes
    only when its status changes. A device heard without one is asked for it again."""
    class Lossy(FakeFleet):
        def status(self, name: str) -> None:
            if name != "d3" or self.asked:  # d3's first status is lost in the burst
                super().status(name)

    rig = SiteSim(tmp_path, fleet=Lossy(four_devices())).online()
    assert rig.fleet.asked == ["d3"]  # its telemetry came, its status did not
    rig.send(power_w=3600)
    rig.run(10.0)
    assert rig.fleet.devices["d3"].power_w > 0  # dispatched like the others
    assert rig.fleet.power_w == pytest.approx(3600, abs=40)
    rig.run(10.0)
    assert rig.fleet.asked == ["d3"]  # asked once: its status came


def _standing_by(n: int = 12) -> dict[str, SimDevice]:
    """`n` devices of 400..1000 W in standby (a chain's power-on is a step of 400 W)."""
    return {f"d{i:02d}": SimDevice(400, 1000, 500, 20 + i, 0.0, 0.0, mode="standby")
            for i in range(n)}


def _starts_per_tick(rig: SiteSim, seconds: float) -> list[int]:
    """Devices switched on in each tick (their chain powered: target above 0)."""
    on = [sum(1 for d in rig.fleet.devices.values() if d.target_w > 0)]
    for _ in range(round(seconds / TICK_S)):
        rig.run(TICK_S)
        on.append(sum(1 for d in rig.fleet.devices.values() if d.target_w > 0))
    return [b - a for a, b in itertools.pairwise(on)]


@pytest.mark.parametrize("how", ["default", "resume", "lapsed", "default_now"])
def test_the_site_s_default_starts_the_fleet_a_batch_at_a_time(tmp_path, how: str) -> None:
    """No command yet, a resume, a lapsed command, a `default_now` fallback: the site moves to
    its default (max_w) at its ramp and never re-energises in one step: 2000 W/s x 0.25 s over
    400 W minimums is one start-up a tick."""
    rig = SiteSim(tmp_path, _standing_by(), ramp_w_s=2000.0)
    if how != "default":
        rig.online()
        rig.send("standby", validity_s=6.0 if how == "lapsed" else 900.0,
                 fallback="default_now" if how == "default_now" else None)
        rig.run(TICK_S)
        assert rig.fleet.commands[-1]["dev"] == "*" and rig.fleet.commands[-1]["op"] == "standby"
        for _ in range(40):  # the fleet stands by (a device still drawing is no start-up)
            if rig.fleet.power_w == 0:
                break
            rig.run(TICK_S)
        assert rig.fleet.power_w == 0
        if how == "resume":
            rig.send("resume")
        elif how == "default_now":
            rig.link.connected = False  # the site's link to the grid operator is lost
    starts = _starts_per_tick(rig, 12.0)
    assert max(starts) == 1 and sum(starts) == 12
    assert all(c["dev"] != "*" for c in rig.fleet.commands if c["op"] != "standby")
    rig.run(2.0)
    assert rig.fleet.power_w == 12_000
    steps = [b - a for a, b in itertools.pairwise(rig.powers)]
    assert max(steps) <= 2000 * TICK_S + 1


def test_a_restart_continues_from_the_fleet_and_the_active_command(tmp_path) -> None:
    rig = SiteSim(tmp_path).online()
    rig.send(power_w=2000)
    rig.run(10.0)
    seqs = [c["seq"] for c in rig.fleet.commands]
    # killed: a new controller on the same state folder, the fleet as it was
    again = SiteSim(tmp_path, clock=rig.clock, fleet=rig.fleet)
    again.run(3.0)
    assert again.controller.online and again.controller.target.setpoint_w == 2000
    assert again.controller.target.target_w == pytest.approx(2000, abs=20)  # from measured
    again.run(5.0)
    assert max(again.powers) - min(again.powers) < 50
    assert all(c["seq"] > max(seqs) for c in rig.fleet.commands[len(seqs):])


def test_the_meter_topic_closes_the_loop(tmp_path) -> None:
    rig = SiteSim(tmp_path, meter_topic="meter/s1/poc")
    rig.online()
    rig.send(power_w=2000)
    for _ in range(60):  # the meter sees 100 W more than the devices say (auxiliaries)
        rig.fleet.inbox.append(("meter/s1/poc", str(rig.fleet.power_w + 100).encode(), 0.0))
        rig.run(0.5)
    assert rig.fleet.power_w == pytest.approx(1900, abs=20)
    assert rig.link.telemetry()[-1]["power_w"] == pytest.approx(2000, abs=20)


def test_garbage_on_the_fleet_topics_is_ignored(tmp_path) -> None:
    rig = SiteSim(tmp_path).online()
    bad_caps = {"v": 1, "state": "online", "caps": {"min_w": float("nan"), "max_w": 1000,
                                                    "ramp_max_w_s": 10}}
    for topic, payload in (
            ("gridminer/s1/x1/telemetry", b"\xff\xfe not cbor"),
            ("gridminer/s1/x2/status", cbor2.dumps([1, 2, 3])),
            ("gridminer/s1/x3/status", cbor2.dumps(bad_caps)),
            ("gridminer/s1/x4/telemetry", cbor2.dumps({"power_w": -5, "mode": 7})),
            ("gridminer/s1/all/status", cbor2.dumps(bad_caps)),
            ("gridminer/s1/d0/ack", b"\x00"),
            ("gridminer/other/d9/telemetry", cbor2.dumps({"power_w": 1e9}))):
        rig.fleet.inbox.append((topic, payload, 0.0))
    rig.send(power_w=2000)
    rig.run(8.0)
    assert rig.fleet.power_w == pytest.approx(2000, abs=25)
    assert rig.link.status[-1][0]["max_w"] == 4000  # no stranger counted
    ignored = rig.controller.roster.ignored
    assert ignored["status_bad_caps"] == 1 and ignored["status_undecodable"] == 1
    assert ignored["telemetry_undecodable"] == 1


def test_a_device_that_rejects_the_site_s_commands_is_left_alone(tmp_path) -> None:
    rig = SiteSim(tmp_path).online()
    ack = {"v": 1, "result": "rejected", "reason": "bad_signature", "ts": 0}
    rig.fleet.inbox.append(("gridminer/s1/d0/ack", cbor2.dumps(ack), 0.0))
    rig.send(power_w=2000)
    rig.run(8.0)
    assert rig.controller.counters["device_rejected_bad_signature"] == 1
    status = {d["device"]: d["status"] for d in rig.controller.state()["devices"]}
    assert status["d0"] == "refusing"
    others = sum(d.power_w for n, d in rig.fleet.devices.items() if n != "d0")
    assert others == pytest.approx(2000 - rig.fleet.devices["d0"].power_w, abs=25)


def test_devices_whose_efficiency_moves_with_load_do_not_trade_places(tmp_path) -> None:
    """A miner is more efficient at lower load: with instant J/TH readings two alike devices
    would swap the load at every step; averaged readings and a margin keep them still."""
    class LoadDependent(FakeFleet):
        def telemetry(self, group: int = 0, groups: int = 1) -> None:
            for index, (name, dev) in enumerate(self.devices.items()):
                if index % groups == group and dev.power_w > 0:
                    j_th = dev.j_th * (0.8 + 0.2 * dev.power_w / dev.max_w)
                    msg = {"v": 1, "mode": dev.mode, "power_w": dev.power_w,
                           "hashrate_ghs": dev.power_w / j_th * 1e3}
                    self.inbox.append((f"gridminer/s1/{name}/telemetry", cbor2.dumps(msg), 0.0))

    devices = {n: SimDevice(100, 1000, 500, 25.0 + i * 0.2, 1000, 1000)
               for i, n in enumerate(("a", "b", "c"))}
    rig = SiteSim(tmp_path, fleet=LoadDependent(devices)).online()
    rig.send(power_w=1600)
    rig.run(20.0)
    before = rig.fleet.published
    rig.run(30.0)
    assert rig.fleet.published - before <= 3  # the refreshes, no trading of places
    assert rig.fleet.power_w == pytest.approx(1600, abs=25)


def test_a_fatal_grid_link_stops_the_dispatch_and_the_run(tmp_path) -> None:
    """The site's link gave up (another client holds device `site`): no command to the fleet
    from then on, whatever the controller is told or sees, and `run()` returns."""
    rig = SiteSim(tmp_path).online()
    rig.send(power_w=2000)
    rig.run(8.0)
    sent = len(rig.fleet.commands)
    rig.link.on_fatal("another client holds device id 'site'")
    assert rig.controller.fatal == "grid link: another client holds device id 'site'"
    rig.send(power_w=3000)  # what a still-queued command would ask
    rig.fleet.devices["d0"].online = False  # and a device lost: nothing is redistributed
    rig.fleet.status("d0")
    rig.run(60.0)  # past the refreshes and the exp of the device commands
    assert len(rig.fleet.commands) == sent
    stop = threading.Event()
    runner = threading.Thread(target=rig.controller.run, args=(stop,), daemon=True)
    runner.start()
    runner.join(5)
    assert not runner.is_alive() and not rig.link.started  # it stopped by itself


def test_the_site_s_min_w_is_the_standby_draw_its_devices_measured(tmp_path) -> None:
    """A device in standby still draws (board, fans): the site's min_w is what its devices
    drew in standby, not 0, and a setpoint below it is refused as a device's would be."""
    class StandbyDraw(FakeFleet):
        def advance(self, dt_s: float) -> None:
            super().advance(dt_s)
            for dev in self.devices.values():
                if dev.mode == "standby":
                    dev.power_w = max(dev.power_w, 12.5)

    rig = SiteSim(tmp_path, fleet=StandbyDraw(four_devices())).online()
    assert rig.link.status[-1][0]["min_w"] == 0  # none seen in standby yet: a lower bound
    rig.send("standby")
    rig.run(8.0)
    assert rig.fleet.power_w == 50.0
    assert rig.link.status[-1][0]["min_w"] == 50
    assert rig.link.telemetry()[-1]["flex_down_w"] == 0  # nothing left to shed
    rig.send(power_w=20)
    rig.run(TICK_S)
    assert rig.last_ack()["reason"] == "out_of_range"
    rig.send(power_w=1500)
    rig.run(8.0)
    assert rig.fleet.power_w == pytest.approx(1500, abs=25)
    assert rig.link.status[-1][0]["min_w"] == 50  # learned: it holds while they mine


@pytest.mark.parametrize("phase", range(4))
def test_the_site_s_caps_are_republished_as_soon_as_devices_are_lost(tmp_path, phase) -> None:
    """An operator keeps its setpoints within the caps of the site's retained status: when
    devices go, the status says so in the tick they go, not with the next telemetry."""
    rig = SiteSim(tmp_path).online()
    rig.run(TICK_S * phase)
    assert rig.link.status[-1][0]["max_w"] == 4000
    rig.fleet.devices["d0"].online = False
    rig.fleet.status("d0")
    rig.run(TICK_S)
    assert rig.link.status[-1][0]["max_w"] == 3000


def test_it_goes_online_once_the_retained_statuses_stop_coming(tmp_path) -> None:
    """A large fleet's retained statuses take a while to arrive: the site waits for the last
    of them (a roster that stopped growing), not a fixed time, so its caps are the fleet's."""
    rig = SiteSim(tmp_path)
    for i in range(12):  # one more device every tick for 3 s
        name = f"late{i}"
        rig.fleet.devices[name] = SimDevice(100, 1000, 500, 40 + i, 1000.0, 1000.0)
        rig.fleet.status(name)
        rig.run(TICK_S)
        assert not rig.link.started
    rig.run(1.5)
    assert rig.link.started and rig.link.status[-1][0]["max_w"] == 16_000
