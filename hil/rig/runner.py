"""The run phases of the lab rig: `Rig(options).run()` (and `run_scenario`) starts the parts,
warms the board up at the initial setpoint, plays the scenario (grid commands, ambient
temperature, faults, the board's true state sampled every TRUTH_PERIOD_S), folds the acks and
telemetry into the `Recording`, writes the report and stops everything it started.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from hil.gridsim import Caps, GridSimulator, PlannedCommand, SentCommand, finite_number, plan
from hil.report import Recording, Series, day_clock, energy_wh, write_report
from hil.rig.agentconfig import write_agent_config
from hil.rig.cutter import LinkCutter
from hil.rig.home import HomeMeter
from hil.rig.injection import FaultInjector
from hil.rig.lifecycle import ExitLimit, RunLifecycle
from hil.rig.operator import Listener, OperatorSender, connect, operator_key, subscribe
from hil.rig.options import TRUTH_PERIOD_S, RigError, RigOptions
from hil.rig.pools import RigPools
from hil.rig.process import AgentProcess, EmulatorProcess, log_tail

#: an agent that keeps exiting by itself is a verdict, not something to restart forever
MAX_AGENT_CRASHES = 5
#: after the lab pools close, the agent's telemetry this much later carries its final counts
POOL_COUNTS_AFTER_S = 1.5
POOL_COUNTS_WAIT_S = 6.0


class Rig(RunLifecycle):
    """Runs one scenario end to end; see the `hil.rig` docstring."""

    def __init__(self, options: RigOptions) -> None:
        super().__init__(options.out_dir, options.progress)
        self.o = options
        self.s = options.scenario
        self.broker: Any = None
        self.cutter: LinkCutter | None = None
        self.emulator: EmulatorProcess | None = None
        self.agent: AgentProcess | None = None
        self.operator: Any = None
        self.sim: GridSimulator | None = None
        self.injector: FaultInjector | None = None
        self.pools: RigPools | None = None  # the scenario's [pool] part
        self.home: HomeMeter | None = None  # the scenario's [home]: roof, house and meter
        self.skipped: list[str] = []
        self.agent_exits = ExitLimit("the agent", MAX_AGENT_CRASHES)
        self.restarts = 0
        self.rec: Recording | None = None
        self.agent_cfg: Any = None  # the agent's config as the agent reads it
        self._last_ambient: float | None = None
        self._wall_w = Series()

    @property
    def faults(self) -> list[dict[str, Any]]:
        """The faults injected so far, as the report reads them."""
        return self.injector.records if self.injector is not None else []

    # ---- phases -------------------------------------------------------------------------
    def _run(self) -> dict[str, Any]:
        s, o = self.s, self.o
        self.clock.start()
        signer, pub = operator_key(self.work)
        broker_url = self._start_broker()
        self.note(f"broker {broker_url}")
        cfg, config_path = self._start_board(broker_url, pub)
        sender = self._connect_operator(broker_url, signer)
        self.agent = AgentProcess(config_path, self.work, o.python)
        self.agent.start()
        self.note(f"agent started: {' '.join(self.agent.command[1:])}")

        caps = self._wait_for_caps(cfg)
        if s.home is not None:
            self.home = HomeMeter(s.home, s.duration_s, o.speed, caps.max_w, broker_url)
        self.sim = GridSimulator(plan(s, caps, speed=o.speed), sender, speed=o.speed,
                                 default_validity_s=s.validity_s)
        rec = Recording(
            scenario=s.name, speed=o.speed, rated_w=caps.max_w, min_w=caps.min_w,
            ramp_max_w_s=caps.ramp_max_w_s, temp_max_c=s.measure.temp_max_c
            or cfg.envelope.max_chip_temp_hard_c, end_s=0.0,
            default_w=float(cfg.governor.default_target_w or caps.max_w),
            truth_source="emulator" if self.emulator else "telemetry", measure=s.measure,
            criteria=dict(s.criteria), day_clock=day_clock(s, o.speed),
        )
        self.rec = rec
        self.injector = FaultInjector(
            s, o.speed, self.now, agent=self.agent, emulator=self.emulator, cutter=self.cutter,
            note=self.note, skipped=self.skipped, full_ramp_s=rec.rated_w / rec.ramp_max_w_s,
            trip_hold_s=cfg.envelope.trip_hold_s)
        self._warm_up(rec, caps)
        self._play(rec)
        self._finish(rec)
        summary = write_report(rec, self.out)
        return summary

    def _start_broker(self) -> str:
        if self.o.broker_url:
            return self.o.broker_url
        from hil.broker import Mosquitto

        self.broker = Mosquitto(folder=self.work / "broker")
        self.broker.start()
        return str(self.broker.url)

    def _start_board(self, broker_url: str, pub: Path) -> tuple[Any, Path]:
        """The link cutter (for a broker outage), the emulator (unless a real target), the
        agent's config file; returns (the config as the agent reads it, its path)."""
        from agent.config import load_config

        s, o = self.s, self.o
        agent_url = broker_url
        if any(f.kind == "broker_outage" for f in s.faults):
            from agent.grid.broker import parse_broker_url

            address = parse_broker_url(broker_url)
            self.cutter = LinkCutter((address.host, address.port))
            agent_url = self.cutter.url
        if o.target is None:
            self.emulator = EmulatorProcess(s, self.work, o.python, o.start_timeout_s)
            chain, board = self.emulator.chain, self.emulator.board
            self.note(f"emulator {s.device.family} x{s.device.chips}: chain {chain}, "
                      f"board {board}")
        else:
            chain, board = o.target.chain, o.target.board
            self.note(f"real target: chain {chain}, board {board}")
        nonce_difficulty = self.emulator.difficulty if self.emulator is not None else None
        if s.pool is not None:
            self.pools = RigPools.for_scenario(s, nonce_difficulty, self.now, self.note)
            self.pools.start()  # (stopped by the teardown, whatever happens next)
        config_path = write_agent_config(
            s, self.work, broker_url=agent_url, pub=pub, chain=chain, board=board,
            nonce_difficulty=nonce_difficulty, log_level=o.agent_log_level,
            pools=self.pools.agent_entries() if self.pools is not None else None)
        cfg = load_config(config_path)  # the agent would refuse it the same way
        self.agent_cfg = cfg
        return cfg, config_path

    def _connect_operator(self, broker_url: str, signer: Any) -> OperatorSender:
        self.operator = connect(broker_url, signer, self.work)
        sender = subscribe(self.operator, signer)
        self.listener = Listener(self.operator, sender, self.live, self.clock)
        self.listener.start()
        return sender

    def _wait_for_caps(self, cfg: Any) -> Caps:
        deadline = time.monotonic() + self.o.start_timeout_s
        while time.monotonic() < deadline:
            with self.live.lock:
                status = dict(self.live.status)
            with self.live.lock:
                heard = bool(self.live.telemetry)  # not retained: this agent, not a stale status
            if (status.get("state") == "online" and isinstance(status.get("caps"), dict)
                    and heard):
                caps = Caps.from_status(status["caps"])
                self.note(f"agent online: caps min {caps.min_w:g} W, max {caps.max_w:g} W, "
                          f"ramp {caps.ramp_max_w_s:g} W/s, mode {status.get('mode')}")
                return caps
            self._check_agent_alive(fatal=True)
            time.sleep(0.1)
        raise RigError(f"the agent did not come online within {self.o.start_timeout_s:g} s "
                       f"(log {self.agent.log_path if self.agent else '?'}):\n"
                       f"{log_tail(self.agent.log_path) if self.agent else ''}")

    def _check_agent_alive(self, fatal: bool = False) -> None:
        assert self.agent is not None
        if self.agent_exits.check(self.agent, self.note, fatal=fatal):
            self._restart_agent()

    def _restart_agent(self) -> None:
        assert self.agent is not None
        with self.live.lock:
            self.live.epoch += 1
        self.agent.restart()
        self.restarts += 1

    def _warm_up(self, rec: Recording, caps: Caps) -> None:
        """Initial setpoint, then wait (at most warmup_s) until the board holds it."""
        assert self.sim is not None
        s = self.s
        if s.home is not None:  # the agent follows the home's meter: no grid command
            self.note("warm-up: none; the agent follows the home's meter from the start")
            self._start_scenario_clock(rec, None)
            return
        if s.initial_pct is None:
            return
        target = caps.watts(s.initial_pct)
        first = PlannedCommand(0.0, "setpoint", round(target), label="initial", kind="initial")
        sent = self.sim.send_now(first, self.now())
        self.note(f"warm-up: initial setpoint {target:.0f} W")
        deadline = time.monotonic() + s.warmup_s
        steady_since: float | None = None
        while time.monotonic() < deadline:
            self._sample_truth(rec)
            self._check_agent_alive(fatal=True)
            power = rec.truth_power_w.v[-1] if rec.truth_power_w.v else None
            with self.live.lock:
                last = dict(self.live.last)
            if power is None and self.emulator is None:
                power = finite_number(last.get("power_w"))
            near = power is not None and abs(power - target) <= 0.03 * caps.max_w
            if near and last:
                steady_since = steady_since or time.monotonic()
                if time.monotonic() - steady_since >= 3.0:
                    break
            else:
                steady_since = None
            self._progress(rec, "warm-up")
            time.sleep(TRUTH_PERIOD_S)
        else:
            self.note(f"warm-up: the board did not settle at {target:.0f} W within "
                      f"{s.warmup_s:g} s; playing anyway")
        self._start_scenario_clock(rec, sent)

    def _start_scenario_clock(self, rec: Recording, sent: SentCommand | None) -> None:
        """The scenario starts now: shift every time recorded so far."""
        with self.live.lock:
            shift = self.now()
            self.clock.shift(shift)
            for m in self.live.telemetry:
                m["t_s"] = round(m["t_s"] - shift, 3)
                m["rx_s"] = round(m["rx_s"] - shift, 3)
            self.live.acks = {k: (t - shift, a) for k, (t, a) in self.live.acks.items()}
        for series in (rec.truth_power_w, rec.truth_temp_c, rec.truth_hashrate_ghs,
                       rec.truth_freq_mhz, rec.ambient_c, self._wall_w):
            series.t_s = [round(t - shift, 3) for t in series.t_s]
        if sent is not None:
            sent.t_s -= shift
        for e in self.events:
            e["t_s"] = round(e["t_s"] - shift, 2)
        self.note(f"scenario {self.s.name} starts ({self.s.duration_s / self.o.speed:.0f} s at "
                  f"{self.o.speed:g}x)")

    def _play(self, rec: Recording) -> None:
        assert self.sim is not None and self.agent is not None and self.injector is not None
        speed = self.o.speed
        end_wall = self.s.duration_s / speed
        next_tick = time.monotonic()
        while True:
            t = self.now()
            t_sc = t * speed
            if t >= end_wall:
                break
            for cmd in self.sim.poll(t_sc, t):
                if cmd.error:
                    self.note(f"command {cmd.label} not sent: {cmd.error}")
            self._ambient(t_sc)
            self.injector.step(t_sc)
            if self.pools is not None:
                self.pools.step(t_sc)
            if self.injector.restart_due(t):
                self._restart_agent()
                self.note("agent restarted")
            self._check_agent_alive()
            self._sample_truth(rec)
            if self.home is not None:
                self.home.step(t, t_sc, rec.truth_power_w.v[-1] if rec.truth_power_w.v
                               else None)
            self._progress(rec, "play")
            next_tick += TRUTH_PERIOD_S
            time.sleep(max(0.0, next_tick - time.monotonic()))
        self.injector.finish()
        rec.end_s = round(self.now(), 3)

    def _ambient(self, t_sc: float) -> None:
        if self.emulator is None:
            if self.s.ambient and "ambient" not in " ".join(self.skipped):
                self.skipped.append("ambient temperature: needs the emulator")
            return
        temp = round(self.s.ambient_at(t_sc), 2)
        if self._last_ambient is None or abs(temp - self._last_ambient) >= 0.05:
            reply = self.emulator.control({"cmd": "set_ambient_c", "value": temp})
            if reply.get("ok"):
                self._last_ambient = temp

    def _progress(self, rec: Recording, phase: str) -> None:
        if not self.status.due():
            return
        with self.live.lock:
            last = dict(self.live.last)
            acks = len(self.live.acks)
        sent = len(self.sim.sent) if self.sim else 0
        power = rec.truth_power_w.v[-1] if rec.truth_power_w.v else last.get("power_w")
        temp = rec.truth_temp_c.v[-1] if rec.truth_temp_c.v else last.get("temp_c")
        end = self.s.duration_s / self.o.speed
        t = self.now()
        if phase == "play":
            pct = min(100.0, 100.0 * t / end)
            bar = "#" * int(pct / 5) + "-" * (20 - int(pct / 5))
            head = f"[{self.elapsed():7.1f} s] [{bar}] {pct:3.0f}% of {end:.0f} s"
        else:
            head = f"[{self.elapsed():7.1f} s] [warm-up]"
        active = [f["label"] for f in self.faults
                  if f["end_s"] is None or f["t_s"] <= t <= f["end_s"]]
        self.status.show(head, last, power, temp, acks, sent, active)

    # ---- truth --------------------------------------------------------------------------
    def _sample_truth(self, rec: Recording) -> dict[str, Any] | None:
        if self.emulator is not None:
            st = self.emulator.state()
            if st is None:
                return None
            # stamped with the instant the state belongs to: the status file is read up to a
            # period after it was written, and that lag varies from read to read
            due = finite_number(st.get("due_monotonic_s"))
            t = self.now() if due is None else due - self.clock.t0
            freqs = st.get("freq_mhz")
            freq = (sum(freqs) / len(freqs)) if isinstance(freqs, list) and freqs else freqs
            # the power the setpoint means: the board's input, or the wall's (through the
            # emulator's PSU model) when the agent is told its PSU's efficiency
            at_wall = self.agent_cfg is not None and self.agent_cfg.board.psu_efficiency < 1.0
            power_key = "wall_power_w" if at_wall else "board_power_w"
            rec.truth_power_w.add(t, finite_number(st.get(power_key)))
            self._wall_w.add(t, finite_number(st.get("wall_power_w")))
            rec.truth_temp_c.add(t, finite_number(st.get("max_chip_temp_c")))
            rec.truth_hashrate_ghs.add(t, finite_number(st.get("hashrate_ghs")))
            rec.truth_freq_mhz.add(t, finite_number(freq))
            rec.ambient_c.add(t, finite_number(st.get("ambient_c")))
            return st
        return None

    def _truth_from_telemetry(self, rec: Recording) -> None:
        for m in rec.telemetry:
            rec.truth_power_w.add(m["t_s"], finite_number(m.get("power_w")))
            rec.truth_temp_c.add(m["t_s"], finite_number(m.get("temp_c")))
            rec.truth_hashrate_ghs.add(m["t_s"], finite_number(m.get("hashrate_ghs")))
            rec.truth_freq_mhz.add(m["t_s"], finite_number(m.get("freq_mhz")))

    # ---- end ----------------------------------------------------------------------------
    def _finish(self, rec: Recording) -> None:
        """Wait for outstanding acks, then fold everything into the recording."""
        assert self.sim is not None
        if self.pools is not None:
            self._close_pools(rec)
        deadline = time.monotonic() + self.o.ack_grace_s / max(1.0, self.o.speed) + 2.0
        while time.monotonic() < deadline:
            with self.live.lock:
                missing = [c for c in self.sim.sent if c.id and c.id not in self.live.acks]
            if not missing:
                break
            time.sleep(0.1)
        with self.live.lock:
            acks = dict(self.live.acks)
            rec.telemetry = sorted(self.live.telemetry, key=lambda m: m["t_s"])
        for c in self.sim.sent:
            c.take_ack(acks.get(c.id))
        rec.commands = [c.as_dict() for c in self.sim.sent]
        if self.emulator is None:
            self._truth_from_telemetry(rec)
        rec.faults = self.faults
        rec.events = self.events
        rec.agent_restarts = self.restarts
        rec.agent_crashes = self.agent_exits.exits
        rec.meta = {
            "skipped": self.skipped,
            "agent_command": self.agent.command if self.agent else None,
            "agent_log": str(self.agent.log_path) if self.agent else None,
            "broker": self.o.broker_url or "private mosquitto",
            "scenario_file": str(self.s.path) if self.s.path else None,
            "status": self.live.status,
        }
        rec.wall_power_w = self._wall_w
        if self.home is not None:
            rec.meta["home"] = self.home.report()
        if self._wall_w.t_s:
            rec.meta["energy_wh_wall_incl_psu"] = round(energy_wh(self._wall_w, 0.0, rec.end_s), 4)
        self.status.print("", line=False)

    def _close_pools(self, rec: Recording) -> None:
        """Close the lab pools, wait for the agent's telemetry to show its final share counts,
        and record what the pools saw."""
        assert self.pools is not None
        self.pools.finish()
        closed = self.now()
        deadline = time.monotonic() + POOL_COUNTS_WAIT_S
        while time.monotonic() < deadline:
            with self.live.lock:
                last = self.live.telemetry[-1] if self.live.telemetry else {}
            if last.get("rx_s", -1.0) >= closed + POOL_COUNTS_AFTER_S:
                break
            time.sleep(0.1)
        st = self.emulator.state() if self.emulator is not None else None
        chips = (st or {}).get("chain", {}).get("chip") or [{}]
        rec.pool = self.pools.report(chips[0].get("ticket_difficulty"))

    def _parts(self) -> list[tuple[Any, str]]:
        return [(self.agent, "stop"), (self.emulator, "stop"), (self.operator, "close"),
                (self.cutter, "close"), (self.broker, "close"), (self.pools, "stop"),
                (self.home, "close")]


def run_scenario(options: RigOptions) -> dict[str, Any]:
    """Play one scenario on a fresh rig; returns the summary."""
    return Rig(options).run()

