"""The MicroPython unix port on a pseudo-terminal, as mpremote sees a board.

    with MpyBoard(workdir) as board:          # starts `micropython` with its REPL on pty A
        subprocess.run(["mpremote", "connect", board.port, "resume", "exec", "print(1)"])

`micropython` runs with its stdio on pty A (its REPL speaks mpremote's raw-REPL protocol); a relay
thread copies bytes between pty A's master and pty B's master, and `port` is pty B's slave path,
which mpremote opens like /dev/ttyUSB0. Two ptys are needed because the interpreter owns A's slave.
Caveats (spec micropython.md §4.2): always connect with `resume` (a soft reset ends the unix
process); use `:.` or absolute paths as destinations; `reset` is meaningless here. The board's
filesystem is `workdir` (the interpreter's cwd).
"""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import sys
import threading
import time
import tty
from pathlib import Path

from hil.child import stop_process


def default_micropython() -> str:
    """The unix port next to the running Python (the venv's `micropython`), else from PATH."""
    local = Path(sys.executable).parent / "micropython"
    return str(local) if local.exists() else "micropython"


class MpyBoard:
    """A MicroPython unix-port process behind a pty pair; see the module docstring."""

    def __init__(self, workdir: str | os.PathLike[str], micropython: str | None = None,
                 heapsize: str = "2m", max_seconds: float = 300.0) -> None:
        self.workdir = Path(workdir)
        self.micropython = micropython or default_micropython()
        self.heapsize = heapsize
        self.max_seconds = max_seconds  # the relay ends the interpreter after this long
        self.port = ""
        self.proc: subprocess.Popen[bytes] | None = None
        self._fds: list[int] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.output = bytearray()  # everything the interpreter wrote (for diagnostics)

    def start(self) -> MpyBoard:
        self.workdir.mkdir(parents=True, exist_ok=True)
        ma, sa = os.openpty()
        mb, sb = os.openpty()
        self._fds = [ma, sa, mb, sb]
        tty.setraw(sa)  # no \n -> \r\n translation: mpremote matches exact prompts
        tty.setraw(sb)
        self._ma, self._mb = ma, mb
        env = {k: v for k, v in os.environ.items() if k != "MICROPYPATH"}
        self.proc = subprocess.Popen(
            [self.micropython, "-X", f"heapsize={self.heapsize}"], stdin=sa, stdout=sa, stderr=sa,
            cwd=self.workdir, env=env, start_new_session=True, close_fds=True)
        self.port = os.ttyname(sb)
        self._thread = threading.Thread(target=self._relay, name="mpy-board-relay", daemon=True)
        self._thread.start()
        time.sleep(0.1)  # let the REPL print its banner
        return self

    def _relay(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        ma, mb = self._ma, self._mb
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                ready, _, _ = select.select([ma, mb], [], [], 0.05)
            except (OSError, ValueError):
                break
            for fd in ready:
                try:
                    data = os.read(fd, 4096)
                except OSError:  # EIO: the other side went away
                    data = b""
                if not data:
                    continue
                if fd == ma:
                    self.output += data
                    del self.output[:-65536]
                    self._write(mb, data)
                else:
                    self._write(ma, data)
        if not self._stop.is_set():
            stop_process(self.proc, 2.0)

    @staticmethod
    def _write(fd: int, data: bytes) -> None:
        with contextlib.suppress(OSError):
            while data:
                n = os.write(fd, data)
                data = data[n:]

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
        stop_process(self.proc, 2.0)
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds = []

    def __enter__(self) -> MpyBoard:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
