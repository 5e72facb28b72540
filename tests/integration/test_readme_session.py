"""The README's first session runs as written: its commands are read from README.md and typed
into one shell per terminal, as a newcomer pastes them, and what each prints must match the
output the README shows (numbers may differ; `...` stands for anything).

Three things differ from a newcomer's machine, on purpose: the broker's port 1883 is a free one
(1883 may be taken), HOME is a temporary folder (the session writes to ~/gridminer-lab), and
the emulator's ports N and M are put in from what terminal 2 printed, as the README asks.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hil.broker import free_port

ROOT = Path(__file__).parents[2]
HEADING = "### A first session on loopback"
BLOCK = re.compile(r"```(sh|text)\n(.*?)```", re.S)
TERMINAL = re.compile(r"# terminal (\d+)( \(stays in the foreground\))?")
NUMBER = re.compile(r"\d+(?:\.\d+)?")
DONE = "__block_done__"
WAIT_S = 60.0


@dataclass
class Step:
    terminal: int
    foreground: bool
    commands: str
    expected: list[str] = field(default_factory=list)


def session_steps(readme: str) -> list[Step]:
    """The session's sh blocks in order, each with the text block that follows it."""
    start = readme.index(HEADING)
    after = re.compile(r"^#{2,3} ", re.M).search(readme, start + len(HEADING))
    end = after.start() if after else len(readme)
    steps: list[Step] = []
    for kind, body in BLOCK.findall(readme[start:end]):
        if kind == "sh":
            head = TERMINAL.match(body)
            assert head, f"a session block must start with '# terminal N': {body[:60]!r}"
            steps.append(Step(int(head.group(1)), bool(head.group(2)), body))
        else:
            assert steps and not steps[-1].expected, "one output block after each command block"
            steps[-1].expected = [line for line in body.splitlines() if line.strip()]
    return steps


def line_pattern(expected: str) -> re.Pattern[str]:
    """An expected line as a pattern: any number for a number, `...` for anything, any run of
    spaces for spaces, /dev/pts/N or M for any pty."""
    parts = []
    for piece in re.split(r"(\.\.\.|/dev/pts/[NM]|\d+(?:\.\d+)?|\s+)", expected.strip()):
        if piece == "...":
            parts.append(".*")
        elif piece.startswith("/dev/pts/"):
            parts.append(r"/dev/pts/\d+")
        elif NUMBER.fullmatch(piece):
            parts.append(NUMBER.pattern)
        elif piece.isspace():
            parts.append(r"\s+")
        else:
            parts.append(re.escape(piece))
    return re.compile("".join(parts))


class Terminal:
    """A bash reading commands on its stdin, as a terminal window does; all it prints (stdout
    and stderr, as on a screen) is collected line by line."""

    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            ["bash", "--noprofile", "--norc"], cwd=ROOT, env=env, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._lock:
                self.lines.append(line.rstrip("\n"))

    def seen(self) -> list[str]:
        with self._lock:
            return list(self.lines)

    def type(self, commands: str, wait: bool) -> list[str]:
        """Type `commands`; with `wait`, return what they printed once the shell is back."""
        assert self.proc.stdin is not None
        mark = len(self.seen())
        self.proc.stdin.write(commands + (f"\necho {DONE} $?\n" if wait else "\n"))
        self.proc.stdin.flush()
        if not wait:
            return []
        deadline = time.monotonic() + WAIT_S
        while not any(line.startswith(DONE) for line in self.seen()[mark:]):
            assert time.monotonic() < deadline, f"{commands!r} did not finish: {self.seen()}"
            assert self.proc.poll() is None, f"the shell exited: {self.seen()}"
            time.sleep(0.05)
        out = self.seen()[mark:]
        done = next(i for i, line in enumerate(out) if line.startswith(DONE))
        assert out[done] == f"{DONE} 0", f"{commands!r} failed: {out}"
        return out[:done]

    def wait_for(self, expected: list[str]) -> None:
        """Until the lines match `expected` in order (others may come between)."""
        patterns = [line_pattern(e) for e in expected]
        deadline = time.monotonic() + WAIT_S
        while True:
            left = list(patterns)
            for line in self.seen():
                if left and left[0].fullmatch(line.strip()):
                    left.pop(0)
            if not left:
                return
            assert self.proc.poll() is None, f"exited: {self.seen()}"
            assert time.monotonic() < deadline, f"no line like {left[0].pattern}: {self.seen()}"
            time.sleep(0.05)

    def stop(self) -> None:
        """Ctrl-C for whatever runs in the foreground, then the end of input for the shell."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
        self.proc.stdin.close()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        self._reader.join(5)
        self.proc.stdout.close()


def test_the_session_in_the_readme_runs_as_written(tmp_path) -> None:
    steps = session_steps((ROOT / "README.md").read_text(encoding="utf-8"))
    assert [s.terminal for s in steps if s.foreground] == [1, 2, 4]
    port = str(free_port())
    env = {**os.environ, "HOME": str(tmp_path),
           "PATH": os.environ.get("PATH", "") + ":/usr/sbin:/usr/local/sbin"}
    env.pop("VIRTUAL_ENV", None)
    terminals: dict[int, Terminal] = {}
    ports: dict[str, str] = {}
    try:
        for step in steps:
            term = terminals.get(step.terminal) or terminals.setdefault(step.terminal,
                                                                          Terminal(env))
            commands = step.commands.replace("1883", port)
            for name, path in ports.items():
                commands = commands.replace(f"/dev/pts/{name}", path)
            expected = [e.replace("1883", port) for e in step.expected]
            if step.foreground:
                term.type(commands, wait=False)
                term.wait_for(expected)
            else:
                out = [line for line in term.type(commands, wait=True) if line.strip()]
                assert len(out) == len(expected), (out, expected)
                for line, want in zip(out, expected, strict=True):
                    assert line_pattern(want).fullmatch(line.strip()), (line, want)
            if step.terminal == 2:  # the emulator's two ports, for the agent's command
                shown = json.loads(next(line for line in term.seen() if line.startswith("{")))
                ports = {"N": shown["chain"], "M": shown["board"]}
        agent_log = "\n".join(terminals[4].seen())
        assert "Traceback" not in agent_log and "ERROR" not in agent_log, agent_log
    finally:
        for number in sorted(terminals, reverse=True):  # agent, operator, emulator, broker
            terminals[number].stop()
    assert "stopped: chain at" in "\n".join(terminals[4].seen())


@pytest.mark.parametrize(("expected", "line", "ok"), [
    ("d1: accepted, 40 W, eta 0.5 s", "d1: accepted, 40 W, eta 1.25 s", True),
    ("d1: accepted, 40 W, eta 0.5 s", "d1: accepted, 40 W, limited by ramp, eta 9 s", False),
    ('{"chain": "/dev/pts/N", "board": "/dev/pts/M", ...}',
     '{"chain": "/dev/pts/3", "board": "/dev/pts/4", "pid": 7}', True),
    ("d1      online  mining  39.9     40", "d1  online  mining  40.1  40", True),
    ("d1      online  mining  39.9     40", "d1  online  starting  40.1  40", False),
])
def test_output_matches_the_readme_up_to_numbers(expected: str, line: str, ok: bool) -> None:
    assert bool(line_pattern(expected).fullmatch(line)) is ok
