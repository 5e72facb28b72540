"""A site run: `run_site_scenario(SiteRunOptions(...))` plays a site scenario on

1. a private Mosquitto per site (its open-file limit raised for every device's connection: the
   broker inherits the rig's, raised here; one broker a site, as sites have, and because a
   device's MQTT client id is its device id, which two equal fleets share);
2. a fleet (`gridminer fleet`, its own process) of the scenario's devices on site `gm`, trusting
   the site controller's key, and, side by side, an equal fleet (same seed, same mix) on site
   `base` trusting the baseline dispatcher's key (`parallel`), or the same fleet again after
   the first pass (`sequential`);
3. the site controller (`gridminer site`, its own process, SIGKILLed and restarted on cue) on
   the fleet's broker, closing its loop on the site meter (the fleet's true power, published by
   the rig every `meter_period_s`);
4. the grid operator (the rig), signing the schedule's commands to device `site`, and the same
   schedule given to the baseline (`hil.site.baseline`) as its target; faults on cue: a power
   cut on a share of the devices (the same devices on both fleets), the controller's SIGKILL;
5. every `meter_period_s`, each fleet's true power and devices online; the commands each
   dispatcher sent its devices (an MQTT tap on their `cmd` topics); the site's acks;

then stops everything and writes DIR/report.png, DIR/summary.json, DIR/summary.md and
DIR/recording.json (`hil.site.report`). Times are rig seconds (0 at scenario start).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from agent.grid.contract import SITE_DEVICE
from hil.gridsim import GridSimulator
from hil.report import Series
from hil.rig.lifecycle import ExitLimit, RunLifecycle
from hil.rig.operator import Listener, Live, OperatorSender, connect, operator_key
from hil.rig.options import KID, PREFIX, RigError
from hil.rig.process import log_tail
from hil.site.parts import FleetProcess, MqttTap, SiteProcess, key_pair
from hil.site.plan import site_plan
from hil.site.report import SiteRecording, write_site_report
from hil.site.scenario import SiteScenario

SITE_GM = "gm"  # the site gridminer dispatches
SITE_BASE = "base"  # the equal site the baseline dispatches
SITE_KID = "site-key"
BASELINE_KID = "baseline-key"
ACK_GRACE_S = 10.0
MAX_SITE_CRASHES = 3
LINE_EVERY_S = 10.0
TICK_S = 0.05  # the schedule's and the faults' resolution


@dataclass
class SiteRunOptions:
    scenario: SiteScenario
    out_dir: Path
    speed: float = 1.0
    progress: TextIO | None = None
    python: str = "python3"
    start_timeout_s: float = 180.0


class SiteSender(OperatorSender):
    """The grid operator's commands to device `site` (what `hil.gridsim` sends through), a
    setpoint within the caps of the site's latest status (a site that lost devices refuses more
    than it can draw, as a device would)."""

    def __init__(self, op: Any, signer: Any, site: str, live: Live) -> None:
        super().__init__(op, signer, op.seq, f"{PREFIX}/{site}/{SITE_DEVICE}/ack/"
                         f"{op.options.client_id}", site=site, device=SITE_DEVICE)
        self.live = live

    def send(self, op: str, *, power_w: int | None, ramp_w_s: int | None, validity_s: float,
             fallback: str | None) -> tuple[str, int | None, int | None]:
        with self.live.lock:
            status = dict(self.live.status)
        max_w = (status.get("caps") or {}).get("max_w")
        if (power_w is not None and status.get("state") == "online"
                and isinstance(max_w, int | float) and max_w > 0):
            power_w = min(power_w, int(max_w))  # as an operator reads the site's caps
        return super().send(op, power_w=power_w, ramp_w_s=ramp_w_s, validity_s=validity_s,
                            fallback=fallback)


class BaselineSender:
    """The same schedule as targets of the baseline dispatcher (a fleet tool takes a site kW
    target): a setpoint is its power, curtail and standby 0 (every machine asleep), resume the
    fleet's rating (every machine awake)."""

    def __init__(self, baseline: Any, rating_w: float) -> None:
        self.baseline, self.rating_w = baseline, rating_w

    def send(self, op: str, *, power_w: int | None, ramp_w_s: int | None, validity_s: float,
             fallback: str | None) -> tuple[str, int | None, int | None]:
        target = {"setpoint": float(power_w or 0), "resume": self.rating_w}.get(op, 0.0)
        self.baseline.set_target(target)
        return "", None, None


