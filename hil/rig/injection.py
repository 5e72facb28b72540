"""Fault injection: `FaultInjector` plays a scenario's [[fault]] entries at their times on the
rig's parts (the link cutter for a broker outage, SIGKILL and a restart for the agent, the
emulator's control socket for serial garbage, a dead chip or a stuck sensor), records each fault
as the report reads it (with the windows it exempts from judging, and the safety trip it
expects), and lists what this rig cannot inject.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hil.rig.cutter import LinkCutter
from hil.rig.process import AgentProcess, EmulatorProcess
from hil.scenario import Fault, Scenario

RESTART_SPREAD_S = 1.0  # the agent's restart_spread_s in the rig's config
GARBAGE_PERIOD_S = 0.5  # serial garbage goes out in bursts this far apart


class FaultInjector:
    """The scenario's faults on this rig; `step(t)` every tick of the run, `finish()` at its end.
    Times are rig seconds (`now()`); scenario times are divided by `speed`."""

    def __init__(self, scenario: Scenario, speed: float, now: Callable[[], float], *,
                 agent: AgentProcess, emulator: EmulatorProcess | None,
                 cutter: LinkCutter | None, note: Callable[[str], None], skipped: list[str],
                 full_ramp_s: float, trip_hold_s: float) -> None:
        self.scenario = scenario
        self.speed = speed
        self.now = now
        self.agent = agent
        self.emulator = emulator
        self.cutter = cutter
        self.note = note
        self.skipped = skipped  # appended to: "KIND at T s: why"
        self.full_ramp_s = full_ramp_s  # idle to rated power at the agent's ramp
        self.trip_hold_s = trip_hold_s
        self.records: list[dict[str, Any]] = []  # t_s, end_s, kind, label, exempt[, expect]
        self.restart_at: float | None = None  # when the killed agent is started again
        self._faults = list(scenario.faults)
        self._started = [False] * len(self._faults)
        self._ended = [False] * len(self._faults)
        self._garbage_next: dict[int, float] = {}

    def step(self, t_sc: float) -> None:
        """Start and end the faults due at scenario time `t_sc`; send serial garbage."""
        for i, f in enumerate(self._faults):
            if not self._started[i] and t_sc >= f.at_s:
                self._started[i] = True
                self._start(i, f)
            end = f.end_s()
            if self._started[i] and not self._ended[i] and end is not None and t_sc >= end:
                self._ended[i] = True
                self._end(f)
        self._garbage()

    def restart_due(self, t: float) -> bool:
        """True once when the killed agent is due to start again at rig time `t`."""
        if self.restart_at is not None and t >= self.restart_at:
            self.restart_at = None
            return True
        return False

    def finish(self) -> None:
        """End the faults still on at the end of the run."""
        for i, f in enumerate(self._faults):
            if self._started[i] and not self._ended[i]:
                self._end(f)

    def _start(self, index: int, f: Fault) -> None:
        t = self.now()
        label = f.label or f.kind
        duration = None if f.duration_s is None else f.duration_s / self.speed
        end = None if duration is None else t + duration
        record: dict[str, Any] = {"t_s": round(t, 2), "end_s": None if end is None else
                                  round(end, 2), "kind": f.kind, "label": label, "exempt": {}}
        ok, detail = self._inject(index, f, t, duration, record)
        if not ok:
            self.skipped.append(f"{f.kind} at {f.at_s:g} s: {detail}")
            self.note(f"fault {label} NOT injected: {detail}")
            return
        self.records.append(record)
        self.note(f"fault: {label}" + (f" for {duration:.1f} s" if duration else ""))

    def _inject(self, index: int, f: Fault, t: float, duration: float | None,
                record: dict[str, Any]) -> tuple[bool, str]:
        """Inject `f` now (rig time `t`); fills the record's exemptions. (ok, why not)."""
        end = None if duration is None else t + duration
        until = (end or self.scenario.duration_s) + self.scenario.measure.exempt_after_fault_s
        if f.kind == "broker_outage":
            if self.cutter is None:
                return False, "no link cutter"
            self.cutter.cut()
            record["exempt"]["tracking"] = [t, until]
            return True, ""
        if f.kind == "agent_kill":
            self._kill_agent(f, t, record)
            return True, ""
        if self.emulator is None:
            return False, "needs the emulator"
        if f.kind == "serial_garbage":
            self._garbage_next[index] = t
            record["exempt"]["tracking"] = [t, until]
            return True, ""
        if f.kind == "chip_death":
            return self._chip_death(f, t, duration, record)
        if f.kind == "stuck_sensor":
            return self._stuck_sensor(f, t, duration, until, record)
        return True, ""

    def _kill_agent(self, f: Fault, t: float, record: dict[str, Any]) -> None:
        self.agent.kill()
        restart = t + f.restart_after_s / self.speed
        self.restart_at = restart
        record["end_s"] = round(restart, 2)
        exempt_after = self.scenario.measure.exempt_after_fault_s
        record["exempt"]["tracking"] = [t, restart + RESTART_SPREAD_S + exempt_after]
        # while no agent runs, the bridge firmware's watchdog may idle the chain at once;
        # from the restart on, every move is the agent's and must respect its ramp
        record["exempt"]["ramp"] = [t, restart]

    def _emulator_fault(self, fault: dict[str, Any], duration: float | None) -> tuple[bool, str]:
        assert self.emulator is not None
        if duration is not None:
            fault["duration_s"] = duration
        reply = self.emulator.control({"cmd": "inject_fault", "fault": fault})
        return bool(reply.get("ok")), str(reply.get("error", ""))

    def _chip_death(self, f: Fault, t: float, duration: float | None,
                    record: dict[str, Any]) -> tuple[bool, str]:
        result = self._emulator_fault({"kind": "chip_silent", "chip": f.chip}, duration)
        # the agent finds the dead chip, winds the chain down at its ramp, re-initialises it
        # and climbs back at its ramp: tracking is judged again after that recovery (the
        # ramp is judged throughout, but for the step of the chip dying itself)
        exempt_after = self.scenario.measure.exempt_after_fault_s
        recover_s = 4.0 + 2.0 * self.full_ramp_s
        record["exempt"]["tracking"] = [[t, t + exempt_after + recover_s]]
        record["exempt"]["ramp"] = [[t - 0.5, t + 2.0]]
        if duration is not None:  # the chip coming back is a step of its own
            end = t + duration
            record["exempt"]["tracking"].append([end, end + exempt_after])
            record["exempt"]["ramp"].append([end - 0.5, end + 2.0])
        return result

    def _stuck_sensor(self, f: Fault, t: float, duration: float | None, until: float,
                      record: dict[str, Any]) -> tuple[bool, str]:
        result = self._emulator_fault(
            {"kind": "sensor_stuck", "sensor": "chip_temp", "channel": f.chip}, duration)
        # the agent must find the stuck reading and trip to a safe idle (its drop is not
        # judged for ramp); it comes back once the reading moves again, after its hold
        # time, at its ramp
        record["expect"] = "trip"
        record["exempt"]["tracking"] = [t, until + self.trip_hold_s + self.full_ramp_s]
        return result

    def _end(self, f: Fault) -> None:
        if f.kind == "broker_outage" and self.cutter is not None:
            self.cutter.restore()
            self.note("broker link restored")

    def _garbage(self) -> None:
        """A burst of serial garbage for each garbage fault that is due, until it ends."""
        if self.emulator is None:
            return
        now = self.now()
        for index, due in list(self._garbage_next.items()):
            f = self._faults[index]
            end = f.end_s()
            if end is not None and now >= end / self.speed:
                del self._garbage_next[index]
                continue
            if now >= due:
                n = max(1, int(f.rate_bps * GARBAGE_PERIOD_S))
                self.emulator.control({"cmd": "inject_fault", "fault": {
                    "kind": "serial_garbage", "bytes": min(n, 65536), "port": f.link}})
                self._garbage_next[index] = now + GARBAGE_PERIOD_S
