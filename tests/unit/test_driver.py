"""Chain driver: bring-up, job dispatch, nonce checks, ramps, stop, recovery (agent/chain)."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from driver_fake import EASY, FakeBoard, FakeChainPort, sha256d

from agent.chain.driver import ChainDriver
from agent.chain.recovery import WindDown
from agent.chain.settings import ChainSettings, job_interval_s
from agent.chain.takeover import probe_chain, read_running_chain
from agent.chain.work import LocalWorkSource, target_for
from agent.clock import FakeClock
from agent.errors import ChainError
from firmware_bridge import asic, bringup


def make(chips: int = 4, family: str = "BM1370", chip_family: str | None = None,
         board: bool = True, **kw):
    clock = FakeClock()
    port = FakeChainPort(family, chips, chip_family=chip_family)
    defaults: dict[str, Any] = dict(family=family, chips=chips, nonce_difficulty=EASY,
                                    ramp_step_mhz=25.0, ramp_interval_s=0.01, dead_min_s=5.0)
    defaults.update(kw)
    settings = ChainSettings(**defaults)
    source = LocalWorkSource(clock)
    drv = ChainDriver(port, settings, clock, source, board=FakeBoard(port) if board else None,
                      threaded=False)
    return clock, port, drv


def run_until(drv: ChainDriver, clock: FakeClock, cond, limit_s: float = 30.0) -> None:
    end = clock.monotonic() + limit_s
    while not cond():
        now = clock.monotonic()
        assert now < end, f"condition not met; state {drv.state} {drv.phase} {drv.error}"
        drv.poll(now)
        clock.advance(max(0.001, min(drv.next_deadline_s(now) - now, 0.05)))


def test_bring_up_four_bm1370_counts_addresses_switches_baud_and_ramps():
    clock, port, drv = make(4)
    drv.set_frequency(525.0)
    t0 = clock.monotonic()
    drv.bring_up(timeout_s=5.0)
    assert drv.hashing
    assert drv.addresses == [0, 64, 128, 192]
    assert [c.address for c in port.chips] == [0, 64, 128, 192]
    assert port.baudrate == 1000000 == port.chip_baud
    run_until(drv, clock, lambda: drv.state == "mining")
    assert clock.monotonic() - t0 < 1.0  # 4 chips to 525 MHz in 25 MHz steps, 10 ms apart
    assert port.freq_mhz == pytest.approx(525.0)
    # the family's init went out: enumeration, then the setup frames for 4 chips
    sent = b"".join(port.written)
    for frame, _ in bringup.enumeration_frames("BM1370") + bringup.setup_frames("BM1370", 4):
        assert frame in sent
    # HCN for the target was written after the ramp, jobs are going out
    assert bringup.hcn_frame("BM1370", 525.0, 4) in port.written
    assert len(port.jobs) >= 1


def test_enumeration_does_not_wait_a_fixed_second_once_all_chips_answered():
    clock, _port, drv = make(4, ramp_step_mhz=6.25)
    t0 = clock.monotonic()
    drv.bring_up(timeout_s=5.0)
    assert clock.monotonic() - t0 < 0.3


def test_wrong_chip_count_is_a_clear_chain_error():
    _clock, port, drv = make(4)
    port.n = 3
    port.reset()
    with pytest.raises(ChainError, match="expected 4 BM1370 chips on chain, found 3"):
        drv.bring_up(timeout_s=5.0)
    assert drv.fatal


def test_wrong_family_is_named():
    _clock, _port, drv = make(2, chip_family="BM1368")
    with pytest.raises(ChainError, match="is a BM1368, but the config says BM1370"):
        drv.bring_up(timeout_s=5.0)


def test_no_answer_is_a_chain_error():
    _clock, port, drv = make(2)
    port.hung = True
    port.reset = lambda: None  # type: ignore[method-assign]
    with pytest.raises(ChainError, match="no chip answered"):
        drv.bring_up(timeout_s=5.0)


def test_128_chip_chain_enumerates_with_address_interval_2():
    clock, port, drv = make(128)
    drv.bring_up(timeout_s=5.0)
    assert len(drv.addresses) == 128
    assert drv.addresses[:3] == [0, 2, 4] and drv.addresses[-1] == 254
    assert [c.address for c in port.chips] == drv.addresses
    port.emit_nonce(127)
    drv.poll(clock.monotonic())
    assert drv.stats(clock.monotonic()).chips[127].valid == 1


def test_jobs_go_out_at_the_family_cadence_with_the_chip_id_sequence():
    clock, port, drv = make(4, ramp_step_mhz=200.0)
    drv.bring_up()
    first = len(port.jobs), drv.jobs_sent
    run_until(drv, clock, lambda: drv.jobs_sent >= first[1] + 8)
    ids = [c.job_id for c in port.commands if c.kind == "job"]
    assert ids[:6] == [24, 48, 72, 96, 120, 16]
    assert job_interval_s("BM1370", 4, 525) == pytest.approx(0.125)
    assert job_interval_s("BM1366", 1, 485) == pytest.approx(2.0)
    assert job_interval_s("BM1397", 1, 425) == pytest.approx(0.0395, rel=0.01)
    # the time between jobs is the cadence
    times = []
    last = drv.jobs_sent
    end = clock.monotonic() + 1.0
    while clock.monotonic() < end:
        drv.poll(clock.monotonic())
        if drv.jobs_sent != last:
            times.append(clock.monotonic())
            last = drv.jobs_sent
        clock.advance(0.005)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps and all(0.12 <= g <= 0.135 for g in gaps)


def test_nonces_are_verified_and_counted_per_chip():
    clock, port, drv = make(4)
    drv.bring_up()
    drv.poll(clock.monotonic())
    for chip in (0, 1, 2, 2, 3):
        port.emit_nonce(chip)
    port.emit_nonce(1, valid=False)  # a nonce that does not hash below the target
    drv.poll(clock.monotonic())
    snap = drv.stats(clock.monotonic())
    assert [c.valid for c in snap.chips] == [1, 1, 2, 1]
    assert [c.hw_errors for c in snap.chips] == [0, 1, 0, 0]
    assert snap.valid == 5 and snap.hw_errors == 1


def test_rolled_version_bits_are_part_of_the_header():
    clock, port, drv = make(1)
    drv.bring_up()
    bits = 0x3 << 13
    start = 0
    while True:  # a nonce valid with the rolled version and not with the base version
        job_id, nonce = port.nonce_for(0, version_bits=bits, start=start)
        header = port.jobs[job_id].header80[:76] + nonce.to_bytes(4, "little")
        if int.from_bytes(sha256d(header), "little") > target_for(EASY):
            break
        start = (int.from_bytes(nonce.to_bytes(4, "little"), "big") & 0x1FFFF) + 1
    port.send_nonce(job_id, nonce, bits)
    port.send_nonce(job_id, nonce, 0)  # same nonce, base version: a different hash
    drv.poll(clock.monotonic())
    snap = drv.stats(clock.monotonic())
    assert snap.valid == 1 and snap.hw_errors == 1


def test_duplicate_nonce_counted_once():
    clock, port, drv = make(1)
    drv.bring_up()
    job_id, nonce = port.nonce_for(0)
    port.send_nonce(job_id, nonce)
    port.send_nonce(job_id, nonce)
    drv.poll(clock.monotonic())
    snap = drv.stats(clock.monotonic())
    assert snap.valid == 1 and snap.duplicates == 1


def test_late_nonce_for_a_reused_job_id_still_verifies():
    clock, port, drv = make(4, ramp_step_mhz=500.0)
    drv.bring_up()
    old_id = next(c.job_id for c in port.commands if c.kind == "job")
    job_id, nonce = port.nonce_for(0, job_id=old_id)
    # 16 more jobs: the id comes round again and the slot gets a new header
    run_until(drv, clock, lambda: drv.jobs_sent >= 17)
    port.send_nonce(job_id, nonce)
    drv.poll(clock.monotonic())
    snap = drv.stats(clock.monotonic())
    assert snap.valid + snap.hw_errors == 1
    assert snap.hw_errors == 0


def test_garbage_bytes_are_counted_not_raised():
    clock, port, drv = make(2)
    drv.bring_up()
    port.inject(bytes(range(256)) + b"\xaa\x55\x01\x02\x03\x04\x05\x06\x07\x08\x09")
    port.emit_nonce(1)
    drv.poll(clock.monotonic())
    snap = drv.stats(clock.monotonic())
    assert snap.discarded_bytes > 200
    assert snap.crc_errors >= 1
    assert snap.chips[1].valid == 1


def test_runtime_frequency_change_ramps_in_steps_then_rewrites_hcn():
    clock, port, drv = make(2, ramp_step_mhz=25.0, ramp_interval_s=0.02)
    drv.set_frequency(500.0)
    drv.bring_up()
    run_until(drv, clock, lambda: drv.state == "mining")
    port.written.clear()
    drv.set_frequency(300.0)
    times = []
    freqs = []
    while drv.state != "mining" or drv.freq_mhz != 300.0 or not freqs:
        now = clock.monotonic()
        before = drv.freq_mhz
        drv.poll(now)
        if drv.freq_mhz != before:
            times.append(now)
            freqs.append(drv.freq_mhz)
        clock.advance(0.005)
    drv.poll(clock.monotonic())
    assert freqs[-1] == 300.0 and freqs[0] == 475.0
    assert all(abs(a - b) <= 25.0 for a, b in zip([500.0, *freqs], freqs, strict=False))
    assert all(b - a >= 0.02 - 1e-9 for a, b in itertools.pairwise(times))
    plls = [w for w in port.written if w[5] == asic.REG_PLL0 and w[2] == 0x51]
    assert len(plls) == 8
    assert port.written.index(bringup.hcn_frame("BM1370", 300.0, 2)) > port.written.index(plls[-1])


def test_frequency_is_clamped_to_settings():
    _clock, _port, drv = make(1, max_freq_mhz=600.0)
    drv.set_frequency(5000.0)
    assert drv.target_freq_mhz == 600.0
    drv.set_frequency(1.0)
    assert drv.target_freq_mhz == 50.0


def test_stop_ramps_to_minimum_and_sends_no_more_jobs():
    clock, port, drv = make(2, ramp_step_mhz=100.0)
    drv.set_frequency(450.0)
    drv.bring_up()
    run_until(drv, clock, lambda: drv.state == "mining")
    drv.stop(clock.monotonic())
    run_until(drv, clock, lambda: drv.state == "idle")
    assert port.freq_mhz == pytest.approx(50.0)
    jobs = drv.jobs_sent
    for _ in range(50):
        drv.poll(clock.monotonic())
        clock.advance(0.05)
    assert drv.jobs_sent == jobs
    assert bringup.hcn_frame("BM1370", 50.0, 2) in port.written


def test_probe_lists_family_count_and_addresses():
    clock = FakeClock()
    port = FakeChainPort("BM1370", 3)
    result = probe_chain(port, clock)
    assert result.family == "BM1370" and result.count == 3
    assert result.addresses == (0, 85, 170)


def test_probe_without_chips_raises():
    clock = FakeClock()
    port = FakeChainPort("BM1370", 1)
    port.hung = True
    with pytest.raises(ChainError, match="no chip answered"):
        probe_chain(port, clock, family="BM1370")


def turn_flaky(port: FakeChainPort, chip: int) -> None:
    """The chip returns nonces that fail verification, enough of them to be called flaky."""
    for _ in range(16):
        port.emit_nonce(chip, valid=False)


def test_recovery_goes_on_with_fewer_chips_but_keeps_every_address(caplog):
    clock, port, drv = make(4)
    drv.bring_up()
    turn_flaky(port, 1)
    real_reset = port.reset

    def reset_with_chip_1_silent():
        real_reset()
        port.chips[1].silent = True  # after the reset it no longer answers a chip-ID read

    port.reset = reset_with_chip_1_silent  # type: ignore[method-assign]
    run_until(drv, clock, lambda: drv.recoveries == 1)
    assert "chip 1 (address 64) is flaky; resetting" in caplog.text
    run_until(drv, clock, lambda: drv.hashing)
    assert "only 3 of 4 chips answer" in caplog.text
    assert drv.addresses == [0, 64, 128, 192]
    assert [c.address for c in port.chips] == [0, 64, 128, 192]
    port.emit_nonce(3)
    drv.poll(clock.monotonic())
    assert drv.stats(clock.monotonic()).chips[3].valid == 1


def test_a_chip_silent_when_the_chain_was_probed_is_taken_when_it_answers_again(caplog):
    """The agent counted the chips at start (no `chips` in its config) while one was silent:
    when a later bring-up finds the whole chain, it mines with all of it, instead of failing
    "expected 3, found 4" until a restart. A count the config gives is still enforced."""
    def on_four_chips(**kw: Any) -> tuple[FakeClock, ChainDriver]:
        clock = FakeClock()
        port = FakeChainPort("BM1370", 4)
        settings = ChainSettings(family="BM1370", chips=3, nonce_difficulty=EASY, **kw)
        return clock, ChainDriver(port, settings, clock, LocalWorkSource(clock),
                                  board=FakeBoard(port), threaded=False)

    clock, drv = on_four_chips(chips_probed=True)
    drv.bring_up()
    run_until(drv, clock, lambda: drv.hashing)
    assert "4 chips answer, 3 answered the probe at start" in caplog.text
    assert drv.addresses == [0, 64, 128, 192]
    assert drv.stats(clock.monotonic()).chips_expected == 4
    clock, drv = on_four_chips(start_attempts=1)
    with pytest.raises(ChainError, match="expected 3 BM1370 chips on chain, found 4"):
        drv.bring_up()


def test_first_bring_up_retries_before_giving_up():
    _clock, port, drv = make(2)
    real_reset = port.reset
    calls = []

    def flaky_reset():
        calls.append(1)
        real_reset()
        if len(calls) == 1:
            port.hung = True  # the first attempt sees nothing

    port.reset = flaky_reset  # type: ignore[method-assign]
    drv.bring_up(timeout_s=10.0)
    assert drv.hashing and len(calls) == 2


def test_bm1397_midstate_index_selects_the_rolled_version():
    clock, port, drv = make(1, family="BM1397")
    drv.bring_up()
    assert port.baudrate == 3125000
    job_id = next(c.job_id for c in reversed(port.commands) if c.kind == "job")
    work = drv.jobs.get(job_id)
    assert work is not None
    bits = asic.rolled_version(0, work.version_mask, 2)
    target = target_for(EASY)
    nonce = next(n for n in range(100_000)
                 if int.from_bytes(sha256d(work.header(n, bits)), "little") <= target
                 and int.from_bytes(sha256d(work.header(n, 0)), "little") > target)
    port.inject(asic.nonce_reply("BM1397", nonce, job_id, 2, 0))  # midstate 2
    port.inject(asic.nonce_reply("BM1397", nonce, job_id, 0, 0))  # midstate 0: wrong version
    drv.poll(clock.monotonic())
    snap = drv.stats(clock.monotonic())
    assert snap.valid == 1 and snap.hw_errors == 1


def test_a_reply_with_aa55_inside_is_taken_once_the_line_is_quiet():
    clock, port, drv = make(1)
    drv.bring_up()
    bits = 0xAA55 << 13  # the version field of the reply reads AA 55: the parser holds it
    job_id, nonce = port.nonce_for(0, version_bits=bits)
    port.send_nonce(job_id, nonce, bits)
    drv.poll(clock.monotonic())  # the reply's bytes arrive, nothing after them
    drv.poll(clock.monotonic())  # the next read finds the line quiet
    assert drv.stats(clock.monotonic()).valid == 1


def test_a_chip_fault_reset_waits_for_the_governors_floor_or_its_time_out():
    clock, port, drv = make(4, recover_backoff_s=1.0)
    drv.wind_down = WindDown(power_w=lambda f: f / 20.0, measured_w=lambda: None,
                             ramp_w_s=1000.0, floor_mhz=100.0, timeout_s=5.0)
    drv.set_frequency(400.0)
    drv.bring_up()
    run_until(drv, clock, lambda: drv.state == "mining")
    resets = port.resets
    turn_flaky(port, 1)
    run_until(drv, clock, lambda: drv.reset_pending is not None)
    assert drv.stats(clock.monotonic()).reset_pending == "chip 1 (address 64) is flaky"
    t0 = clock.monotonic()
    run_until(drv, clock, lambda: clock.monotonic() - t0 > 2.0)
    assert port.resets == resets and drv.state == "mining"  # hashing on, no reset yet
    drv.set_frequency(100.0)  # the governor has brought the load down
    run_until(drv, clock, lambda: port.resets == resets + 1)
    assert drv.recoveries == 1 and drv.reset_pending is None
    run_until(drv, clock, lambda: drv.state == "mining")
    assert port.freq_mhz == pytest.approx(100.0)
    # a governor that never gets there (a bug): the reset comes after the time-out anyway
    drv.set_frequency(400.0)
    run_until(drv, clock, lambda: drv.state == "mining")
    turn_flaky(port, 2)
    run_until(drv, clock, lambda: drv.reset_pending is not None)
    assert drv.reset_pending == "chip 2 (address 128) is flaky"
    t1 = clock.monotonic()
    run_until(drv, clock, lambda: drv.recoveries == 2)
    assert 5.0 - 0.05 <= clock.monotonic() - t1 < 5.5  # run_until polls 50 ms apart at most


def test_the_wind_down_to_a_reset_is_stepped_by_the_polls_never_waiting_inside_one():
    """From the governor's floor the clock goes down to the reset clock within the ramp, one
    step per poll when its time has come: the caller (the control loop) is never held up."""
    clock, port, drv = make(4, recover_backoff_s=1.0)
    ramp_w_s, watts_per_mhz = 4.0, 0.05
    drv.wind_down = WindDown(power_w=lambda f: f * watts_per_mhz, measured_w=lambda: None,
                             ramp_w_s=ramp_w_s, floor_mhz=300.0, timeout_s=5.0)
    drv.set_frequency(300.0)
    drv.bring_up()
    run_until(drv, clock, lambda: drv.state == "mining")
    resets = port.resets
    turn_flaky(port, 1)

    def no_waiting(_s: float) -> None:
        raise AssertionError("the driver waited inside a poll")

    clock.sleep = no_waiting  # type: ignore[method-assign]
    end = clock.monotonic() + 30.0
    while drv.state != "winding":  # the step in which the wind-down begins
        now = clock.monotonic()
        assert now < end, f"no wind-down; state {drv.state}"
        drv.poll(now)
        clock.advance(max(0.001, min(drv.next_deadline_s(now) - now, 0.05)))
    assert drv.stats(clock.monotonic()).state == "winding"
    assert drv.reset_pending == "chip 1 (address 64) is flaky"
    drv.set_frequency(400.0)  # a governor's request meanwhile does not turn the descent around
    steps: list[tuple[float, float]] = [(now, port.freq_mhz)]
    polls = 0
    while port.resets == resets:
        now = clock.monotonic()
        assert now < end + 30.0, "no reset after the wind-down"
        drv.poll(now)
        polls += 1
        if port.freq_mhz != steps[-1][1]:
            steps.append((now, port.freq_mhz))
        assert drv.state in ("winding", "starting")
        clock.advance(max(0.001, min(drv.next_deadline_s(now) - now, 0.05)))
    assert steps[-1][1] == pytest.approx(50.0) and len(steps) > 3 and polls > len(steps)
    # within the ramp: no drop faster than 90 % of ramp_w_s over the steps, the reset included
    for (t0, f0), (t1, f1) in itertools.pairwise(steps):
        assert (f0 - f1) * watts_per_mhz <= 0.9 * ramp_w_s * (t1 - t0) + 1e-9
    assert clock.monotonic() - steps[-1][0] >= 50.0 * watts_per_mhz / (0.9 * ramp_w_s) - 1e-9
    clock.sleep = type(clock).sleep.__get__(clock)  # type: ignore[method-assign]
    run_until(drv, clock, lambda: drv.state == "mining")
    assert drv.reset_pending is None and drv.recoveries == 1
    assert port.freq_mhz == pytest.approx(400.0)  # the frequency last asked for


def test_a_stop_while_winding_down_goes_on_to_the_reset_clock_and_idles():
    clock, port, drv = make(4, recover_backoff_s=1.0)
    drv.wind_down = WindDown(power_w=lambda f: f * 0.05, measured_w=lambda: None,
                             ramp_w_s=4.0, floor_mhz=300.0, timeout_s=5.0)
    drv.set_frequency(300.0)
    drv.bring_up()
    run_until(drv, clock, lambda: drv.state == "mining")
    resets = port.resets
    turn_flaky(port, 1)
    run_until(drv, clock, lambda: drv.state == "winding")
    drv.stop(clock.monotonic())
    run_until(drv, clock, lambda: drv.state == "idle")
    assert port.freq_mhz == pytest.approx(50.0) and port.resets == resets


def test_a_running_chain_of_another_family_is_wound_down_in_its_own_pll_format():
    """A chain found hashing that the settings do not describe (BM1397 chips at 400 MHz, the
    settings say BM1370): the driver steps it down in the running chips' own PLL format at their
    baud, one step per poll within the ramp, resets it only at the reset clock, and the cold
    bring-up then fails for good (not a chip fault: no recovery counted)."""
    clock, port, previous = make(4, family="BM1397")
    previous.set_frequency(400.0)
    previous.bring_up()
    run_until(previous, clock, lambda: previous.state == "mining")
    running = read_running_chain(port, clock)
    assert running is not None and running.family == "BM1397"
    problem = running.problem("BM1370", 4)
    assert problem == "the running chips are BM1397, the config says BM1370"
    settings = ChainSettings(family="BM1370", chips=4, nonce_difficulty=EASY,
                             ramp_step_mhz=25.0, ramp_interval_s=0.01)
    drv = ChainDriver(port, settings, clock, LocalWorkSource(clock), board=FakeBoard(port),
                      threaded=False)
    ramp_w_s, watts_per_mhz = 4.0, 0.05
    drv.wind_down = WindDown(power_w=lambda f: f * watts_per_mhz, measured_w=lambda: None,
                             ramp_w_s=ramp_w_s, floor_mhz=100.0, timeout_s=5.0)
    resets = port.resets
    drv.wind_down_running(clock.monotonic(), running, problem)
    assert drv.state == "winding" and drv.reset_pending == problem
    steps = [(clock.monotonic(), port.freq_mhz)]
    assert steps[0][1] == pytest.approx(400.0)
    end = clock.monotonic() + 60.0
    while port.resets == resets:
        now = clock.monotonic()
        assert now < end and drv.state == "winding", f"no reset; state {drv.state}"
        drv.poll(now)
        if port.freq_mhz != steps[-1][1]:
            steps.append((now, port.freq_mhz))
        clock.advance(max(0.001, min(drv.next_deadline_s(now) - now, 0.05)))
    assert steps[-1][1] == pytest.approx(50.0) and len(steps) >= 14  # 400 -> 50 in 25 MHz
    for (t0, f0), (t1, f1) in itertools.pairwise(steps):
        assert 0 < (f0 - f1) * watts_per_mhz <= 0.9 * ramp_w_s * (t1 - t0) + 1e-9
    assert port.baudrate == 115200  # the cold bring-up's reset and rate
    run_until(drv, clock, lambda: drv.fatal)  # BM1370 frames get no BM1370 answer: final
    assert drv.state == "failed" and drv.error and drv.recoveries == 0


def test_a_chain_that_does_not_come_back_is_retried_within_a_second_then_backing_off(caplog):
    """After a hang the re-initialisation fails a few times (nothing answers at the fast rate):
    a grid resource down 30 s has failed its service, so the first retries come at once, and the
    wait grows only while the failures go on."""
    clock, port, drv = make(4, hung_timeout_s=1.0)
    drv.bring_up()
    real_reset = port.reset
    resets: list[float] = []

    def reset_then_deaf_at_the_fast_rate():
        resets.append(clock.monotonic())
        real_reset()
        if len(resets) <= 4:
            port.hung = True  # the chips never answer this time

    port.reset = reset_then_deaf_at_the_fast_rate  # type: ignore[method-assign]
    port.hung = True
    run_until(drv, clock, lambda: drv.recoveries == 1)
    run_until(drv, clock, lambda: drv.hashing, limit_s=30.0)
    assert len(resets) == 5
    waits = [b - a for a, b in itertools.pairwise(resets)]
    assert waits[0] < 2.0  # not 30 s
    assert waits == sorted(waits)  # backing off
    assert "retrying in" in caplog.text


def test_a_dead_chain_port_is_counted_without_filling_the_log(caplog):
    """Every failed write is counted; the log gets the 1st, 2nd, 4th, 8th... of a run (a port
    that died mid-job used to log each of its ~8 writes a second)."""
    _clock, port, drv = make(4)
    drv.bring_up()

    def gone(data: bytes) -> int:
        raise OSError(5, "Input/output error")

    port.write = gone  # type: ignore[method-assign]
    with caplog.at_level("WARNING", logger="gridminer.chain"):
        for _ in range(1000):
            drv._uart.write(b"\x55\xaa")
    lines = [r.getMessage() for r in caplog.records if "write failed" in r.getMessage()]
    assert drv._uart.link_errors == 1000 and len(lines) == 10  # 1, 2, 4, ... 512
    assert lines[-1].endswith("(512 port errors in a row)")
