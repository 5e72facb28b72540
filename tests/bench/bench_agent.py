"""Figures of the agent on the hash-board emulator (a script, not a test).

Run: `.venv/bin/python tests/bench/bench_agent.py [--only NAME ...]`.

* bringup: 4-chip BM1370 from power-on (reset) to mining at 525 MHz, in emulated and wall
  seconds; a 128-chip chain: enumeration and bring-up time, chips found.
* verify: CPU cost of taking in nonce replies (parse, attribute, rebuild the header, SHA-256d,
  statistics) as a share of one core at 1,000 nonces/s.
* memory: peak resident memory of a running agent process (`gridminer agent` against
  `gridminer emulate`; the chain driver alone when the board link is not available).
* steps: the whole agent (runtime, governor, board link, driver) on the emulator, measured on the
  emulator's true state (board input power, emulated seconds): from power-on to 100 %, then
  100 % -> 30 % -> 100 % of maximum power, with the default ramp limit and with 15 W/s (then a
  chain hang: reset, re-initialisation, ramp back). Per step: time until the true power stays
  within +-2 % of maximum power of the target, overshoot; the largest change of true power over
  any 1 s (start-up and whole run) against the ramp limit + 1 % of rated, the HIL report's ramp
  figure (2 s windows); peak true power and peak 1 s average against the cap.
* spread: the declared range (max_w, min_w) on emulated boards whose chips draw 15 % less or more
  than the fit: the power reached at each end and the frequency it took.
* heatwave: ambient rising until the board cannot be cooled: peak chip temperature against the
  hard limit, what limits the power, power at the end.
* gaps: the longest gap between two control ticks (wall ms and control periods; goal: no gap
  over 3 periods) while the agent, with its grid link on a real Mosquitto, takes a storm of
  signed setpoints (on this disk, and with every persisted state write slowed to an SD card's
  20 ms), while it recovers a hung chain (`chain_hang` on the emulator) and a dead chip (the
  wind-down to the reset clock at the ramp, the reset, the bring-up), and while the board
  answers nothing for 3 s.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from agent.chain.driver import ChainDriver  # noqa: E402
from agent.chain.port import open_port  # noqa: E402
from agent.chain.settings import ChainSettings  # noqa: E402
from agent.chain.takeover import RunningChain  # noqa: E402
from agent.chain.work import LocalWorkSource, target_for  # noqa: E402
from agent.clock import SystemClock  # noqa: E402
from firmware_bridge import asic  # noqa: E402
from hil.report import largest_change_w  # noqa: E402

EMU_DIFFICULTY = 2.0**-19  # agent.config accepts nonce_difficulty >= 1e-6


def have_board_link() -> bool:
    try:
        import agent.chain.board  # noqa: F401
        import firmware_bridge.bridge  # noqa: F401
    except ImportError:
        return False
    return True


class EmulatorReset:
    def __init__(self, emu: Any) -> None:
        self.emu = emu

    def reset_chain(self) -> None:
        self.emu.reset_chain()


def bench_bringup() -> None:
    from hil.hashboard import HashBoardEmulator

    for chips, freq, ticket in ((4, 525.0, 256), (128, 300.0, 64)):
        emu = HashBoardEmulator(family="BM1370", chips=chips, seed=1, difficulty=EMU_DIFFICULTY)
        emu.start()
        try:
            clock = SystemClock()
            wake = threading.Event()
            settings = ChainSettings(family="BM1370", chips=chips, ticket_difficulty=ticket,
                                     nonce_difficulty=EMU_DIFFICULTY, ramp_step_mhz=25.0,
                                     ramp_interval_s=0.01)
            drv = ChainDriver(open_port(emu.chain_path), settings, clock,
                              LocalWorkSource(clock), board=EmulatorReset(emu), wake=wake)
            drv.set_frequency(freq)
            t0, e0 = time.monotonic(), emu.state()["time_s"]
            drv.start(clock.monotonic())
            marks: dict[str, tuple[float, float]] = {}
            while time.monotonic() - t0 < 10:
                now = clock.monotonic()
                drv.poll(now)
                if drv.hashing and "hashing" not in marks:
                    marks["hashing"] = (time.monotonic() - t0, emu.state()["time_s"] - e0)
                if drv.state == "mining":
                    marks["mining"] = (time.monotonic() - t0, emu.state()["time_s"] - e0)
                    break
                if drv.state == "failed" and drv.fatal:
                    break
                drv.wait(drv.next_deadline_s(now) - now)
            h = marks.get("hashing", (float("nan"),) * 2)
            m = marks.get("mining", (float("nan"),) * 2)
            ok = drv.addresses == [i * (256 // chips) for i in range(chips)]
            print(f"bringup  {chips:3d} x BM1370: enumerated+configured {h[1]:.2f} s emulated "
                  f"({h[0]:.2f} s wall), mining at {freq:.0f} MHz after {m[1]:.2f} s emulated "
                  f"({m[0]:.2f} s wall); chips found {len(drv.addresses)}, addresses "
                  f"{'as expected' if ok else 'WRONG'}")
            drv.close()
        finally:
            emu.stop()


class ReplayPort:
    """A port that serves prepared bytes, as much per read as asked."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.baudrate = 1000000

    @property
    def in_waiting(self) -> int:
        return len(self.data)

    def read(self, size: int = 1) -> bytes:
        out = bytes(self.data[:size])
        del self.data[:size]
        return out

    def write(self, data: bytes) -> int:
        return len(data)

    def flush(self) -> None:
        pass

    def reset_input_buffer(self) -> None:
        pass

    def close(self) -> None:
        pass


