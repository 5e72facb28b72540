"""Byte endpoints of the emulator: real pseudo-terminals, or socket pairs for in-process use.

`PtyPort` owns a pty pair: the host opens `path` (the slave, e.g. /dev/pts/7) with pyserial exactly
as it would /dev/ttyUSB0; the emulator reads and writes the master side, non-blocking. The
emulator keeps its own slave fd open, so the master never sees a hang-up when the host closes
and reopens the port, and `host_baud()` can read the baud rate the host programmed.

`SocketPort` is the same interface over a `socket.socketpair()`; the other end (`peer`) is what
the `asicemu://` pyserial handler reads and writes.

Writes never block: bytes the host does not read are kept up to `max_pending` bytes, beyond that
the oldest are dropped and counted in `overflow_bytes` (a UART FIFO overrun).
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import termios
import tty

_BAUDS = {getattr(termios, f"B{b}"): b for b in (
    50, 75, 110, 134, 150, 200, 300, 600, 1200, 1800, 2400, 4800, 9600, 19200, 38400, 57600,
    115200, 230400, 460800, 500000, 576000, 921600, 1000000, 1152000, 1500000, 2000000, 2500000,
    3000000, 3500000, 4000000) if hasattr(termios, f"B{b}")}


class _Port:
    name: str
    path: str
    max_pending: int

    def __init__(self) -> None:
        self._pending = bytearray()
        self.overflow_bytes = 0
        self.bytes_in = 0
        self.bytes_out = 0

    def fileno(self) -> int:
        raise NotImplementedError

    def _read_raw(self) -> bytes:
        raise NotImplementedError

    def _write_raw(self, data: bytes) -> int:
        raise NotImplementedError

    def read(self) -> bytes:
        """Every byte available now (b"" if none); never blocks, never raises on a closed peer."""
        chunks = []
        while True:
            try:
                data = self._read_raw()
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # EIO: no slave open; closed socket
                if exc.errno in (errno.EIO, errno.EBADF, errno.ECONNRESET):
                    break
                raise
            if not data:
                break
            chunks.append(data)
            if len(data) < 4096:
                break
        out = b"".join(chunks)
        self.bytes_in += len(out)
        return out

    def write(self, data: bytes) -> None:
        """Queue `data` and send as much as the other side takes now."""
        if data:
            self._pending += data
            excess = len(self._pending) - self.max_pending
            if excess > 0:
                del self._pending[:excess]
                self.overflow_bytes += excess
        self.flush()

    def flush(self) -> None:
        while self._pending:
            try:
                n = self._write_raw(bytes(self._pending[:4096]))
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EIO, errno.EPIPE, errno.ECONNRESET, errno.EBADF):
                    self._pending.clear()  # nobody listening: the bytes are lost on the wire
                    return
                raise
            if n <= 0:
                return
            self.bytes_out += n
            del self._pending[:n]

    @property
    def pending(self) -> int:
        return len(self._pending)

    def host_baud(self) -> int | None:
        return None


class PtyPort(_Port):
    """A pseudo-terminal pair; the host opens `path`."""

    def __init__(self, name: str, max_pending: int = 1 << 20) -> None:
        super().__init__()
        self.name = name
        self.max_pending = max_pending
        self._master, self._slave = os.openpty()
        try:
            tty.setraw(self._slave)
            os.set_blocking(self._master, False)
            self.path = os.ttyname(self._slave)
        except OSError:
            self.close()
            raise

    def fileno(self) -> int:
        return self._master

    def _read_raw(self) -> bytes:
        return os.read(self._master, 65536)

    def _write_raw(self, data: bytes) -> int:
        return os.write(self._master, data)

    def host_baud(self) -> int | None:
        """The baud rate the host set on its side of the pty (None if unknown)."""
        try:
            speed = termios.tcgetattr(self._slave)[5]
        except (termios.error, OSError):
            return None
        return _BAUDS.get(speed)

    def close(self) -> None:
        for attr in ("_master", "_slave"):
            fd = getattr(self, attr, -1)
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
                setattr(self, attr, -1)


class SocketPort(_Port):
    """One end of a socket pair; `peer` is the host's end (used by the pyserial URL handlers)."""

    def __init__(self, name: str, max_pending: int = 1 << 20) -> None:
        super().__init__()
        self.name = name
        self.max_pending = max_pending
        self._sock, self.peer = socket.socketpair()
        self._sock.setblocking(False)
        self.path = f"socketpair:{name}"

    def fileno(self) -> int:
        return self._sock.fileno()

    def _read_raw(self) -> bytes:
        return self._sock.recv(65536)

    def _write_raw(self, data: bytes) -> int:
        return self._sock.send(data)

    def close(self) -> None:
        self._sock.close()
        self.peer.close()
