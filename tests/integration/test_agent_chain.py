"""The chain driver against the hash-board emulator on real pseudo-terminals: bring-up time,
a 128-chip chain, nonce verification, and the emulator's chain faults."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from agent.chain.driver import ChainDriver
from agent.chain.port import open_port
from agent.chain.settings import ChainSettings
from agent.chain.work import LocalWorkSource
from agent.clock import SystemClock
from hil.hashboard import HashBoardEmulator

EMU_DIFFICULTY = 2.0**-20


class EmulatorReset:
    """The board's reset line, wired straight to the in-process emulator."""

    def __init__(self, emu: HashBoardEmulator) -> None:
        self.emu = emu
        self.pulses = 0

    def reset_chain(self) -> None:
        self.pulses += 1
        self.emu.reset_chain()


class Rig:
    def __init__(self, chips: int, ticket: int = 256, difficulty: float = EMU_DIFFICULTY,
                 **settings: object) -> None:
        self.emu = HashBoardEmulator(family="BM1370", chips=chips, seed=3, difficulty=difficulty)
        self.emu.start()
        self.clock = SystemClock()
        self.reset = EmulatorReset(self.emu)
        self.wake = threading.Event()
        values: dict[str, object] = dict(family="BM1370", chips=chips, ticket_difficulty=ticket,
                                         nonce_difficulty=difficulty, ramp_step_mhz=25.0,
                                         ramp_interval_s=0.01)
        values.update(settings)
        self.driver = ChainDriver(open_port(self.emu.chain_path), ChainSettings(**values),
                                  self.clock, LocalWorkSource(self.clock), board=self.reset,
                                  wake=self.wake)

    def run_until(self, cond: Callable[[], bool], timeout_s: float) -> bool:
        drv = self.driver
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            now = self.clock.monotonic()
            drv.poll(now)
            if cond():
                return True
            drv.wait(min(drv.next_deadline_s(now), now + 0.05) - now)
        return cond()

    def stats(self):
        return self.driver.stats(self.clock.monotonic())

    def close(self) -> None:
        self.driver.close()
        self.emu.stop()


@pytest.fixture
def rig_factory() -> Iterator[Callable[..., Rig]]:
    rigs: list[Rig] = []

    def make(chips: int = 4, **kw: Any) -> Rig:
        rig = Rig(chips, **kw)
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        rig.close()


def test_four_bm1370_from_power_on_to_mining_within_3_emulated_seconds(rig_factory):
    rig = rig_factory(4)
    rig.driver.set_frequency(525.0)
    t0 = rig.emu.state()["time_s"]
    rig.driver.start(rig.clock.monotonic())
    assert rig.run_until(lambda: rig.driver.state == "mining", 5.0), rig.driver.error
    took_s = rig.emu.state()["time_s"] - t0
    assert took_s < 3.0
    assert rig.run_until(lambda: rig.emu.state()["freq_mhz"] == [525.0] * 4, 1.0)
    state = rig.emu.state()
    assert state["ports"]["chain"]["host_baud"] == 1000000
    assert state["chain"]["baud"] > 1000000  # the chips took the fast-UART write
    # nonces come back and verify against the jobs they were found for
    assert rig.run_until(lambda: rig.stats().valid >= 8, 10.0)
    snap = rig.stats()
    assert snap.hw_errors == 0 and snap.crc_errors == 0
    assert all(c.valid > 0 for c in snap.chips) or snap.valid < 16


def test_128_chip_chain_enumerates_and_every_chip_is_attributed(rig_factory):
    # ~300 nonces a second: at D = 2**-24 (256 hashes a nonce, not 4096) the emulator's search
    # keeps up on a machine at a third of its speed, even on the pure-Python kernel
    rig = rig_factory(128, ticket=64, difficulty=2.0**-24)
    rig.driver.set_frequency(300.0)  # 128 chips at full clock overheat the emulated board
    rig.driver.bring_up(timeout_s=5.0)
    assert rig.driver.addresses == list(range(0, 256, 2))
    assert [c["addr"] for c in rig.emu.state()["chain"]["chip"]] == rig.driver.addresses
    assert rig.run_until(lambda: rig.driver.state == "mining", 3.0)
    # the emulator's own truth, not a rate against the wall clock (a CPU-starved emulator emits
    # fewer nonces a wall second): every nonce it emitted is verified and put to its chip
    assert rig.run_until(lambda: rig.emu.state()["nonces_emitted"] >= 1000, 60.0)
    before = [c["nonces"] for c in rig.emu.state()["chain"]["chip"]]
    assert rig.run_until(lambda: rig.stats().valid >= sum(before), 10.0)
    snap = rig.stats()
    after = [c["nonces"] for c in rig.emu.state()["chain"]["chip"]]
    assert snap.hw_errors == 0 and snap.unattributed == 0
    wrong = {i: (lo, c.valid, hi)
             for i, (c, lo, hi) in enumerate(zip(snap.chips, before, after, strict=True))
             if not lo <= c.valid <= hi}
    assert not wrong, f"chip: (emitted before, counted, emitted after): {wrong}"
    assert sum(1 for n in before if n > 0) > 120  # (the chips share the work)


