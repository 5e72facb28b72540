"""The lab rig: broker + emulated board + agent process + grid simulator, one scenario, one report.

`Rig(options).run()` does, in order:

1. a private Mosquitto on a free loopback port (`hil.broker.Mosquitto`) unless a broker URL is
   given; an operator key pair for the run;
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
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import queue
import secrets
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import cbor2

from agent.errors import GridminerError
from hil.chain import DEFAULT_DIFFICULTY
from hil.gridsim import Caps, GridSimulator, PlannedCommand, SentCommand, plan
from hil.report import Recording, Series, energy_wh, write_report
from hil.scenario import Fault, Scenario

SITE = "hil"
DEVICE = "rig0"
KID = "hil-operator"
PREFIX = "gridminer"
TRUTH_PERIOD_S = 0.1
EMULATION_DIFFICULTY = DEFAULT_DIFFICULTY  # the emulator's default; the agent is told the same


class RigError(GridminerError):
    """The rig could not start or run a part (broker, emulator, agent); the message says which
    and where its log is."""


@dataclass(frozen=True)
class RigTarget:
    """A real board: pyserial URLs of the chain and board links (no emulator)."""

    chain: str
    board: str

    @classmethod
    def parse(cls, text: str) -> RigTarget:
        """`chain=URL,board=URL` (the `--hil-target` syntax)."""
        parts: dict[str, str] = {}
        for item in text.split(","):
            key, sep, value = item.partition("=")
            if not sep or key.strip() not in ("chain", "board") or not value.strip():
                raise RigError(
                    f"--hil-target {text!r}: expected chain=URL,board=URL "
                    "(e.g. chain=rfc2217://host:4001,board=rfc2217://host:4002)")
            parts[key.strip()] = value.strip()
        if set(parts) != {"chain", "board"}:
            raise RigError(f"--hil-target {text!r}: both chain= and board= are needed")
        return cls(parts["chain"], parts["board"])


@dataclass
class RigOptions:
    scenario: Scenario
    out_dir: Path
    speed: float = 1.0
    broker_url: str | None = None
    target: RigTarget | None = None
    progress: TextIO | None = None  # live status line (stderr by default in the CLI)
    python: str = sys.executable
    agent_log_level: str = "INFO"
    start_timeout_s: float = 60.0
    ack_grace_s: float = 10.0


# --------------------------------------------------------------------------- processes


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop_process(proc: subprocess.Popen[Any] | None, timeout_s: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after `timeout_s`; only the process the rig started."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(5.0)


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


class LinkCutter:
    """A TCP relay between the agent and the broker that the rig can cut (a broker outage as the
    agent sees it: connections drop, new ones are refused) and restore."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(8)
        self.port = int(self._listener.getsockname()[1])
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._cut = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="link-cutter", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def cut(self) -> None:
        self._cut.set()
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for a, b in pairs:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def restore(self) -> None:
        self._cut.clear()

    def close(self) -> None:
        self._stop.set()
        self.cut()
        with contextlib.suppress(OSError):
            self._listener.close()
        self._thread.join(2.0)

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._listener, selectors.EVENT_READ, None)
        registered: set[socket.socket] = set()
        while not self._stop.is_set():
            with self._lock:
                live = {s for pair in self._pairs for s in pair}
                peers = {a: b for a, b in self._pairs} | {b: a for a, b in self._pairs}
            for s in registered - live:
                with contextlib.suppress(KeyError, ValueError, OSError):
                    sel.unregister(s)
            for s in live - registered:
                with contextlib.suppress(KeyError, ValueError, OSError):
                    sel.register(s, selectors.EVENT_READ, None)
            registered = {s for s in live if s.fileno() >= 0}
            try:
                events = sel.select(0.1)
            except (OSError, ValueError):
                continue
            for key, _ in events:
                s = key.fileobj  # type: ignore[assignment]
                assert isinstance(s, socket.socket)
                if s is self._listener:
                    self._accept()
                    continue
                peer = peers.get(s)
                try:
                    data = s.recv(65536)
                except OSError:
                    data = b""
                if not data or peer is None:
                    self._drop(s)
                    continue
                try:
                    peer.sendall(data)
                except OSError:
                    self._drop(s)
        sel.close()

    def _accept(self) -> None:
        try:
            conn, _ = self._listener.accept()
        except OSError:
            return
        if self._cut.is_set():
            conn.close()
            return
        try:
            up = socket.create_connection(self.upstream, timeout=3.0)
            up.settimeout(None)
        except OSError:
            conn.close()
            return
        with self._lock:
            self._pairs.append((conn, up))

    def _drop(self, s: socket.socket) -> None:
        with self._lock:
            for pair in list(self._pairs):
                if s in pair:
                    self._pairs.remove(pair)
                    for x in pair:
                        with contextlib.suppress(OSError):
                            x.close()