def bench_verify(n_nonces: int = 20000) -> None:
    import hashlib

    from agent import hashing
    from agent.clock import FakeClock

    clock = FakeClock()
    port = ReplayPort()
    easy = 2.0**-28
    chips = 4
    drv = ChainDriver(port, ChainSettings(family="BM1370", chips=chips, nonce_difficulty=easy),
                      clock, LocalWorkSource(clock), threaded=False)
    # the driver takes over 4 chips hashing at 525 MHz (no bring-up); the clock stands still, so
    # nothing else falls due while the nonces are checked; one job per slot
    pll = asic.pll_value("BM1370", 525.0)
    drv.adopt(clock.monotonic(), RunningChain("BM1370", 0x1370, (0, 64, 128, 192), (pll,) * 4,
                                              port.baudrate))
    works = []
    for _ in range(16):
        job_id = drv.jobs.next_job_id()
        work = drv.work.next_work(clock.monotonic())
        drv.jobs.put(job_id, work, clock.monotonic())
        works.append((job_id, work))
    target = target_for(easy)
    replies = bytearray()
    made = 0
    counter = 0
    while made < n_nonces:
        job_id, work = works[made % len(works)]
        chip = made % chips
        vbits = (made % 16) << 13
        head = work.header(0, vbits)[:76]
        while True:
            counter += 1
            nonce_h = (5 << 25) | ((chip * 64) << 17) | (counter & 0x1FFFF)
            nonce = int.from_bytes(nonce_h.to_bytes(4, "big"), "little")
            h = hashlib.sha256(hashlib.sha256(head + nonce.to_bytes(4, "little")).digest())
            if int.from_bytes(h.digest(), "little") <= target:
                break
        replies += asic.nonce_reply("BM1370", nonce, job_id, (made % 16), vbits)
        made += 1
    port.data = replies
    t_cpu, t_wall = time.process_time(), time.perf_counter()
    while port.data:
        drv.poll(clock.monotonic())
    cpu = time.process_time() - t_cpu
    wall = time.perf_counter() - t_wall
    snap = drv.stats(clock.monotonic())
    per_nonce_us = cpu / n_nonces * 1e6
    print(f"verify   {n_nonces} nonces ({hashing.IMPLEMENTATION} SHA-256d): {per_nonce_us:.1f} us "
          f"CPU each ({wall / n_nonces * 1e6:.1f} us wall) -> {per_nonce_us * 1000 / 1e6 * 100:.2f}"
          f" % of one core at 1,000 nonces/s; valid {snap.valid}, hw errors {snap.hw_errors}, "
          f"duplicates {snap.duplicates}")