@dataclass
class SitePass:
    """One dispatcher on one fleet, as played and recorded."""

    name: str  # gridminer | baseline
    site: str
    fleet: FleetProcess
    sim: GridSimulator | None = None
    meter_topic: str | None = None
    url: str = ""
    tap: MqttTap | None = None
    power_w: Series = field(default_factory=Series)
    online: Series = field(default_factory=Series)
    capacity: list[tuple[float, float]] = field(default_factory=list)  # (t_s, W) as it changes
    faults: list[dict[str, Any]] = field(default_factory=list)
    end_s: float = 0.0


class SiteRig(RunLifecycle):
    """Runs one site scenario end to end; see the module docstring."""

    name = "site rig"

    def __init__(self, options: SiteRunOptions) -> None:
        super().__init__(options.out_dir, options.progress)
        self.o = options
        self.s = options.scenario
        self.brokers: list[Any] = []
        self.site: SiteProcess | None = None
        self.operator: Any = None
        self.baseline_op: Any = None
        self.baseline: Any = None
        self.fleets: list[FleetProcess] = []
        self.taps: list[MqttTap] = []
        self._workers: list[threading.Thread] = []  # fault requests under way
        self.site_exits = ExitLimit("the site controller", MAX_SITE_CRASHES)
        self.site_down: list[list[float]] = []  # [killed, back online] rig seconds
        self._restart_at: float | None = None
        self._last_line = 0.0
        from hil.fleet.mix import DEFAULT_MIX, specs

        self.ratings = {d.device: d.rating_w for d in specs(
            DEFAULT_MIX, self.s.site.devices, self.s.site.seed)}  # what the fleet runs
        self.rating_w = sum(self.ratings.values())

    # ---- console ------------------------------------------------------------------------
    def _progress(self, passes: list[SitePass]) -> None:
        if not self.status.due():
            return
        end = self.s.duration_s / self.o.speed
        t = self.clock.now()
        parts = [f"{p.name} {(p.power_w.v[-1] or 0) / 1000:7.1f} kW "
                 f"({p.online.v[-1]:.0f} online)" for p in passes if p.power_w.v]
        last = passes[0].sim.sent[-1] if passes[0].sim and passes[0].sim.sent else None
        target = ("-" if last is None else f"{last.power_w / 1000:.1f} kW"
                  if last.power_w is not None else last.op)  # resume, curtail, standby
        text = (f"[{self.elapsed():7.1f} s] {min(100.0, 100 * t / end):3.0f}% "
                f"of {end:.0f} s  target {target}  " + "  ".join(parts))
        out = self.o.progress
        if out is not None and hasattr(out, "isatty") and out.isatty():
            self.status.print(text)
        elif time.monotonic() - self._last_line >= LINE_EVERY_S:
            self._last_line = time.monotonic()
            self.status.print(text, line=True)

    # ---- run ----------------------------------------------------------------------------
    def _run(self) -> dict[str, Any]:
        s = self.s
        mode = s.site.side_by_side
        self.clock.start()
        signer, grid_pub = operator_key(self.work)
        site_key, site_pub = key_pair(self.work, "site")
        base_key, base_pub = key_pair(self.work, "baseline")
        gm = self._new_pass("gridminer", SITE_GM, site_pub, SITE_KID)
        if s.site.meter_period_s:
            gm.meter_topic = f"{PREFIX}/{SITE_GM}/meter"
        base: SitePass | None = None
        if mode == "parallel":
            base = self._new_pass("baseline", SITE_BASE, base_pub, BASELINE_KID)
        for p in (gm, base):
            if p is not None:
                figs = p.fleet.wait_online(self.o.start_timeout_s)
                self.note(f"fleet {p.site}: {figs['online']} devices online after "
                          f"{figs['after_s']:.1f} s, {figs['power_w'] / 1000:.1f} kW")
        self._start_site(gm.url, grid_pub, site_key, gm)
        sender = self._connect_operator(gm.url, signer)
        plan = site_plan(s)
        gm.sim = GridSimulator(list(plan), sender, speed=self.o.speed,
                               default_validity_s=s.validity_s)
        if base is not None:
            base.sim = GridSimulator(list(plan), self._start_baseline(base.url, base_key),
                                     speed=self.o.speed, default_validity_s=s.validity_s)
            self._play([gm, base])
        else:
            self._play([gm])
            if mode == "sequential":
                self._stop_site()
                gm.fleet.stop()
                base = self._new_pass("baseline", SITE_BASE, base_pub, BASELINE_KID)
                figs = base.fleet.wait_online(self.o.start_timeout_s)
                self.note(f"fleet {base.site} (second pass): {figs['online']} devices online")
                base.sim = GridSimulator(list(plan), self._start_baseline(base.url, base_key),
                                         speed=self.o.speed, default_validity_s=s.validity_s)
                self._play([base])
        rec = self._recording(gm, base)
        return write_site_report(rec, self.out)

    # ---- parts --------------------------------------------------------------------------
    def _new_pass(self, name: str, site: str, pub: Path, kid: str) -> SitePass:
        """A site's broker, the rig's tap on it and its fleet (not waited online yet)."""
        from hil.broker import Mosquitto
        from hil.fleet.loop import FDS_PER_DEVICE, FDS_RESERVE, raise_fd_limit

        clients = self.s.site.devices + 16
        needed = FDS_RESERVE + FDS_PER_DEVICE * clients
        if raise_fd_limit(needed) < needed:
            raise RigError(f"{clients} MQTT clients need {needed} open files; raise the hard "
                           "limit (ulimit -Hn)")
        broker = Mosquitto(folder=self.work / f"broker-{site}")  # inherits the raised limit
        self.brokers.append(broker)
        broker.start()
        url = str(broker.url)
        self.note(f"site {site}: broker {url}")
        tap = MqttTap(url, self.clock, [site])
        self.taps.append(tap)
        s = self.s.site
        fleet = FleetProcess(self.o.python, self.work, devices=s.devices, broker_url=url,
                             site=site, trust_pub=pub, trust_kid=kid, seed=s.seed,
                             restart_spread_s=s.restart_spread_s, processes=s.fleet_processes,
                             control_period_s=s.device_control_period_s)
        self.fleets.append(fleet)
        self.note(f"fleet {site}: {s.devices} devices, seed {s.seed} ({fleet.log_path.name})")
        return SitePass(name, site, fleet, url=url, tap=tap)

    def _start_site(self, url: str, grid_pub: Path, site_key: Path, gm: SitePass) -> None:
        self.site = SiteProcess(self.o.python, self.work, broker_url=url, site=SITE_GM,
                                grid_pub=grid_pub, grid_kid=KID, site_key=site_key,
                                site_kid=SITE_KID, ramp_w_s=self.s.site.ramp_w_s(),
                                meter_topic=gm.meter_topic)
        self.gm = gm
        self.site.start()
        self.note(f"site controller: gridminer {' '.join(self.site.args[:4])} ... "
                  f"--ramp-w-s {self.s.site.ramp_w_s():g}")

    def _connect_operator(self, url: str, signer: Any) -> SiteSender:
        self.operator = connect(url, signer, self.work)
        sender = SiteSender(self.operator, signer, SITE_GM, self.live)
        base = f"{PREFIX}/{SITE_GM}/{SITE_DEVICE}"
        self.operator.subscribe([sender.response_topic, f"{base}/status", f"{base}/telemetry"])
        self.listener = Listener(self.operator, sender, self.live, self.clock)
        self.listener.start()
        self._wait_site_online()
        return sender

    def _wait_site_online(self) -> dict[str, Any]:
        deadline = time.monotonic() + self.o.start_timeout_s
        while time.monotonic() < deadline:
            self._feed_meter()
            with self.live.lock:
                status = dict(self.live.status)
                heard = bool(self.live.telemetry)
            if status.get("state") == "online" and isinstance(status.get("caps"), dict) and heard:
                caps = status["caps"]
                self.note(f"site online: caps max {caps.get('max_w')} W, ramp "
                          f"{caps.get('ramp_max_w_s')} W/s")
                return caps
            assert self.site is not None
            self.site_exits.check(self.site, self.note, fatal=True)
            time.sleep(0.1)
        assert self.site is not None
        raise RigError(f"the site controller did not come online within "
                       f"{self.o.start_timeout_s:g} s (log {self.site.log_path}):\n"
                       f"{log_tail(self.site.log_path)}")

    def _feed_meter(self) -> None:
        """The meter's reading while the rig waits (the site needs it to go online)."""
        gm = getattr(self, "gm", None)
        if gm is not None and gm.meter_topic and gm.tap is not None:
            gm.tap.publish_meter(gm.meter_topic, float(gm.fleet.figures()["power_w"]))

    def _start_baseline(self, url: str, key: Path) -> BaselineSender:
        from agent.site.client import BrokerOptions, Operator
        from agent.site.signer import CommandSigner, SeqCounter
        from hil.site.baseline import BaselineDispatcher, BaselinePolicy

        signer = CommandSigner.from_file(key, BASELINE_KID, PREFIX)
        self.baseline_op = Operator(BrokerOptions(url, client_id="hil-baseline"), signer,
                                    SeqCounter(self.work / "baseline.seq.json")).connect(10.0)
        policy = BaselinePolicy(confirm_s=self.s.site.baseline_confirm_s)
        self.baseline = BaselineDispatcher(self.baseline_op, SITE_BASE, policy, prefix=PREFIX)
        self.baseline.start()
        self.note(f"baseline dispatcher on site {SITE_BASE}: batches of "
                  f"{policy.batch_size(self.s.site.devices)}, {policy.confirm_s:g} s "
                  "confirmation, least efficient first, open loop")
        return BaselineSender(self.baseline, self.rating_w)

    # ---- playing ------------------------------------------------------------------------
    def _play(self, passes: list[SitePass]) -> None:
        """The schedule on `passes` at once, from a fresh scenario clock."""
        s, speed = self.s, self.o.speed
        self._settle(passes)
        self.clock.start()
        with self.live.lock:
            self.live.telemetry.clear()
        for p in passes:
            assert p.tap is not None
            p.tap.commands[p.site].clear()
            p.capacity.append((0.0, self.rating_w))
            p.fleet.sample(self.clock, s.site.meter_period_s or 0.25, self._sampler(p))
        self.note(f"scenario {s.name} starts on {', '.join(p.name for p in passes)} "
                  f"({s.duration_s / speed:.0f} s at {speed:g}x)")
        faults = list(s.faults)
        rng = random.Random(s.site.seed)
        alive = sorted(self.ratings)
        end = s.duration_s / speed
        next_tick = time.monotonic()
        while (t := self.clock.now()) < end:
            t_sc = t * speed
            for p in passes:
                assert p.sim is not None
                for cmd in p.sim.poll(t_sc, t):
                    if cmd.error:
                        self.note(f"{p.name}: command {cmd.label} not sent: {cmd.error}")
            while faults and faults[0].at_s <= t_sc:
                fault = faults.pop(0)
                if fault.kind == "kill_devices":
                    ids = sorted(rng.sample(alive, round(fault.share * len(self.ratings))))
                    alive = [d for d in alive if d not in set(ids)]
                    self._kill_devices(passes, ids, fault, t)
                elif any(p.name == "gridminer" for p in passes):
                    self._kill_site(fault, t)
            if self._restart_at is not None and t >= self._restart_at:
                self._restart_at = None
                assert self.site is not None
                self.site.start()
                self.note("site controller started again")
            self._check_site(passes)
            self._progress(passes)
            next_tick += TICK_S
            time.sleep(max(0.0, next_tick - time.monotonic()))
        for worker in self._workers:
            worker.join(30.0)
        for p in passes:
            p.end_s = round(self.clock.now(), 3)
            p.fleet.stop_sampling()
            if p.fleet.stalls:
                self.note(f"fleet {p.site}: {p.fleet.stalls} figures requests unanswered "
                          "(gaps in its power series)")
        self._finish(passes)

    def _sampler(self, p: SitePass) -> Callable[[float, dict[str, Any]], None]:
        """What each sample of a fleet's figures does: the series, and the site meter."""
        def take(t: float, figs: dict[str, Any]) -> None:
            p.power_w.add(round(t, 3), float(figs["power_w"]))
            p.online.add(round(t, 3), float(figs["online"]))
            if p.meter_topic and p.tap is not None:
                p.tap.publish_meter(p.meter_topic, float(figs["power_w"]))
        return take

    def _settle(self, passes: list[SitePass]) -> None:
        """Until every fleet draws a steady power (its devices' start-up spread is over), at
        most warmup_s."""
        deadline = time.monotonic() + self.s.warmup_s
        history: list[list[float]] = [[] for _ in passes]
        while time.monotonic() < deadline:
            for h, p in zip(history, passes, strict=True):
                try:
                    h.append(float(p.fleet.figures()["power_w"]))
                except RigError:
                    continue  # busy: the next sample
                if p.meter_topic and p.tap is not None:
                    p.tap.publish_meter(p.meter_topic, h[-1])
            window = int(3.0 / 0.25)
            if all(len(h) > window and max(h[-window:]) - min(h[-window:])
                   <= 0.02 * self.rating_w for h in history):
                return
            time.sleep(0.25)
        self.note(f"warm-up: the fleets did not settle within {self.s.warmup_s:g} s; "
                  "playing anyway")

    def _kill_devices(self, passes: list[SitePass], ids: list[str], fault: Any,
                      t: float) -> None:
        """The power cut on each fleet, each in a thread of its own: a busy fleet answers late,
        and the schedule must not wait for it."""
        lost_w = sum(self.ratings[d] for d in ids)
        for p in passes:
            p.capacity.append((t, p.capacity[-1][1] - lost_w))
            thread = threading.Thread(target=self._kill_on, args=(p, ids, fault, t),
                                      name=f"kill-{p.site}", daemon=True)
            thread.start()
            self._workers.append(thread)
        self.note(f"{len(ids)} devices lose power ({lost_w / 1000:.0f} kW of rating)")

    def _kill_on(self, p: SitePass, ids: list[str], fault: Any, t: float) -> None:
        try:
            p.fleet.kill(ids)
        except RigError as exc:
            self.note(f"fleet {p.site}: the power cut was not done: {exc}")
            return
        done = self.clock.now()  # the cut happened between t and now
        exempt_end = done + self.s.measure.exempt_after_fault_s
        p.faults.append({"t_s": round(t, 3), "end_s": round(exempt_end, 3),
                         "done_s": round(done, 3), "kind": fault.kind,
                         "label": fault.label or fault.kind, "devices": len(ids),
                         "exempt": {"tracking": [t, exempt_end], "ramp": [t - 0.5, done + 1.5]}})

    def _kill_site(self, fault: Any, t: float) -> None:
        assert self.site is not None
        self.site.kill()
        restart = t + fault.restart_after_s / self.o.speed
        self._restart_at = restart
        self.site_down.append([round(t, 3), round(restart, 3)])
        self.gm.faults.append({"t_s": round(t, 3), "end_s": round(restart, 3),
                               "kind": fault.kind, "label": fault.label or fault.kind,
                               "exempt": {"tracking": [t, restart
                                                       + self.s.measure.exempt_after_fault_s]}})
        self.note(f"site controller SIGKILLed; started again in "
                  f"{fault.restart_after_s / self.o.speed:.1f} s")

    def _check_site(self, passes: list[SitePass]) -> None:
        site = self.site
        if site is None or not any(p.name == "gridminer" for p in passes):
            return
        if self.site_exits.check(site, self.note):
            site.restart()

    def _finish(self, passes: list[SitePass]) -> None:
        gm = next((p for p in passes if p.name == "gridminer"), None)
        if gm is None or gm.sim is None:
            return
        deadline = time.monotonic() + ACK_GRACE_S / max(1.0, self.o.speed) + 2.0
        while time.monotonic() < deadline:
            with self.live.lock:
                if all(c.id in self.live.acks for c in gm.sim.sent if c.id):
                    break
            time.sleep(0.1)

    def _stop_site(self) -> None:
        if self.site is not None:
            self.site.stop()

    # ---- the recording ------------------------------------------------------------------
    def _recording(self, gm: SitePass, base: SitePass | None) -> SiteRecording:
        assert gm.sim is not None
        with self.live.lock:
            acks = dict(self.live.acks)
            telemetry = list(self.live.telemetry)
            status = dict(self.live.status)
        for c in gm.sim.sent:
            c.take_ack(acks.get(c.id))
        s = self.s
        rec = SiteRecording(
            scenario=s.name, speed=self.o.speed, rating_w=self.rating_w,
            ramp_w_s=s.site.ramp_w_s(),  # declared with --ramp-w-s (the site's caps)
            devices=s.site.devices, side_by_side=s.site.side_by_side,
            measure=asdict(s.measure), criteria=dict(s.criteria),
            regulation=[{"t0_s": r.at_s, "t1_s": r.end_s,
                         "basepoint_w": self.rating_w * r.basepoint_pct / 100.0,
                         "band_w": self.rating_w * r.band_pct / 100.0} for r in s.regulation],
            site_down=self.site_down, site_crashes=self.site_exits.exits, events=self.events,
            site_telemetry=[{k: m.get(k) for k in ("t_s", "power_w", "target_w", "devices",
                                                   "flex_up_w", "flex_down_w")}
                            for m in telemetry],
            meta={"scenario_file": str(s.path) if s.path else None,
                  "site_command": self.site.command if self.site else None,
                  "site_log": str(self.site.log_path) if self.site else None,
                  "fleet_commands": [f.command for f in self.fleets],
                  "site_status": status})
        for p in (gm, base):
            if p is None or p.sim is None:
                continue
            rec.passes[p.name] = {
                "site": p.site, "end_s": p.end_s, "power_w": _series(p.power_w),
                "online": _series(p.online), "capacity": p.capacity, "faults": p.faults,
                "commands": [c.as_dict() for c in p.sim.sent],
                "device_commands": p.tap.command_times(p.site) if p.tap else [],
            }
        if base is not None and self.baseline is not None:
            rec.passes["baseline"]["batches"] = len(self.baseline.batches)
            rec.passes["baseline"]["given_up"] = self.baseline.core.given_up
        return rec

    def _parts(self) -> list[tuple[Any, str]]:
        return [
            (self.baseline, "stop"), (self.site, "stop"), *[(f, "stop") for f in self.fleets],
            (self.baseline_op, "close"), (self.operator, "close"),
            *[(t, "close") for t in self.taps], *[(b, "close") for b in self.brokers]]


def _series(s: Series) -> dict[str, list[Any]]:
    return {"t_s": s.t_s, "v": s.v}


def run_site_scenario(options: SiteRunOptions) -> dict[str, Any]:
    """Play one site scenario on a fresh rig; returns the summary."""
    return SiteRig(options).run()