class EmulatorProcess:
    """`python -m agent emulate` with a status file and a control socket in the run folder."""

    def __init__(self, scenario: Scenario, work: Path, python: str, timeout_s: float) -> None:
        dev = scenario.device
        self.status_path = work / "emulator-status.json"
        self.control_path = work / "emulator.sock"
        self.log_path = work / "emulator.log"
        cmd = [python, "-m", "agent", "emulate", "--family", dev.family, "--chips",
               str(dev.chips), "--seed", str(dev.seed), "--ambient-c", str(dev.ambient_c),
               "--status-file", str(self.status_path), "--control", str(self.control_path)]
        # every nonce is a real SHA-256d solution at this difficulty; the agent verifies them
        # against the same value (chain.nonce_difficulty in its config)
        self.difficulty = dev.difficulty if dev.difficulty is not None else EMULATION_DIFFICULTY
        cmd += ["--difficulty", repr(self.difficulty)]
        self._log = open(self.log_path, "w", encoding="utf-8")  # noqa: SIM115 - closed in stop
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._log, text=True,
                                     cwd=str(work))
        self.info = self._first_line(timeout_s)
        self.chain = str(self.info["chain"])
        self.board = str(self.info["board"])
        self._last_time_s: float | None = None

    def _first_line(self, timeout_s: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        box: list[str] = []
        reader = threading.Thread(target=lambda: box.append(self.proc.stdout.readline()),  # type: ignore[union-attr]
                                  daemon=True)
        reader.start()
        reader.join(timeout_s)
        line = box[0] if box else ""
        try:
            info = json.loads(line)
            if not isinstance(info, dict) or "chain" not in info:
                raise ValueError(line)
            return info
        except ValueError:
            _stop_process(self.proc)
            raise RigError(f"the emulator did not start (log {self.log_path}):\n"
                           f"{_log_tail(self.log_path)}") from None

    def control(self, request: dict[str, Any]) -> dict[str, Any]:
        """One JSON-lines request on the control socket; a failure is returned, not raised."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(2.0)
                s.connect(str(self.control_path))
                s.sendall(json.dumps(request).encode() + b"\n")
                buf = b""
                while not buf.endswith(b"\n"):
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    buf += chunk
            reply = json.loads(buf or b"{}")
            return reply if isinstance(reply, dict) else {"ok": False, "error": "bad reply"}
        except (OSError, ValueError) as exc:
            return {"ok": False, "error": str(exc)}

    def state(self) -> dict[str, Any] | None:
        """The latest status file (None when unchanged since the last call or unreadable)."""
        try:
            data = json.loads(self.status_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        t = data.get("time_s")
        if t is not None and t == self._last_time_s:
            return None
        self._last_time_s = t
        return data if isinstance(data, dict) else None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        _stop_process(self.proc)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()


class AgentProcess:
    """The agent as a user runs it; killed and restarted on demand, its log kept."""

    def __init__(self, config_path: Path, work: Path, python: str) -> None:
        self.config_path = config_path
        self.work = work
        self.python = python
        self.log_path = work / "agent.log"
        self.proc: subprocess.Popen[Any] | None = None
        self.starts = 0
        self._log: Any = None

    @property
    def command(self) -> list[str]:
        return [self.python, "-m", "agent", "agent", "--config", str(self.config_path)]

    def start(self) -> None:
        self._log = open(self.log_path, "a", encoding="utf-8")  # noqa: SIM115 - closed in stop
        self._log.write(f"---- rig: start #{self.starts + 1}: {' '.join(self.command)}\n")
        self._log.flush()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(self.command, stdout=self._log, stderr=subprocess.STDOUT,
                                     cwd=str(self.work), env=env)
        self.starts += 1

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5.0)
        if self._log is not None:
            self._log.write("---- rig: agent killed with SIGKILL\n")
            self._log.close()
            self._log = None

    def exited(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def stop(self) -> None:
        _stop_process(self.proc, timeout_s=8.0)
        if self._log is not None:
            self._log.close()
            self._log = None


# --------------------------------------------------------------------------- grid side


class OperatorSender:
    """Sends the simulator's commands with the operator module's signer over one MQTT client;
    acks come back on a response topic and are matched by correlation data."""

    def __init__(self, op: Any, signer: Any, seq: Any, response_topic: str) -> None:
        self.op = op
        self.signer = signer
        self.seq = seq
        self.response_topic = response_topic
        self.by_correlation: dict[bytes, str] = {}

    def send(self, op: str, *, power_w: int | None, ramp_w_s: int | None, validity_s: float,
             fallback: str | None) -> tuple[str, int | None, int | None]:
        signed = self.signer.build(SITE, DEVICE, op, seq=self.seq.next(self.signer.kid),
                                   validity_s=validity_s, power_w=power_w, ramp_w_s=ramp_w_s,
                                   fallback=fallback)
        correlation = secrets.token_bytes(8)
        self.by_correlation[correlation] = signed.id.hex()
        self.op.publish_command(signed, self.response_topic, correlation)
        return signed.id.hex(), signed.seq, signed.exp_ms


@dataclass
class Live:
    """What the rig has heard from the agent (updated by the MQTT thread)."""

    status: dict[str, Any] = field(default_factory=dict)
    telemetry: list[dict[str, Any]] = field(default_factory=list)
    last: dict[str, Any] = field(default_factory=dict)
    acks: dict[str, tuple[float, dict[str, Any]]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _decode(payload: bytes) -> dict[str, Any] | None:
    try:
        data = cbor2.loads(payload)
    except Exception:
        return None
    return dict(data) if isinstance(data, dict) else None


# --------------------------------------------------------------------------- the rig


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        nested = isinstance(v, dict) and isinstance(out.get(k), dict)
        out[k] = deep_merge(out[k], v) if nested else v
    return out


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {value!r} as TOML")


def dump_toml(data: dict[str, Any]) -> str:
    """A two-level TOML writer (sections of scalars, lists and inline tables)."""
    lines = []
    for section, table in data.items():
        lines.append(f"[{section}]")
        for key, value in table.items():
            lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
    text = "\n".join(lines)
    tomllib.loads(text)  # what we write must read back
    return text


class Rig:
    """Runs one scenario end to end; see the module docstring."""

    def __init__(self, options: RigOptions) -> None:
        self.o = options
        self.s = options.scenario
        self.out = options.out_dir.resolve()  # the children run in the run folder
        self.work = self.out / "rig"
        self.live = Live()
        self.broker: Any = None
        self.cutter: LinkCutter | None = None
        self.emulator: EmulatorProcess | None = None
        self.agent: AgentProcess | None = None
        self.operator: Any = None
        self.sim: GridSimulator | None = None
        self.t0 = 0.0  # monotonic time of scenario start
        self.wall_t0 = 0.0  # the same instant in Unix time
        self.epoch = 0
        self.faults: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.skipped: list[str] = []
        self.crashes = 0
        self.restarts = 0
        self.rec: Recording | None = None
        self.agent_cfg: Any = None  # the agent's config as the agent reads it
        self._stop_mqtt = threading.Event()
        self._mqtt_thread: threading.Thread | None = None
        self._killed_by_rig = False
        self._restart_at: float | None = None
        self._last_progress = 0.0
        self._last_ambient: float | None = None
        self._garbage_next: dict[int, float] = {}
        self._wall_w = Series()

    # ---- helpers ------------------------------------------------------------------------
    def now(self) -> float:
        return time.monotonic() - self.t0

    def note(self, text: str) -> None:
        self.events.append({"t_s": round(self.now(), 2), "text": text})
        self._print(f"[{self.now():7.1f} s] {text}", line=True)

    def _print(self, text: str, line: bool = False) -> None:
        out = self.o.progress
        if out is None:
            return
        tty = hasattr(out, "isatty") and out.isatty()
        if tty:
            out.write("\r\x1b[2K" + text + ("\n" if line else ""))
        elif line:
            out.write(text + "\n")
        out.flush()

    # ---- setup --------------------------------------------------------------------------
    def _keys(self) -> tuple[Any, Path]:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        from agent.grid import cose
        from agent.site.signer import CommandSigner

        key = Ed25519PrivateKey.generate()
        priv = self.work / "operator.pem"
        fd = os.open(priv, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(cose.private_pem(key))
        pub = self.work / "operator.pub.pem"
        pub.write_bytes(cose.public_pem(key.public_key()))
        return CommandSigner(key, KID, PREFIX), pub

    def _start_broker(self) -> str:
        if self.o.broker_url:
            return self.o.broker_url
        from hil.broker import Mosquitto

        self.broker = Mosquitto(folder=self.work / "broker")
        self.broker.start()
        return str(self.broker.url)

    def _agent_config(self, broker_url: str, pub: Path, chain: str, board: str,
                      nonce_difficulty: float | None) -> Path:
        dev = self.s.device
        cfg: dict[str, Any] = {
            "chain": {"port": chain, "family": dev.family, "chips": dev.chips},
            "board": {"port": board},
            "grid": {
                "broker_url": broker_url, "site": SITE, "device": DEVICE, "prefix": PREFIX,
                "operator_keys": [{"kid": KID, "path": str(pub)}],
                "state_dir": str(self.work / "agent-state"),
                "insecure_no_tls": True, "restart_spread_s": 1.0, "telemetry_period_s": 1.0,
            },
            "log": {"level": self.o.agent_log_level, "status_period_s": 10.0},
        }
        if nonce_difficulty is not None:
            cfg["chain"]["nonce_difficulty"] = nonce_difficulty
        cfg = deep_merge(cfg, dev.agent)
        path = self.work / "agent.toml"
        path.write_text("# written by `gridminer hil run` for this run\n" + dump_toml(cfg),
                        encoding="utf-8")
        return path

    def _connect_operator(self, broker_url: str, signer: Any) -> OperatorSender:
        from agent.site.client import BrokerOptions, Operator
        from agent.site.signer import SeqCounter

        op = Operator(BrokerOptions(broker_url, client_id=f"hil-grid-{secrets.token_hex(3)}"),
                      signer, SeqCounter(self.work / "operator.seq.json"))
        op.connect(10.0)
        self.operator = op
        base = f"{PREFIX}/{SITE}/{DEVICE}"
        response = f"{base}/ack/{op.options.client_id}"
        op.subscribe([response, f"{base}/ack", f"{base}/status", f"{base}/telemetry"])
        sender = OperatorSender(op, signer, op.seq, response)
        self._mqtt_thread = threading.Thread(target=self._mqtt_loop, args=(sender,),
                                             name="hil-mqtt", daemon=True)
        self._mqtt_thread.start()
        return sender

    def _mqtt_loop(self, sender: OperatorSender) -> None:
        assert self.operator is not None
        while not self._stop_mqtt.is_set():
            try:
                topic, payload, props, _ = self.operator.messages.get(timeout=0.2)
            except queue.Empty:
                continue
            data = _decode(payload)
            if data is None:
                continue
            t = self.now()
            kind = topic.split("/")[3] if topic.count("/") >= 3 else ""
            with self.live.lock:
                if kind == "telemetry":
                    # time of production from the device's ts (buffered telemetry arrives late)
                    ts = data.get("ts")
                    t_dev = ts / 1000.0 - self.wall_t0 if isinstance(ts, int) else t
                    if abs(t_dev - t) > 3600:
                        t_dev = t  # a device clock far off: use the arrival time
                    row = {**_jsonable(data), "t_s": round(t_dev, 3), "rx_s": round(t, 3),
                           "epoch": self.epoch}
                    self.live.telemetry.append(row)
                    self.live.last = row
                elif kind == "status":
                    self.live.status = _jsonable(data)
                elif kind == "ack":
                    corr = getattr(props, "CorrelationData", None)
                    cid = sender.by_correlation.get(bytes(corr)) if corr else None
                    if cid is None and isinstance(data.get("id"), bytes):
                        cid = data["id"].hex()
                    if cid is not None and cid not in self.live.acks:
                        self.live.acks[cid] = (t, _jsonable(data))

    # ---- truth --------------------------------------------------------------------------
    def _sample_truth(self, rec: Recording) -> dict[str, Any] | None:
        t = self.now()
        if self.emulator is not None:
            st = self.emulator.state()
            if st is None:
                return None
            freqs = st.get("freq_mhz")
            freq = (sum(freqs) / len(freqs)) if isinstance(freqs, list) and freqs else freqs
            # the power the setpoint means: the board's input, or the wall's (through the
            # emulator's PSU model) when the agent is told its PSU's efficiency
            at_wall = self.agent_cfg is not None and self.agent_cfg.board.psu_efficiency < 1.0
            rec.truth_power_w.add(t, _num(st.get("wall_power_w" if at_wall else "board_power_w")))
            self._wall_w.add(t, _num(st.get("wall_power_w")))
            rec.truth_temp_c.add(t, _num(st.get("max_chip_temp_c")))
            rec.truth_hashrate_ghs.add(t, _num(st.get("hashrate_ghs")))
            rec.truth_freq_mhz.add(t, _num(freq))
            rec.ambient_c.add(t, _num(st.get("ambient_c")))
            return st
        return None

    def _truth_from_telemetry(self, rec: Recording) -> None:
        for m in rec.telemetry:
            rec.truth_power_w.add(m["t_s"], _num(m.get("power_w")))
            rec.truth_temp_c.add(m["t_s"], _num(m.get("temp_c")))
            rec.truth_hashrate_ghs.add(m["t_s"], _num(m.get("hashrate_ghs")))
            rec.truth_freq_mhz.add(m["t_s"], _num(m.get("freq_mhz")))

    # ---- faults -------------------------------------------------------------------------
    def _fault_window(self, f: Fault) -> tuple[float, float | None]:
        start = self.t0 + f.at_s / self.o.speed
        end = f.end_s()
        return start, (None if end is None else self.t0 + end / self.o.speed)

    def _start_fault(self, index: int, f: Fault) -> None:
        t = self.now()
        label = f.label or f.kind
        speed = self.o.speed
        duration = None if f.duration_s is None else f.duration_s / speed
        exempt_after = self.s.measure.exempt_after_fault_s
        end = None if duration is None else t + duration
        record: dict[str, Any] = {"t_s": round(t, 2), "end_s": None if end is None else
                                  round(end, 2), "kind": f.kind, "label": label, "exempt": {}}
        emu = self.emulator
        ok = True
        detail = ""
        if f.kind == "broker_outage":
            if self.cutter is None:
                ok, detail = False, "no link cutter"
            else:
                self.cutter.cut()
            record["exempt"]["tracking"] = [t, (end or self.s.duration_s) + exempt_after]
        elif f.kind == "agent_kill":
            assert self.agent is not None
            self._killed_by_rig = True
            self.agent.kill()
            restart = t + f.restart_after_s / speed
            self._restart_at = restart
            record["end_s"] = round(restart, 2)
            spread = 1.0
            record["exempt"]["tracking"] = [t, restart + spread + exempt_after]
            # while no agent runs, the bridge firmware's watchdog may idle the chain at once;
            # from the restart on, every move is the agent's and must respect its ramp
            record["exempt"]["ramp"] = [t, restart]
        elif emu is None:
            ok, detail = False, "needs the emulator"
        elif f.kind == "serial_garbage":
            self._garbage_next[index] = t
            record["exempt"]["tracking"] = [t, (end or self.s.duration_s) + exempt_after]
        elif f.kind == "chip_death":
            fault = {"kind": "chip_silent", "chip": f.chip}
            if duration is not None:
                fault["duration_s"] = duration
            reply = emu.control({"cmd": "inject_fault", "fault": fault})
            ok, detail = bool(reply.get("ok")), str(reply.get("error", ""))
            # the agent finds the dead chip, winds the chain down at its ramp, re-initialises it
            # and climbs back at its ramp: tracking is judged again after that recovery (the
            # ramp is judged throughout, but for the step of the chip dying itself)
            recover_s = 4.0 + 2.0 * self._full_ramp_s()
            record["exempt"]["tracking"] = [[t, t + exempt_after + recover_s]]
            record["exempt"]["ramp"] = [[t - 0.5, t + 2.0]]
            if end is not None:  # the chip coming back is a step of its own
                record["exempt"]["tracking"].append([end, end + exempt_after])
                record["exempt"]["ramp"].append([end - 0.5, end + 2.0])
        elif f.kind == "stuck_sensor":
            fault = {"kind": "sensor_stuck", "sensor": "chip_temp", "channel": f.chip}
            if duration is not None:
                fault["duration_s"] = duration
            reply = emu.control({"cmd": "inject_fault", "fault": fault})
            ok, detail = bool(reply.get("ok")), str(reply.get("error", ""))
            # the agent must find the stuck reading and trip to a safe idle (its drop is not
            # judged for ramp); it comes back once the reading moves again, after its hold
            # time, at its ramp
            record["expect"] = "trip"
            hold_s = self.agent_cfg.envelope.trip_hold_s if self.agent_cfg is not None else 0.0
            record["exempt"]["tracking"] = [
                t, (end or self.s.duration_s) + exempt_after + hold_s + self._full_ramp_s()]
        if not ok:
            self.skipped.append(f"{f.kind} at {f.at_s:g} s: {detail}")
            self.note(f"fault {label} NOT injected: {detail}")
            return
        self.faults.append(record)
        self.note(f"fault: {label}" + (f" for {duration:.1f} s" if duration else ""))

    def _full_ramp_s(self) -> float:
        """Seconds the agent's ramp takes from idle to rated power."""
        rec = self.rec
        return rec.rated_w / rec.ramp_max_w_s if rec is not None else 0.0

    def _end_fault(self, f: Fault) -> None:
        if f.kind == "broker_outage" and self.cutter is not None:
            self.cutter.restore()
            self.note("broker link restored")

    def _garbage(self, faults: list[Fault]) -> None:
        if self.emulator is None:
            return
        now = self.now()
        for index, due in list(self._garbage_next.items()):
            f = faults[index]
            _, end = self._fault_window(f)
            if end is not None and time.monotonic() >= end:
                del self._garbage_next[index]
                continue
            if now >= due:
                n = max(1, int(f.rate_bps * 0.5))
                self.emulator.control({"cmd": "inject_fault", "fault": {
                    "kind": "serial_garbage", "bytes": min(n, 65536), "port": f.link}})
                self._garbage_next[index] = now + 0.5

    # ---- main ---------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Play the scenario; returns the summary (also written to DIR)."""
        self.out.mkdir(parents=True, exist_ok=True)
        self.work.mkdir(parents=True, exist_ok=True)
        try:
            return self._run()
        finally:
            self._teardown()

    def _run(self) -> dict[str, Any]:
        from agent.config import load_config

        s, o = self.s, self.o
        self.t0 = time.monotonic()
        self.wall_t0 = time.time()
        signer, pub = self._keys()
        broker_url = self._start_broker()
        self.note(f"broker {broker_url}")
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
        config_path = self._agent_config(
            agent_url, pub, chain, board,
            self.emulator.difficulty if self.emulator is not None else None)
        cfg = load_config(config_path)  # the agent would refuse it the same way
        self.agent_cfg = cfg
        sender = self._connect_operator(broker_url, signer)
        self.agent = AgentProcess(config_path, self.work, o.python)
        self.agent.start()
        self.note(f"agent started: {' '.join(self.agent.command[1:])}")

        caps = self._wait_for_caps(cfg)
        self.sim = GridSimulator(plan(s, caps, speed=o.speed), sender, speed=o.speed,
                                 default_validity_s=s.validity_s)
        rec = Recording(
            scenario=s.name, speed=o.speed, rated_w=caps.max_w, min_w=caps.min_w,
            ramp_max_w_s=caps.ramp_max_w_s, temp_max_c=s.measure.temp_max_c
            or cfg.envelope.max_chip_temp_hard_c, end_s=0.0,
            default_w=float(cfg.governor.default_target_w or caps.max_w),
            truth_source="emulator" if self.emulator else "telemetry", measure=s.measure,
            criteria=dict(s.criteria),
        )
        self.rec = rec
        self._warm_up(rec, caps)
        self._play(rec)
        self._finish(rec)
        summary = write_report(rec, self.out)
        return summary

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
                       f"{_log_tail(self.agent.log_path) if self.agent else ''}")

    def _check_agent_alive(self, fatal: bool = False) -> None:
        assert self.agent is not None
        code = self.agent.exited()
        if code is None or self._killed_by_rig:
            return
        if fatal:
            raise RigError(f"the agent exited with status {code} (log {self.agent.log_path}):\n"
                           f"{_log_tail(self.agent.log_path)}")
        self.crashes += 1
        self.note(f"agent exited by itself (status {code}); restarting it")
        self._restart_agent()

    def _restart_agent(self) -> None:
        assert self.agent is not None
        with self.live.lock:
            self.epoch += 1
        self.agent.stop()
        self.agent.start()
        self.restarts += 1
        self._killed_by_rig = False

    def _warm_up(self, rec: Recording, caps: Caps) -> None:
        """Initial setpoint, then wait (at most warmup_s) until the board holds it."""
        assert self.sim is not None
        s = self.s
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
                power = _num(last.get("power_w"))
            near = power is not None and abs(power - target) <= 0.03 * caps.max_w
            if near and last:
                steady_since = steady_since or time.monotonic()
                if time.monotonic() - steady_since >= 3.0:
                    break
            else:
                steady_since = None
            self._progress(rec, "warm-up", target)
            time.sleep(TRUTH_PERIOD_S)
        else:
            self.note(f"warm-up: the board did not settle at {target:.0f} W within "
                      f"{s.warmup_s:g} s; playing anyway")
        # the scenario starts now: shift every recorded time
        with self.live.lock:
            shift = self.now()
            self.t0 += shift
            self.wall_t0 += shift
            for m in self.live.telemetry:
                m["t_s"] = round(m["t_s"] - shift, 3)
                m["rx_s"] = round(m["rx_s"] - shift, 3)
            self.live.acks = {k: (t - shift, a) for k, (t, a) in self.live.acks.items()}
        for series in (rec.truth_power_w, rec.truth_temp_c, rec.truth_hashrate_ghs,
                       rec.truth_freq_mhz, rec.ambient_c, self._wall_w):
            series.t_s = [round(t - shift, 3) for t in series.t_s]
        sent.t_s -= shift
        for e in self.events:
            e["t_s"] = round(e["t_s"] - shift, 2)
        self.note(f"scenario {s.name} starts ({s.duration_s / self.o.speed:.0f} s at "
                  f"{self.o.speed:g}x)")

    def _play(self, rec: Recording) -> None:
        assert self.sim is not None and self.agent is not None
        s, speed = self.s, self.o.speed
        faults = list(s.faults)
        started = [False] * len(faults)
        ended = [False] * len(faults)
        end_wall = s.duration_s / speed
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
            for i, f in enumerate(faults):
                if not started[i] and t_sc >= f.at_s:
                    started[i] = True
                    self._start_fault(i, f)
                end = f.end_s()
                if started[i] and not ended[i] and end is not None and t_sc >= end:
                    ended[i] = True
                    self._end_fault(f)
            self._garbage(faults)
            if self._restart_at is not None and t >= self._restart_at:
                self._restart_at = None
                self._restart_agent()
                self.note("agent restarted")
            self._check_agent_alive()
            self._sample_truth(rec)
            self._progress(rec, "play", None)
            next_tick += TRUTH_PERIOD_S
            time.sleep(max(0.0, next_tick - time.monotonic()))
        for i, f in enumerate(faults):
            if started[i] and not ended[i]:
                self._end_fault(f)
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

    def _progress(self, rec: Recording, phase: str, target: float | None) -> None:
        now = time.monotonic()
        if now - self._last_progress < 0.25:
            return
        self._last_progress = now
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
            head = f"[{bar}] {pct:3.0f}% {t:6.1f}/{end:.0f} s"
        else:
            head = f"[warm-up] target {target:.0f} W" if target else "[warm-up]"
        active = [f["label"] for f in self.faults
                  if f["end_s"] is None or f["t_s"] <= t <= f["end_s"]]
        text = (f"{head}  setpoint {_f0(last.get('setpoint_w'))} W  target "
                f"{_f0(last.get('target_w'))} W  power {_f1(power)} W  chip {_f1(temp)} °C  "
                f"{last.get('mode', '-')}  acks {acks}/{sent}"
                + (f"  fault: {', '.join(active)}" if active else ""))
        tty = self.o.progress is not None and hasattr(self.o.progress, "isatty") \
            and self.o.progress.isatty()
        if tty:
            self._print(text)
        elif now - getattr(self, "_last_line", 0.0) >= 10.0:
            self._last_line = now
            self._print(text, line=True)

    def _finish(self, rec: Recording) -> None:
        """Wait for outstanding acks, then fold everything into the recording."""
        assert self.sim is not None
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
            _apply_ack(c, acks.get(c.id))
        rec.commands = [c.as_dict() for c in self.sim.sent]
        if self.emulator is None:
            self._truth_from_telemetry(rec)
        rec.faults = self.faults
        rec.events = self.events
        rec.agent_restarts = self.restarts
        rec.agent_crashes = self.crashes
        rec.meta = {
            "skipped": self.skipped,
            "agent_command": self.agent.command if self.agent else None,
            "agent_log": str(self.agent.log_path) if self.agent else None,
            "broker": self.o.broker_url or "private mosquitto",
            "scenario_file": str(self.s.path) if self.s.path else None,
            "status": self.live.status,
        }
        if self._wall_w.t_s:
            rec.meta["energy_wh_wall_incl_psu"] = round(energy_wh(self._wall_w, 0.0, rec.end_s), 4)
        self._print("", line=False)

    def _teardown(self) -> None:
        self._stop_mqtt.set()
        parts = [(self.agent, "stop"), (self.emulator, "stop"), (self.operator, "close"),
                 (self.cutter, "close"), (self.broker, "close")]
        for part, method in parts:
            if part is None:
                continue
            try:
                getattr(part, method)()
            except Exception as exc:  # teardown goes on: every part must be stopped
                self._print(f"rig teardown: {type(exc).__name__}: {exc}", line=True)
        if self._mqtt_thread is not None:
            self._mqtt_thread.join(2.0)


def _apply_ack(c: SentCommand, got: tuple[float, dict[str, Any]] | None) -> None:
    if got is None:
        return
    t, ack = got
    c.ack_t_s = round(t, 3)
    c.result = ack.get("result")
    c.reason = ack.get("reason")
    c.detail = ack.get("detail")
    c.applied_w = _num(ack.get("applied_w"))
    c.limited_by = ack.get("limited_by")
    c.eta_ms = ack.get("eta_ms") if isinstance(ack.get("eta_ms"), int) else None


def _num(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, int | float):
        return None
    return float(x) if math.isfinite(x) else None


def _f0(x: Any) -> str:
    return f"{x:.0f}" if isinstance(x, int | float) else "-"


def _f1(x: Any) -> str:
    return f"{x:.1f}" if isinstance(x, int | float) else "-"


def run_scenario(options: RigOptions) -> dict[str, Any]:
    """Play one scenario on a fresh rig; returns the summary."""
    return Rig(options).run()


ProgressHook = Callable[[str], None]
