"""The soak (`slow`; `make soak SOAK_S=7200`): `gridminer agent` as a process, its grid link on a
real Mosquitto, on the hash-board emulator for GRIDMINER_SOAK_S seconds (default 2 hours).

A signed setpoint every few seconds, and in turn: broker restarts, the board link lost for a few
seconds, a chain hang, a dead chip, a power cut of the board, and agent restarts (SIGTERM and
SIGKILL, down for a second and past the bridge's watchdog). After each the agent is back at its
load within its ramp; the emulator's true state never breaks the envelope (power cap, chip
temperature, frequency, core voltage, and no rise of power faster than the ramp while the chain
is powered: drops by a trip, a kill or a power cut are cuts by design, and a power-on starts at
the minimum load, from which the ramp counts); within each agent process the file descriptors and
threads stay flat and the memory bounded. The figures are printed (`-s`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from agent.config import config_from_mapping
from hil.broker import Mosquitto
from hil.hashboard import HashBoardEmulator
from tests.integration.conftest import KID, OPERATOR_KEY, operator_for
from tests.support.polling import poll_until

pytestmark = pytest.mark.slow

SOAK_S = float(os.environ.get("GRIDMINER_SOAK_S", "7200"))
DIFFICULTY = 2.0**-24
RAMP_W_S = 15.0
TRIP_HOLD_S = 5.0
COMMAND_S = 3.0  # a setpoint this often, the two targets in turn
STEADY_S = 15.0  # after each event is over: the agent runs on, its resources are sampled
BRIDGE_WATCHDOG_S = 5.0  # the emulated bridge's heartbeat time-out (its default)
SETTLE_S = 5.0  # after coming back: threads and connections of a fresh start have settled
DEAD_MIN_S = 20.0  # the driver calls a silent chip dead no sooner after a bring-up
FAULTS_PER_RESTART = 2  # an agent process lives through this many faults
RSS_GROWTH_MB = 25.0  # the most a process's memory may grow after its first steady sample


@dataclass
class Life:
    """One agent process: its resources, sampled while it runs steadily."""

    pid: int
    how_ended: str = ""
    fds: list[int] = field(default_factory=list)
    threads: list[int] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)


def resources(pid: int) -> tuple[int, int, float] | None:
    """(open fds, threads, resident MB) of a process (None: it is gone)."""
    try:
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return fds, int(fields["Threads"]), int(fields["VmRSS"].split()[0]) / 1024.0


class Agent:
    """`gridminer agent --config` on the emulator and the broker, started and stopped as a
    service manager would; each process is a `Life`."""

    def __init__(self, folder: Path, emu: HashBoardEmulator, broker: Mosquitto) -> None:
        pem = folder / "op.pub.pem"
        pem.write_bytes(OPERATOR_KEY.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        self.config = folder / "agent.toml"
        self.config.write_text(
            f'[chain]\nport = "{emu.chain_path}"\nnonce_difficulty = {DIFFICULTY!r}\n'
            f'[board]\nport = "{emu.board_path}"\n'
            f"[envelope]\nramp_max_w_s = {RAMP_W_S}\ntrip_hold_s = {TRIP_HOLD_S}\n"
            f'[grid]\nbroker_url = "{broker.url}"\nsite = "s1"\ndevice = "d1"\n'
            f'state_dir = "{folder / "state"}"\nrestart_spread_s = 0.0\n'
            f'operator_keys = [{{kid = "{KID}", path = "{pem}"}}]\n'
            f"[log]\nstatus_period_s = 10.0\n")
        self.log = folder / "agent.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.lives: list[Life] = []

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "agent", "agent", "--config", str(self.config)],
                stdout=out, stderr=subprocess.STDOUT)
        self.lives.append(Life(self.proc.pid))

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(timeout=5)
        self.lives[-1].how_ended = f"{signal.Signals(sig).name} -> {code}"
        return code

    def sample(self) -> None:
        if self.running and self.proc is not None:
            got = resources(self.proc.pid)
            if got is not None:
                life = self.lives[-1]
                life.fds.append(got[0])
                life.threads.append(got[1])
                life.rss_mb.append(got[2])

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def log_size(self) -> int:
        return self.log.stat().st_size

    def logged_since(self, offset: int, text: str) -> bool:
        with self.log.open("rb") as f:
            f.seek(offset)
            return text.encode() in f.read()


class Truth:
    """The emulator's true state every 50 ms: (emulated s, board W, hottest chip C, core mV,
    fastest chip MHz, chain powered, wall-clock s)."""

    def __init__(self, emu: HashBoardEmulator) -> None:
        self.emu = emu
        self.points: list[tuple[float, float, float, float, float, bool, float]] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-truth", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.wait(0.05):
            s = self.emu.state()
            self.points.append((float(s["time_s"]), float(s["board_power_w"]),
                                float(s["max_chip_temp_c"]), float(s["vcore_mv"]),
                                max(s["freq_mhz"], default=0.0), bool(s["chain_powered"]),
                                time.time()))

    def stop(self) -> None:
        self._done.set()
        self._thread.join(timeout=5)

    def power_w(self) -> float:
        return self.points[-1][1] if self.points else 0.0


class Commands:
    """A signed setpoint every COMMAND_S, the targets in turn, each from a fresh operator
    connection (as the CLI sends them); acks counted by result (a rejection with its reason)."""

    def __init__(self, broker: Mosquitto, folder: Path, targets_w: tuple[float, float]) -> None:
        self.broker, self.folder, self.targets_w = broker, folder, targets_w
        self.results: dict[str, int] = {}
        self.last_ack_s = 0.0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-commands", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        i = 0
        while not self._done.wait(COMMAND_S):
            i += 1
            result = self._send(self.targets_w[i % 2])
            self.results[result] = self.results.get(result, 0) + 1
            if result == "accepted":
                self.last_ack_s = time.monotonic()

    def _send(self, power_w: float) -> str:
        op = operator_for(self.broker, self.folder)
        try:
            op.connect(timeout_s=2.0)
        except Exception:
            return "no broker"
        try:
            _signed, replies = op.send("s1", "d1", "setpoint", power_w=power_w, validity_s=60,
                                       timeout_s=2.0)
        except Exception:
            return "unanswered"
        finally:
            op.close()
        if not replies:
            return "unanswered"
        ack = replies[0].ack
        result = str(ack.get("result"))
        return f"{result} ({ack.get('reason')})" if result == "rejected" else result

    def stop(self) -> None:
        self._done.set()
        self._thread.join(timeout=10)


def rise_report(pts: list[tuple[float, float, float, float, float, bool, float]], at_s: float,
                agent: Agent) -> str:
    """The true power and clock in the 3 s before `at_s` (emulated) and the agent's log lines
    of that time: what a failed ramp check shows."""
    near = [p for p in pts if at_s - 3.0 <= p[0] <= at_s + 0.2]
    if not near:
        return ""
    lines = [f"{p[0]:8.2f} s {p[1]:6.1f} W {p[4]:6.1f} MHz {p[3]:5.0f} mV" for p in near[::2]]
    t0, t1 = (time.strftime("%H:%M:%S", time.localtime(near[i][6])) for i in (0, -1))
    log = [line for line in agent.log.read_text(errors="replace").splitlines()
           if t0 <= line[11:19] <= t1]
    return "\n".join(["true state:", *lines, f"agent log {t0}-{t1}:", *log])


def test_the_agent_comes_back_from_everything_for_hours(tmp_path: Path) -> None:
    env = config_from_mapping({"chain": {"port": "x", "family": "BM1370", "chips": 4},
                               "board": {"port": "y"},
                               "envelope": {"ramp_max_w_s": RAMP_W_S}}).envelope
    assert env.max_power_w and env.max_freq_mhz and env.max_vcore_mv  # filled in from the chips
    max_w = float(env.max_power_w)
    targets_w = (round(0.45 * max_w, 1), round(0.9 * max_w, 1))
    back_w = 0.8 * targets_w[0]  # "back": the chain powered and drawing this much at least
    comeback_s = 20.0 + TRIP_HOLD_S + targets_w[1] / RAMP_W_S  # bring-up, hold, the ramp
    emu = HashBoardEmulator(family="BM1370", chips=4, seed=21, difficulty=DIFFICULTY)
    emu.start()
    broker = Mosquitto().start()
    agent = Agent(tmp_path, emu, broker)
    truth = Truth(emu)
    comebacks: dict[str, list[float]] = {}
    failures: list[str] = []
    timeline: list[tuple[float, str]] = []  # (emulated s, event)

    def mining() -> bool:
        s = emu.state()
        return agent.running and s["chain_powered"] and s["board_power_w"] >= back_w

    def back(since: float) -> bool:
        """The load is back, and a command has been applied since `since`."""
        return mining() and commands is not None and commands.last_ack_s > since

    def resets() -> int:
        return int(emu.state()["chain"]["resets"])

    def restart(sig: int, down_s: float) -> Callable[[], Callable[[], bool]]:
        def run() -> Callable[[], bool]:
            code = agent.stop(sig)
            if sig == signal.SIGTERM and code != 0:
                failures.append(f"SIGTERM: exit {code}")
            time.sleep(down_s)  # the service manager's restart delay (a down time, not a wait)
            agent.start()
            return lambda: True
        return run

    def board_lost() -> Callable[[], bool]:
        offset = agent.log_size()
        emu.inject_fault("reply_drop", port="board", probability=1.0, duration_s=3.0)
        return lambda: agent.logged_since(offset, "board link back")

    def chain_reset_by(act: Callable[[], Any]) -> Callable[[], Callable[[], bool]]:
        def run() -> Callable[[], bool]:
            before = resets()
            act()
            return lambda: resets() > before
        return run

    def broker_restart() -> Callable[[], bool]:
        broker.restart(down_s=3.0)
        return lambda: True

    def power_cut() -> Callable[[], bool]:
        emu.power_cut()  # the chain is at its reset clock at once
        return lambda: True

    # each event returns what shows that the agent noticed it
    faults: list[tuple[str, Callable[[], Callable[[], bool]]]] = [
        ("broker restart", broker_restart),
        ("board link lost 3 s", board_lost),
        ("chain hang", chain_reset_by(lambda: emu.inject_fault("chain_hang"))),
        ("power cut", power_cut),
        ("dead chip", chain_reset_by(lambda: emu.inject_fault(
            "chip_silent", chip=1, duration_s=DEAD_MIN_S + 40.0))),
    ]
    restarts: list[tuple[str, Callable[[], Callable[[], bool]]]] = [
        ("SIGTERM, down 1 s", restart(signal.SIGTERM, 1.0)),
        ("SIGKILL, down 1 s", restart(signal.SIGKILL, 1.0)),
        ("SIGTERM, down past the watchdog", restart(signal.SIGTERM, BRIDGE_WATCHDOG_S + 3.0)),
        ("SIGKILL, down past the watchdog", restart(signal.SIGKILL, BRIDGE_WATCHDOG_S + 3.0)),
    ]
    commands: Commands | None = None
    t_start = time.monotonic()
    events = 0
    try:
        agent.start()
        assert poll_until(mining, 60.0), agent.tail()
        commands = Commands(broker, tmp_path, targets_w)
        assert poll_until(lambda: commands is not None and commands.last_ack_s > 0, 30.0), \
            agent.tail()
        i = 0
        while time.monotonic() - t_start < SOAK_S or i < FAULTS_PER_RESTART + 1:
            # the faults in turn, an agent restart (the kinds in turn) after every few of them
            n, is_restart = divmod(i, FAULTS_PER_RESTART + 1)
            name, act = restarts[n % len(restarts)] if is_restart == FAULTS_PER_RESTART else \
                faults[(n * FAULTS_PER_RESTART + is_restart) % len(faults)]
            i += 1
            t_event = time.monotonic()
            timeline.append((float(emu.state()["time_s"]), name))
            noticed = act()
            events += 1
            # the agent noticed (a dead chip: once it was called dead, DEAD_MIN_S and more)
            if not poll_until(noticed, DEAD_MIN_S + 40.0):
                failures.append(f"{name} at {t_event - t_start:.0f} s: not noticed\n"
                                f"{agent.tail(1500)}")
            since = time.monotonic()
            if not poll_until(lambda: back(since), comeback_s):  # noqa: B023 - called at once
                failures.append(f"{name} at {t_event - t_start:.0f} s: not back within "
                                f"{comeback_s:.0f} s\n{agent.tail(1500)}")
                if not agent.running:
                    agent.start()
                continue
            comebacks.setdefault(name, []).append(time.monotonic() - since)
            time.sleep(SETTLE_S)  # a fresh start's connections settle before the figures
            end = time.monotonic() + STEADY_S
            while time.monotonic() < end:
                agent.sample()
                time.sleep(1.0)
    finally:
        if commands is not None:
            commands.stop()
        if agent.running:
            agent.stop()
        truth.stop()
        broker.close()
        emu.stop()
    took_s = time.monotonic() - t_start
    results = commands.results if commands is not None else {}

    # the envelope, on the emulator's true state
    pts = truth.points
    peak_w = max(p[1] for p in pts)
    hottest_c = max(p[2] for p in pts)
    top_mv = max(p[3] for p in pts)
    top_mhz = max(p[4] for p in pts)
    fastest_rise_w, fastest_at_s, power_on_w = 0.0, 0.0, 0.0
    lo = 0
    for hi in range(len(pts)):  # the largest rise within any 1 s (emulated) of powered chain
        while pts[hi][0] - pts[lo][0] > 1.0:
            lo += 1
        window = pts[lo:hi + 1]
        rise_w = pts[hi][1] - min(p[1] for p in window)
        if all(p[5] for p in window):
            if rise_w > fastest_rise_w:
                fastest_rise_w, fastest_at_s = rise_w, pts[hi][0]
        else:
            power_on_w = max(power_on_w, rise_w)
    rise_limit_w = RAMP_W_S * 1.0 + 0.01 * max_w
    after = [name for t, name in timeline if t <= fastest_at_s]

    # resources, per agent process, on its steady samples
    lives = [life for life in agent.lives if life.fds]
    print(f"\nsoak: {took_s / 60:.1f} min, {events} events, {len(agent.lives)} agent processes, "
          f"commands {results}")
    for name, times in comebacks.items():
        print(f"  back after {name}: {len(times)} x, at most {max(times):.1f} s, mean "
              f"{sum(times) / len(times):.1f} s")
    print(f"  true power peak {peak_w:.1f} W (cap {max_w:.1f} W), fastest rise "
          f"{fastest_rise_w:.1f} W in 1 s at {fastest_at_s:.0f} s emulated (limit "
          f"{rise_limit_w:.1f} W; after {after[-1] if after else 'the start'}; a power-on: "
          f"{power_on_w:.1f} W at most), hottest chip "
          f"{hottest_c:.1f} C (hard {env.max_chip_temp_hard_c:g} C), core {top_mv:.0f} mV, "
          f"clock {top_mhz:.1f} MHz")
    for n, life in enumerate(lives):
        print(f"  agent {n} (pid {life.pid}, {life.how_ended or 'running'}): fds "
              f"{min(life.fds)}-{max(life.fds)}, threads {min(life.threads)}-"
              f"{max(life.threads)}, RSS {min(life.rss_mb):.1f}-{max(life.rss_mb):.1f} MB over "
              f"{len(life.fds)} samples")
    assert not failures, "\n".join(failures)
    assert peak_w <= 1.02 * max_w
    assert fastest_rise_w <= rise_limit_w, rise_report(pts, fastest_at_s, agent)
    assert hottest_c < env.max_chip_temp_hard_c
    assert top_mhz <= env.max_freq_mhz + 1e-6 and top_mv <= env.max_vcore_mv + 1e-6
    assert results.get("accepted", 0) >= 0.5 * sum(results.values())
    # a setpoint above the caps of a board with a chip out is refused as the contract says;
    # any other refusal of a well-formed, fresh, signed command is a defect
    refused = {r: n for r, n in results.items()
               if r.startswith("rejected") and r != "rejected (out_of_range)"}
    assert not refused, refused
    for life in lives:
        assert max(life.fds) <= life.fds[0] + 1, life
        assert max(life.threads) <= life.threads[0] + 1, life
        assert max(life.rss_mb) <= life.rss_mb[0] + RSS_GROWTH_MB, life
    first = lives[0].rss_mb[0]
    assert max(max(life.rss_mb) for life in lives) <= first + RSS_GROWTH_MB
