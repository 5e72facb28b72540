"""The lab rig: broker + emulated board + agent process + grid simulator, one scenario, one report.

`run_scenario(RigOptions(...))` (`Rig(options).run()`) does, in order:

1. a private Mosquitto on a free loopback port (`hil.broker.Mosquitto`) unless a broker URL is
   given; an operator key pair for the run; the lab pools of the scenario's `[pool]` part;
2. the emulated hash board as its own process (`python -m agent emulate`, status file and
   control socket in the run folder) unless a real target is given (`RigTarget`);
3. the agent as its own process, exactly as a user runs it
   (`python -m agent agent --config DIR/rig/agent.toml`); a scenario with a broker outage puts
   a TCP link the rig can cut between the agent and the broker;
4. warm-up: waits for the agent's retained status (caps), sends the initial setpoint and waits
   for the board to settle; then plays the scenario: grid commands (signed, through the broker),
   ambient temperature and faults, sampling the board's true state at 10 Hz;
5. stops everything it started and writes DIR/report.png, DIR/summary.json, DIR/summary.md and
   DIR/recording.json.

With a real target (serial URLs of a lab board), there is no emulator: ambient and board faults
cannot be injected (they are skipped and listed), and the "true" state is the agent's own
telemetry, so violations are only as trustworthy as the agent's sensors.

Modules: `options` (options, target, errors, names, clock), `process` (emulator and agent
processes), `cutter` (the broker link cut), `pools` (the lab pools and their cues),
`agentconfig` (the agent's config file),
`operator` (the rig as the grid operator on MQTT), `injection` (faults), `status` (console),
`lifecycle` (what every lab run does around its scenario: folders, clock, console, teardown,
the verdict on a child that keeps exiting; the site run's too), `runner` (the run phases).
"""

from __future__ import annotations

from hil.rig.agentconfig import deep_merge, dump_toml, write_agent_config
from hil.rig.cutter import LinkCutter
from hil.rig.injection import FaultInjector
from hil.rig.operator import Listener, Live, OperatorSender
from hil.rig.options import (
    DEVICE,
    EMULATION_DIFFICULTY,
    KID,
    PREFIX,
    SITE,
    TRUTH_PERIOD_S,
    RigClock,
    RigError,
    RigOptions,
    RigTarget,
)
from hil.rig.process import AgentProcess, EmulatorProcess, log_tail, stop_process
from hil.rig.runner import Rig, run_scenario
from hil.rig.status import ProgressHook, StatusLine

__all__ = [
    "DEVICE",
    "EMULATION_DIFFICULTY",
    "KID",
    "PREFIX",
    "SITE",
    "TRUTH_PERIOD_S",
    "AgentProcess",
    "EmulatorProcess",
    "FaultInjector",
    "LinkCutter",
    "Listener",
    "Live",
    "OperatorSender",
    "ProgressHook",
    "Rig",
    "RigClock",
    "RigError",
    "RigOptions",
    "RigTarget",
    "StatusLine",
    "deep_merge",
    "dump_toml",
    "log_tail",
    "run_scenario",
    "stop_process",
    "write_agent_config",
]
