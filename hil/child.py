"""The lab's child processes: stopping one (`stop_process`: SIGTERM, then SIGKILL) and driving
one over JSON lines (`JsonLineChild`: one request object a line on its stdin, one answer object
a line on its stdout, and objects with an "event" key the child sends of its own accord).
"""

from __future__ import annotations

import contextlib
import json
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any


def stop_process(proc: subprocess.Popen[Any] | None, timeout_s: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after `timeout_s`; only the process the lab started."""
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


_ENDED: dict[str, Any] = {}  # put after the last answer: the child's output ended


class JsonLineChild:
    """A child process asked over JSON lines. `ask` sends one request ({"op": ..., ...}) and
    returns its answer (the next non-event object with the same "op"; an answer that comes
    after its request timed out is dropped); `wait_event` waits for an event ({"event": KIND,
    ...}, the latest of each kind kept). Lines that are not JSON objects are passed over.
    Failures raise `error` (the caller's exception class), naming the child by `name` and,
    with `log_path` (where its stderr goes; otherwise inherited), its log."""

    def __init__(self, argv: Sequence[str], *, name: str, error: type[Exception],
                 cwd: str | Path | None = None, log_path: Path | None = None,
                 env: Mapping[str, str] | None = None) -> None:
        self.name = name
        self.error = error
        self.log_path = log_path
        self._log: IO[str] | None = None
        if log_path is not None:
            self._log = open(log_path, "w", encoding="utf-8")  # noqa: SIM115 - closed in stop
        try:
            self.proc = subprocess.Popen(list(argv), stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=self._log, text=True,
                                         cwd=cwd, env=dict(env) if env is not None else None)
        except OSError:
            if self._log is not None:
                self._log.close()
            raise
        self._answers: queue.Queue[dict[str, Any]] = queue.Queue()
        self._events: dict[str, dict[str, Any]] = {}
        self._heard = threading.Condition()  # an event came, or stdout ended
        self._ended = False
        self._asking = threading.Lock()  # one request at a time
        self._reader = threading.Thread(target=self._read, name=name, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if not isinstance(msg, dict):
                continue
            if "event" in msg:
                with self._heard:
                    self._events[str(msg["event"])] = msg
                    self._heard.notify_all()
            else:
                self._answers.put(msg)
        with self._heard:
            self._ended = True
            self._heard.notify_all()
        self._answers.put(_ENDED)

    def _failure(self, what: str) -> Exception:
        log = f" (log {self.log_path})" if self.log_path is not None else ""
        return self.error(f"{self.name} {what}{log}")

    def _exited(self) -> Exception:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(1.0)  # its output ended: its status is a moment away
        return self._failure(f"exited ({self.proc.poll()})")

    def wait_event(self, kind: str, timeout_s: float) -> dict[str, Any]:
        """The latest event `kind` the child sent, waiting at most `timeout_s` for the first."""
        deadline = time.monotonic() + timeout_s
        with self._heard:
            while kind not in self._events:
                if self._ended:
                    raise self._exited()
                remaining_s = deadline - time.monotonic()
                if remaining_s <= 0:
                    raise self._failure(f"not {kind} within {timeout_s:g} s")
                self._heard.wait(remaining_s)
            return self._events[kind]

    def ask(self, cmd: Mapping[str, Any], timeout_s: float) -> dict[str, Any]:
        """Send one request line; its answer (a refusal, {"ok": false, ...}, is returned)."""
        op = cmd["op"]
        with self._asking:
            if self.proc.poll() is not None or self.proc.stdin is None:
                raise self._exited()
            while not self._answers.empty():
                self._next_answer(0.0)  # the late answer of a request that timed out
            try:
                self.proc.stdin.write(json.dumps(cmd) + "\n")
                self.proc.stdin.flush()
            except OSError:  # it exited since
                raise self._exited() from None
            deadline = time.monotonic() + timeout_s
            while (answer := self._next_answer(deadline - time.monotonic())) is not None:
                if answer.get("op", op) == op:
                    return answer
            raise self._failure(f"did not answer {op} within {timeout_s:g} s")

    def _next_answer(self, timeout_s: float) -> dict[str, Any] | None:
        """The next answer line, None when none came within `timeout_s`; once the child's output
        ended, the error saying it exited."""
        try:
            answer = self._answers.get(timeout=max(0.0, timeout_s))
        except queue.Empty:
            return None
        if answer is _ENDED:
            self._answers.put(_ENDED)  # for whoever asks next
            raise self._exited()
        return answer

    def terminate(self) -> None:
        """SIGTERM, not waiting (to stop several children at once before `stop`)."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()

    def stop(self, timeout_s: float = 15.0) -> None:
        """End its requests (stdin), stop it (`stop_process`), read its output to the end."""
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        stop_process(self.proc, timeout_s)
        self._reader.join(timeout_s)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        if self._log is not None:
            self._log.close()
