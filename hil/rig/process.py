"""The rig's child processes: the emulated board (`python -m agent emulate`, `EmulatorProcess`)
and the agent as a user runs it (`python -m agent agent`, `AgentProcess`: killed and restarted on
demand), each with its log in the run folder, and stopping them (SIGTERM, then SIGKILL).
The broker's process is `hil.broker.Mosquitto`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
from pathlib import Path
from typing import Any

from hil.child import stop_process
from hil.rig.options import EMULATION_DIFFICULTY, RigError
from hil.scenario import Scenario


def log_tail(path: Path, lines: int = 15) -> str:
    """The last lines of a part's log, for an error message."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


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
            self.stop()  # its pipe and log too: the constructor fails, so no caller will
            raise RigError(f"the emulator did not start (log {self.log_path}):\n"
                           f"{log_tail(self.log_path)}") from None

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
        stop_process(self.proc)
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
        self.killed = False  # by the rig (SIGKILL), until the next start
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
        self.killed = False

    def kill(self) -> None:
        """SIGKILL, as a crash would end it (`killed` until the next start)."""
        self.killed = True
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
        stop_process(self.proc, timeout_s=8.0)
        if self._log is not None:
            self._log.close()
            self._log = None

    def restart(self) -> None:
        """Stop (if it still runs) and start the same command again."""
        self.stop()
        self.start()