def _vm(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


DRIVER_ONLY = r"""
import sys, time, threading
from agent.clock import SystemClock
from agent.chain.driver import ChainDriver
from agent.chain.port import open_port
from agent.chain.settings import ChainSettings
from agent.chain.work import LocalWorkSource
clock = SystemClock(); wake = threading.Event()
drv = ChainDriver(open_port(sys.argv[1]), ChainSettings(family="BM1370", chips=int(sys.argv[2]),
                  nonce_difficulty=float(sys.argv[3]), ramp_step_mhz=25.0, ramp_interval_s=0.01),
                  clock, LocalWorkSource(clock), wake=wake)
drv.set_frequency(float(sys.argv[4])); drv.start(clock.monotonic())
import signal
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *a: stop.set())
end = time.monotonic() + float(sys.argv[5])
while time.monotonic() < end and not stop.is_set():
    now = clock.monotonic(); drv.poll(now); drv.wait(drv.next_deadline_s(now) - now)
print(drv.stats(clock.monotonic()).valid, flush=True)
drv.close()
"""


def bench_memory(seconds: float = 15.0) -> None:
    _bench_memory(4, seconds)
    _bench_memory(128, seconds)


def _bench_memory(chips: int, seconds: float) -> None:
    emu = subprocess.Popen([sys.executable, "-m", "agent", "emulate", "--chips", str(chips),
                            "--difficulty", str(EMU_DIFFICULTY), "--seed", "1"],
                           stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert emu.stdout is not None
        info = json.loads(emu.stdout.readline())
        if have_board_link() and chips <= 8:
            what = "gridminer agent"
            config = Path(tempfile.mkdtemp(prefix="gridminer-bench-")) / "agent.toml"
            config.write_text(f'[chain]\nport = "{info["chain"]}"\nchips = {chips}\n'
                              f'nonce_difficulty = {EMU_DIFFICULTY}\n'
                              f'[board]\nport = "{info["board"]}"\n')
            cmd = [sys.executable, "-m", "agent", "agent", "--config", str(config)]
        else:
            what = "chain driver alone"
            cmd = [sys.executable, "-c", DRIVER_ONLY, info["chain"], str(chips),
                   str(EMU_DIFFICULTY), "300", str(seconds)]
        agent = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 cwd=ROOT)
        time.sleep(2.0)
        cpu0, t0 = _cpu_s(agent.pid), time.monotonic()
        time.sleep(max(1.0, seconds - 3.0))
        cpu = _cpu_s(agent.pid) - cpu0
        dt = time.monotonic() - t0
        peak_kb = _vm(agent.pid, "VmHWM")
        agent.send_signal(signal.SIGTERM)
        try:
            _out, err = agent.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            agent.kill()
            _out, err = agent.communicate()
        print(f"memory   {what}: peak resident {peak_kb / 1024:.1f} MB, CPU {cpu / dt * 100:.1f} %"
              f" of one core while mining ({chips} chips), exit {agent.returncode}")
        if agent.returncode not in (0, -signal.SIGTERM):
            print("         stderr tail:", err.strip().splitlines()[-3:])
    finally:
        emu.send_signal(signal.SIGINT)
        try:
            emu.wait(timeout=10)
        except subprocess.TimeoutExpired:
            emu.kill()


class AgentRig:
    """The whole agent in-process on the emulator: runtime thread, board link, governor. `trace`
    holds the emulator's true state (emulated seconds, board input power, hottest chip)."""

    def __init__(self, chips: int = 4, raw: dict[str, Any] | None = None, speed: float = 1.0,
                 ambient_c: float = 25.0, **driver_settings: Any) -> None:
        from agent.app import open_serial
        from agent.chain.board import BoardClient
        from agent.config import config_from_mapping
        from agent.control.governor import Governor
        from agent.control.runtime import Runtime
        from hil.hashboard import HashBoardEmulator

        self.emu = HashBoardEmulator(family="BM1370", chips=chips, seed=2,
                                     difficulty=EMU_DIFFICULTY, speed=speed, ambient_c=ambient_c)
        self.emu.start()
        cfg_raw: dict[str, Any] = {
            "chain": {"port": self.emu.chain_path, "chips": chips,
                      "nonce_difficulty": EMU_DIFFICULTY},
            "board": {"port": self.emu.board_path},
            "log": {"status_period_s": 0},
        }
        for section, values in (raw or {}).items():
            cfg_raw.setdefault(section, {}).update(values)
        self.config = config_from_mapping(cfg_raw)
        self.clock = SystemClock()
        wake = threading.Event()
        chain_port = open_serial(self.config.chain.port, "chain", 115200, 0.05)
        self.board_port = open_serial(self.config.board.port, "board", 115200, 0.02)
        self.board = BoardClient(self.board_port)
        settings = ChainSettings.from_config(self.config.chain, self.config.envelope,
                                             **driver_settings)
        self.driver = ChainDriver(chain_port, settings, self.clock, LocalWorkSource(self.clock),
                                  board=self.board, wake=wake)
        self.governor = Governor(self.config, self.clock)
        self.runtime = Runtime(self.clock, self.driver, self.board, self.governor,
                               period_s=self.config.governor.control_period_s,
                               status_period_s=0, wake=wake, status_out=lambda _l: None,
                               on_stop=[self.board_port.close])
        self.trace: list[tuple[float, float, float]] = []  # emulated s, true W, hottest C
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._done = threading.Event()

    def _run(self) -> None:
        self.runtime.run()

    def _sample(self) -> None:
        while not self._done.is_set():
            st = self.emu.state()
            self.trace.append((float(st["time_s"]), float(st["board_power_w"]),
                               float(st["max_chip_temp_c"])))
            time.sleep(0.02)

    def now_s(self) -> float:
        """Emulated time."""
        return float(self.emu.state()["time_s"])

    def start(self) -> None:
        self._sampler.start()
        self._thread.start()

    def stop(self) -> None:
        self.runtime.request_stop()
        self._thread.join(timeout=10)
        self._done.set()
        self._sampler.join(timeout=2)
        self.emu.stop()

    def wait_mode(self, mode: str, timeout_s: float) -> bool:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if getattr(self.runtime.actuation, "mode", None) == mode:
                return True
            time.sleep(0.05)
        return False


Trace = list[tuple[float, float, float]]


def settle_time(trace: Trace, t_step: float, t_end: float, target_w: float,
                band_w: float) -> float | None:
    """Seconds after `t_step` from which the true power stays within target +- band until
    `t_end` (None: it is outside the band at the end)."""
    pts = [(t, p) for t, p, _ in trace if t_step <= t <= t_end]
    if not pts or abs(pts[-1][1] - target_w) > band_w:
        return None
    last_out = t_step
    for t, p in pts:
        if abs(p - target_w) > band_w:
            last_out = t
    return last_out - t_step


def overshoot_w(trace: Trace, t_step: float, t_end: float, from_w: float, target_w: float) -> float:
    """How far the true power went past the target, in the direction of the step (W, >= 0)."""
    sign = 1.0 if target_w >= from_w else -1.0
    return max([0.0] + [sign * (p - target_w) for t, p, _ in trace if t_step <= t <= t_end])


def window_change_w(trace: Trace, t0: float, t1: float, window_s: float = 1.0) -> float:
    """Largest change of the true power between two moments `window_s` apart (W): the HIL
    report's ramp measure."""
    return largest_change_w([(t, p) for t, p, _ in trace], t0, t1, window_s)


def cap_figures(trace: Trace, t0: float, t1: float) -> tuple[float, float]:
    """Peak true power, and peak of its 1 s average (a power meter's reading), in W."""
    pts = [(t, p) for t, p, _ in trace if t0 <= t <= t1]
    peak = max(p for _, p in pts)
    avg = 0.0
    for i, (t, _p) in enumerate(pts):
        win = [pk for tk, pk in pts[i:] if tk <= t + 1.0]
        if pts[-1][0] >= t + 1.0:
            avg = max(avg, sum(win) / len(win))
    return peak, avg


def _wait_emulated(rig: AgentRig, seconds: float) -> None:
    end = rig.now_s() + seconds
    while rig.now_s() < end:
        time.sleep(0.02)


def bench_steps_with(label: str, raw: dict[str, Any] | None, restart: bool) -> None:
    rig = AgentRig(4, raw=raw)
    try:
        rig.start()
        max_w = rig.governor.max_power_w
        ramp = rig.governor.ramp_max_w_s
        caps = rig.governor.caps()
        t_on = rig.now_s()
        if not rig.wait_mode("mining", 30):
            print(f"steps    [{label}] the agent did not reach mining mode")
            return
        rig.governor.set_target(max_w)
        _wait_emulated(rig, 6.0 + max_w / ramp)
        t_full = rig.now_s()
        lines = []
        w_prev = max_w
        for frac in (0.3, 1.0):
            target = frac * max_w
            t_step = rig.now_s()
            rig.governor.set_target(target)
            allowed = abs(target - w_prev) / ramp  # the ramp's own share of the response
            _wait_emulated(rig, 5.0 + allowed)
            t_end = rig.now_s()
            s = settle_time(rig.trace, t_step, t_end, target, 0.02 * max_w)
            over = overshoot_w(rig.trace, t_step, t_end, w_prev, target)
            text = "never" if s is None else f"{s:.2f} s"
            lines.append(f"{int(w_prev / max_w * 100)}->{int(frac * 100)} %: within +-2 % after "
                         f"{text} (ramp alone {allowed:.2f} s), overshoot {over:.2f} W "
                         f"({over / max_w * 100:.1f} %)")
            w_prev = target
        t_restart = None
        if restart:
            t_restart = rig.now_s()
            rig.emu.inject_fault("chain_hang")
            _wait_emulated(rig, 9.0 + max_w / ramp)
        t_last = rig.now_s()
        restart_text = ""
        if t_restart is not None:
            # the hang itself drops the load (a fault); judged is the way back from the bottom
            after = [(p, t) for t, p, _ in rig.trace if t >= t_restart]
            t_low = min(after)[1]
            back = window_change_w(rig.trace, t_low, t_last)
            restart_text = (f"; after the chain hang (recoveries {rig.driver.recoveries}): "
                            f"largest 1 s change on the way back {back:.1f} W")
        settled = [p for t, p, _ in rig.trace if t > t_last - 1.0]
        end_w = sum(settled) / len(settled)
        peak, avg = cap_figures(rig.trace, t_on, t_last)
        t_judged = t_restart if t_restart is not None else t_last
        start_change = window_change_w(rig.trace, t_on, t_full)
        run_change = window_change_w(rig.trace, t_on, t_judged)
        allowed_1s = ramp * 1.0 + 0.01 * max_w
        print(f"steps    [{label}] caps min_w {caps['min_w']} W, max_w {caps['max_w']} W, "
              f"max {rig.config.envelope.max_freq_mhz:.0f} MHz; ramp limit {ramp:g} W/s")
        for line in lines:
            print(f"           {line}")
        print(f"           largest change of true power over any 1 s: power-on to "
              f"100 % {start_change:.1f} W, steps {run_change:.1f} W (limit {ramp:g} W + 1 % of "
              f"rated = {allowed_1s:.1f} W)")
        print(f"           peak true power {peak:.2f} W, peak 1 s average {avg:.2f} W (cap "
              f"{max_w:g} W); power at the end {end_w:.1f} W{restart_text}")
    finally:
        rig.stop()


def bench_steps() -> None:
    if not have_board_link():
        print("steps    skipped: agent.chain.board / firmware_bridge.bridge not available yet")
        return
    bench_steps_with("default ramp", None, restart=False)
    bench_steps_with("ramp 15 W/s, chain re-initialised at the end",
                     {"envelope": {"ramp_max_w_s": 15.0}}, restart=True)


def bench_spread() -> None:
    """The declared range on boards whose chips draw 15 % less or more than the emulator's fit
    (and the agent's model): is max_w reached, and min_w held?"""
    if not have_board_link():
        print("spread   skipped: agent.chain.board / firmware_bridge.bridge not available yet")
        return
    from hil import plant

    fit = plant._POWER_FIT["BM1370"]
    for scale in (0.85, 1.15):
        plant._POWER_FIT["BM1370"] = (fit[0] * scale, fit[1])
        try:
            rig = AgentRig(4)
        finally:
            plant._POWER_FIT["BM1370"] = fit
        try:
            rig.start()
            caps = rig.governor.caps()
            if not rig.wait_mode("mining", 30):
                print("spread   the agent did not reach mining mode")
                continue
            got = []
            for target in (caps["max_w"], caps["min_w"]):
                d = rig.governor.set_target(float(target))
                _wait_emulated(rig, 8.0)
                t_end = rig.now_s()
                last = [p for t, p, _ in rig.trace if t > t_end - 1.0]
                got.append(f"{target} W -> {sum(last) / len(last):.1f} W at "
                           f"{rig.driver.freq_mhz:.0f} MHz (limited by {d.limited_by})")
            print(f"spread   chips drawing {scale:.2f} x the fit: " + "; ".join(got))
        finally:
            rig.stop()


def bench_heatwave() -> None:
    if not have_board_link():
        print("heatwave skipped: agent.chain.board / firmware_bridge.bridge not available yet")
        return
    rig = AgentRig(4, speed=4.0)
    try:
        rig.start()
        if not rig.wait_mode("mining", 30):
            print("heatwave the agent did not reach mining mode")
            return
        hard = rig.config.envelope.max_chip_temp_hard_c
        soft = rig.config.envelope.max_chip_temp_soft_c
        max_w = rig.governor.max_power_w
        t0 = rig.now_s()
        for amb in range(25, 71, 3):
            rig.emu.set_ambient_c(float(amb))
            time.sleep(1.0)
        time.sleep(3.0)
        pts = [(t, p, h) for t, p, h in rig.trace if t >= t0]
        peak = max(h for _, _, h in pts)
        end = [p for t, p, _ in pts if t > pts[-1][0] - 2.0]
        gov = rig.governor
        print(f"heatwave ambient 25 -> 70 C over {pts[-1][0] - t0:.0f} s emulated: peak chip "
              f"{peak:.1f} C (soft {soft:g} C, hard limit {hard:g} C), mode {gov.mode}, limited by "
              f"{gov.limited_by}, true power at the end {sum(end) / len(end):.1f} W of "
              f"{max_w:g} W, trips {gov.envelope.trips}")
    finally:
        rig.stop()


class TickGaps:
    """Wall time of every control tick (wraps `Runtime.tick`); the longest gap in a window."""

    def __init__(self, runtime: Any) -> None:
        self.times: list[float] = []
        tick = runtime.tick

        def timed(now: float) -> Any:
            self.times.append(time.monotonic())
            return tick(now)

        runtime.tick = timed

    def longest_s(self, t0: float, t1: float) -> float:
        times = [t for t in self.times if t0 <= t <= t1]
        return max((b - a for a, b in itertools.pairwise(times)), default=float("nan"))


SLOW_WRITE_S = 0.02  # an SD card's fsync: what one persisted command may cost on a controller


def bench_gaps(commands: int = 300) -> None:
    if not have_board_link():
        print("gaps     skipped: agent.chain.board / firmware_bridge.bridge not available yet")
        return
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from agent.app import build_grid, wind_down_for
    from agent.site.client import BrokerOptions, Operator
    from agent.site.signer import CommandSigner
    from hil.broker import Mosquitto

    key = Ed25519PrivateKey.generate()
    with tempfile.TemporaryDirectory() as tmp, Mosquitto() as broker:
        pem = Path(tmp) / "operator.pub.pem"
        pem.write_bytes(key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        rig = AgentRig(4, raw={"grid": {
            "broker_url": broker.url, "site": "site-a", "device": "dev-1",
            "operator_keys": [{"kid": "bench", "path": str(pem)}],
            "state_dir": str(Path(tmp) / "state"), "restart_spread_s": 0.0},
            "envelope": {"ramp_max_w_s": DEAD_CHIP_RAMP_W_S}},
            dead_min_s=2.0, recover_backoff_s=1.0)  # a dead chip is reset within seconds
        session, link = build_grid(rig.config, rig.runtime, rig.clock)
        rig.runtime.grid = session
        rig.runtime.on_stop.insert(0, link.stop)
        rig.driver.wind_down = wind_down_for(rig.governor)  # as agent.app wires it
        gaps = TickGaps(rig.runtime)
        period = rig.runtime.period_s
        op = Operator(BrokerOptions(broker.url), CommandSigner(key, "bench"))
        seq = iter(range(1, 10**6))

        def answered() -> int:
            return session.counters["accepted"] + session.counters["rejected"]

        def storm() -> str:
            """`commands` signed setpoints, as fast as the link's inbound queue (64) takes
            them; the longest tick gap meanwhile."""
            signer = op.signer
            assert signer is not None
            max_w = rig.governor.max_power_w
            base = answered()
            t0 = time.monotonic()
            done = t0 + 60
            for i in range(commands):
                while i - (answered() - base) >= 48 and time.monotonic() < done:
                    time.sleep(0.001)
                signed = signer.build("site-a", "dev-1", "setpoint", seq=next(seq),
                                      validity_s=60, power_w=round((0.5 + 0.3 * (i % 2)) * max_w))
                op.publish_command(signed)
            while answered() - base < commands and time.monotonic() < done:
                time.sleep(0.01)
            t1 = time.monotonic()
            gap = gaps.longest_s(t0, t1)
            return (f"{gap * 1000:.0f} ms = {gap / period:.1f} periods ({answered() - base} "
                    f"answered in {t1 - t0:.2f} s)")

        try:
            link.start()
            rig.start()
            if not rig.wait_mode("mining", 30):
                print("gaps     the agent did not reach mining mode")
                return
            op.connect()
            fast = storm()
            writer = session.state.writer

            def slow_writer(fd: int, data: memoryview) -> int:
                time.sleep(SLOW_WRITE_S)
                return writer(fd, data)

            session.state.writer = slow_writer
            slow = storm()
            session.state.writer = writer
            resets = rig.driver.recoveries
            t1 = time.monotonic()
            rig.emu.inject_fault("chain_hang")
            end = time.monotonic() + 30
            while (rig.driver.recoveries == resets or rig.driver.state != "mining") \
                    and time.monotonic() < end:
                time.sleep(0.05)
            ok = rig.driver.recoveries > resets and rig.driver.state == "mining"
            t2 = time.monotonic()
            hang = gaps.longest_s(t1, t2)
            dead = recover_dead_chip(rig, gaps)
            silent = board_silent(rig, gaps)
            print(f"gaps     longest gap between two control ticks (period {period * 1000:.0f} "
                  f"ms; goal: no gap over 3 periods)")
            print(f"           storm of {commands} signed setpoints: {fast}")
            print(f"           the same with {SLOW_WRITE_S * 1000:.0f} ms per persisted state "
                  f"write (an SD card): {slow}")
            print(f"           chain hang, reset and bring-up ("
                  f"{'back to mining' if ok else 'NOT back to mining'} after {t2 - t1:.1f} s): "
                  f"{hang * 1000:.0f} ms = {hang / period:.1f} periods")
            print(f"           dead chip, wind-down, reset and bring-up: {dead}")
            print(f"           board silent for {BOARD_SILENT_S:g} s (every reply lost): {silent}")
        finally:
            op.close()
            rig.stop()


DEAD_CHIP_RAMP_W_S = 30.0  # the ramp limit of the gaps rig: a wind-down of a second or so


def recover_dead_chip(rig: AgentRig, gaps: TickGaps) -> str:
    """A chip goes silent: the governor brings the load to its floor, the driver winds the clock
    down to the reset clock at the ramp, resets and brings the chain up again; the longest tick
    gap from the fault until the chain hashes again."""
    period = rig.runtime.period_s
    resets = rig.driver.recoveries
    t0 = time.monotonic()
    rig.emu.inject_fault("chip_silent", chip=2, duration_s=10.0)
    end = t0 + 60
    reset = False  # the driver went through a bring-up since the fault
    while not (reset and rig.driver.hashing) and time.monotonic() < end:
        reset = reset or (rig.driver.recoveries > resets and not rig.driver.hashing)
        time.sleep(0.01)
    ok = reset and rig.driver.hashing
    t1 = time.monotonic()
    gap = gaps.longest_s(t0, t1)
    return (f"{gap * 1000:.0f} ms = {gap / period:.1f} periods "
            f"({'hashing again' if ok else 'NOT hashing again'} after {t1 - t0:.1f} s)")


BOARD_SILENT_S = 3.0


def board_silent(rig: AgentRig, gaps: TickGaps) -> str:
    """The board's port stays open but nothing answers (every reply frame lost) for a while:
    the longest tick gap meanwhile."""
    period = rig.runtime.period_s
    t0 = time.monotonic()
    rig.emu.inject_fault("reply_drop", port="board", probability=1.0, duration_s=BOARD_SILENT_S)
    end = rig.now_s() + BOARD_SILENT_S
    while rig.now_s() < end:
        time.sleep(0.05)
    t1 = time.monotonic()
    gap = gaps.longest_s(t0, t1)
    ticks = sum(t0 <= t <= t1 for t in gaps.times)
    return (f"{gap * 1000:.0f} ms = {gap / period:.1f} periods ({ticks} ticks in "
            f"{t1 - t0:.1f} s, {rig.runtime.counters.board_errors} failed sample reads in all)")


BENCHES = {"bringup": bench_bringup, "verify": bench_verify, "memory": bench_memory,
           "steps": bench_steps, "spread": bench_spread, "heatwave": bench_heatwave,
           "gaps": bench_gaps}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", choices=sorted(BENCHES), help="run only these")
    args = ap.parse_args()
    for name in args.only or list(BENCHES):
        with contextlib.suppress(KeyboardInterrupt):
            BENCHES[name]()
    return 0


if __name__ == "__main__":
    with tempfile.TemporaryDirectory():
        sys.exit(main())