def test_garbage_and_corrupted_replies_are_counted_and_mining_goes_on(rig_factory):
    rig = rig_factory(4, ticket=32)
    rig.driver.set_frequency(500.0)
    rig.driver.bring_up()
    rig.emu.inject_fault("serial_garbage", bytes=300)
    rig.emu.inject_fault("reply_corrupt", duration_s=2.0, probability=0.3)
    rig.emu.inject_fault("reply_truncate", duration_s=2.0, probability=0.1)
    assert rig.run_until(lambda: rig.stats().crc_errors > 5, 5.0)
    valid = rig.stats().valid
    assert rig.run_until(lambda: rig.stats().valid > valid + 20, 10.0)
    snap = rig.stats()
    assert snap.discarded_bytes >= 300
    assert snap.state in ("mining", "ramping")
    assert rig.driver.recoveries == 0


def test_invalid_nonces_are_hardware_errors_of_that_chip_and_a_flaky_chip_resets(rig_factory,
                                                                                 caplog):
    rig = rig_factory(4, ticket=32, dead_min_s=2.0, recover_backoff_s=60.0)
    rig.driver.set_frequency(500.0)
    rig.driver.bring_up()
    rig.emu.inject_fault("chip_hw_errors", chip=1, rate_hz=40.0, duration_s=4.0)
    assert rig.run_until(lambda: rig.driver.recoveries >= 1, 10.0)
    assert "chip 1 (address 64) is flaky; resetting" in caplog.text
    snap = rig.stats()
    assert snap.chips[1].hw_errors > 20
    assert max(snap.chips[i].hw_errors for i in (0, 2, 3)) == 0
    assert rig.reset.pulses == 2  # bring-up and the recovery
    assert rig.run_until(lambda: rig.driver.state == "mining", 5.0)


def test_silent_chip_is_detected_and_the_chain_reinitialised(rig_factory, caplog):
    rig = rig_factory(4, ticket=16, dead_min_s=2.0, dead_intervals=40.0)
    rig.driver.set_frequency(500.0)
    rig.driver.bring_up()
    rig.emu.inject_fault("chip_silent", chip=2, duration_s=6.0)
    assert rig.run_until(lambda: rig.driver.recoveries >= 1, 15.0)
    assert "chip 2 (address 128) is dead; resetting" in caplog.text
    # the re-init goes on with the chips that answer, then the chip comes back
    assert rig.run_until(lambda: rig.driver.hashing, 5.0)
    assert rig.driver.addresses == [0, 64, 128, 192]  # the silent chip keeps its place
    valid = rig.stats().chips[2].valid
    assert rig.run_until(lambda: rig.stats().chips[2].valid > valid + 5, 15.0)


def test_hung_chain_is_reset_and_ramps_back_to_the_requested_frequency(rig_factory, caplog):
    rig = rig_factory(4, hung_timeout_s=1.5, counter_interval_s=0.5)
    rig.driver.set_frequency(400.0)
    rig.driver.bring_up()
    assert rig.run_until(lambda: rig.driver.state == "mining", 3.0)
    rig.emu.inject_fault("chain_hang")
    assert rig.run_until(lambda: rig.driver.recoveries >= 1, 5.0)
    assert "chain: chain hung: no reply for" in caplog.text
    assert rig.run_until(lambda: rig.emu.state()["freq_mhz"] == [400.0] * 4, 5.0)
    valid = rig.stats().valid
    assert rig.run_until(lambda: rig.stats().valid > valid + 3, 10.0)
