"""pyserial URL handler `asicemu://`: the emulated ASIC chain in-process, no pty needed.

    import hil  # appends "hil" to serial.protocol_handler_packages
    chain = serial.serial_for_url("asicemu://board1?family=BM1370&chips=4&seed=1", timeout=1)
    board = serial.serial_for_url("asicboard://board1", timeout=1)   # its board link

`asicemu://NAME?...` (chain) and `asicboard://NAME?...` (board link) attach to the running
emulator registered as NAME (a `HashBoardEmulator(transport="socket", name=NAME)` started by a
test, or one an earlier URL created); otherwise they create one from the query (family, chips,
difficulty, seed, speed, ambient_c, step_ms), register it under NAME when given, and stop it when
the last port that uses it closes. So the chain and board URLs of one board may be opened in
either order; the query of the second is ignored. Baud changes are accepted and ignored (the
chain's own UART timing is modelled inside the emulator).
"""

from __future__ import annotations

import select
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

from serial.serialutil import PortNotOpenError, SerialBase, SerialException

from agent.config import parse_difficulty
from hil.errors import EmulatorError
from hil.hashboard import EMULATORS, HashBoardEmulator, find
from hil.pty import SocketPort

_OWNED_LOCK = threading.Lock()
_USERS: dict[int, int] = {}  # id(emulator) -> open URL ports
_OWNED: set[int] = set()  # emulators created by a URL (stopped with their last port)

_PARAMS: dict[str, Callable[[str], Any]] = {
    "family": str, "chips": int, "difficulty": parse_difficulty, "seed": int, "speed": float,
    "ambient_c": float, "step_ms": float,
}


def parse_url(url: str) -> tuple[str, str | None, dict[str, Any]]:
    """(scheme, name or None, emulator keyword arguments) of an asicemu/asicboard URL."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("asicemu", "asicboard"):
        raise SerialException(f"expected asicemu:// or asicboard://, got {url!r}")
    name = parts.netloc or None
    kwargs: dict[str, Any] = {}
    for key, values in urllib.parse.parse_qs(parts.query, keep_blank_values=True).items():
        if key not in _PARAMS:
            raise SerialException(f"{url}: unknown option {key!r} (known: {', '.join(_PARAMS)})")
        try:
            value = _PARAMS[key](values[-1])
        except Exception as exc:
            raise SerialException(f"{url}: bad {key}={values[-1]!r} ({exc})") from None
        if key == "step_ms":
            kwargs["step_s"] = value / 1000.0
        else:
            kwargs[key] = value
    return parts.scheme, name, kwargs


class Serial(SerialBase):
    """A pyserial port on the chain (`asicemu://`) or board link (`asicboard://`) of an
    in-process emulator."""

    ENDPOINT = "chain"

    is_open: bool

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._emu: HashBoardEmulator | None = None
        self._sock: Any = None
        self._rx = bytearray()
        super().__init__(*args, **kwargs)

    def open(self) -> None:
        if self.is_open:
            raise SerialException("Port is already open.")
        if self._port is None:
            raise SerialException("Port must be configured before it can be used.")
        _scheme, name, kwargs = parse_url(str(self._port))
        with _OWNED_LOCK:
            emu = find(name) if name else None
            if emu is None:
                try:
                    emu = HashBoardEmulator(transport="socket", name=name, **kwargs).start()
                except (EmulatorError, TypeError) as exc:
                    raise SerialException(f"{self._port}: {exc}") from None
                _OWNED.add(id(emu))
            elif emu.transport != "socket":
                raise SerialException(f"emulator {name!r} does not use socket transport")
            _USERS[id(emu)] = _USERS.get(id(emu), 0) + 1
        self._emu = emu
        port = emu.port(self.ENDPOINT)
        assert isinstance(port, SocketPort)
        self._sock = port.peer
        self._sock.setblocking(False)
        self._rx.clear()
        self.is_open = True
        self.reset_input_buffer()

    @property
    def emulator(self) -> HashBoardEmulator | None:
        """The emulator behind this port (for state() in tests)."""
        return self._emu

    def _reconfigure_port(self) -> None:
        pass  # baud/format changes are accepted; the emulator models its own UART

    def close(self) -> None:
        if not self.is_open:
            return
        self.is_open = False
        emu, self._emu, self._sock = self._emu, None, None
        if emu is None:
            return
        with _OWNED_LOCK:
            left = _USERS.get(id(emu), 1) - 1
            if left > 0:
                _USERS[id(emu)] = left
                return
            _USERS.pop(id(emu), None)
            owned = id(emu) in _OWNED
            _OWNED.discard(id(emu))
        if owned:
            emu.stop()

    def _pull(self, timeout: float | None) -> None:
        if self._sock is None:
            raise PortNotOpenError()
        try:
            ready, _, _ = select.select([self._sock], [], [], timeout)
        except (OSError, ValueError):
            raise SerialException("emulator port closed") from None
        if not ready:
            return
        while True:
            try:
                data = self._sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                raise SerialException(f"emulator port closed ({exc})") from None
            if not data:
                raise SerialException("emulator stopped")
            self._rx += data
            if len(data) < 65536:
                return

    @property
    def in_waiting(self) -> int:
        self._pull(0)
        return len(self._rx)

    def read(self, size: int = 1) -> bytes:
        if not self.is_open:
            raise PortNotOpenError()
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        while len(self._rx) < size:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                break
            self._pull(remaining)
        out = bytes(self._rx[:size])
        del self._rx[:size]
        return out

    def write(self, data: bytes) -> int:
        if not self.is_open or self._sock is None:
            raise PortNotOpenError()
        data = bytes(data)
        view = memoryview(data)
        while view:
            try:
                n = self._sock.send(view)
            except BlockingIOError:
                select.select([], [self._sock], [], 1.0)
                continue
            view = view[n:]
        return len(data)

    def reset_input_buffer(self) -> None:
        if not self.is_open:
            raise PortNotOpenError()
        self._pull(0)
        self._rx.clear()

    def reset_output_buffer(self) -> None:
        pass

    def flush(self) -> None:
        pass

    def _update_rts_state(self) -> None:
        pass

    def _update_dtr_state(self) -> None:
        pass

    def _update_break_state(self) -> None:
        pass

    @property
    def cts(self) -> bool:
        return True

    @property
    def dsr(self) -> bool:
        return True

    @property
    def ri(self) -> bool:
        return False

    @property
    def cd(self) -> bool:
        return True

    def fileno(self) -> int:
        if self._sock is None:
            raise PortNotOpenError()
        return int(self._sock.fileno())


__all__ = ["EMULATORS", "Serial", "parse_url"]
