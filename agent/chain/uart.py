"""The chain's UART as the driver sees it: frames out, parsed replies in.

A reader thread (one per port) moves received bytes into a queue and tells the parser when the
line went quiet; `receive`, called by the control thread, parses what is queued. Unthreaded (the
unit tests), `receive` reads the port itself. Write and read errors are counted and logged, never
raised: the first of a run of failures, then the 2nd, 4th, 8th... (a dead port fills no log). With
`reopen` (a callable that opens the port again), the reader thread closes a port that failed and
opens it again, the wait doubling from `REOPEN_MIN_S` to `REOPEN_MAX_S` (a USB adapter that
re-enumerates, a lab emulator that restarts).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from agent.chain.port import SerialPort
from agent.clock import Clock
from firmware_bridge import asic

log = logging.getLogger("gridminer.chain")

QUIET = b""  # in the receive queue: a read returned nothing, the line is quiet
REOPEN_MIN_S = 0.5
REOPEN_MAX_S = 10.0


class ChainUart:
    """One chain port: writes (counted in `bytes_out`), the host baud, and the replies found in
    what was read (`bytes_in`); `link_errors` counts failed reads, writes and baud changes."""

    def __init__(self, port: SerialPort, family: str, clock: Clock,
                 wake: threading.Event | None = None, threaded: bool = True,
                 name: str = "chain", reopen: Callable[[], SerialPort] | None = None) -> None:
        self.port = port
        self.reopen = reopen
        self.reopens = 0
        self._failing = 0  # failures since the port last worked
        self._baud_wanted: int | None = None  # what a reopened port is set to
        self.family = family
        self.clock = clock
        self.wake = wake
        self.name = name
        self.bytes_out = 0
        self.bytes_in = 0
        self.link_errors = 0
        self.want_wake = False  # wake the control thread on every read
        self._parser = asic.ResponseParser(family)
        self._crc_base = 0  # counts of the parsers before this one
        self._discard_base = 0
        self._rx: queue.SimpleQueue[bytes | BaseException] = queue.SimpleQueue()
        self._threaded = threaded
        self._closing = threading.Event()
        self._reader: threading.Thread | None = None
        if threaded:
            self._reader = threading.Thread(target=self._read_loop, name=f"{name}-reader",
                                            daemon=True)
            self._reader.start()

    # -- sending ------------------------------------------------------------------------------

    def write(self, data: bytes) -> bool:
        try:
            self.port.write(data)
        except Exception as exc:  # write timeout, port gone
            self._port_error("write failed", exc)
            return False
        self.bytes_out += len(data)
        return True

    def _port_error(self, what: str, exc: BaseException) -> None:
        """Count a failed read, write or baud change; log the 1st, 2nd, 4th, 8th... in a row."""
        self.link_errors += 1
        self._failing += 1
        n = self._failing
        if n & (n - 1) == 0:
            log.warning("%s: %s: %s%s", self.name, what, exc,
                        f" ({n} port errors in a row)" if n > 1 else "")

    def drain(self) -> None:
        """Wait until what was written has left (a frame that must go at the old rate)."""
        with contextlib.suppress(Exception):
            self.port.flush()

    @property
    def baud(self) -> int:
        """The host's rate (0 if the port cannot say)."""
        try:
            return int(self.port.baudrate)
        except Exception:
            return 0

    def set_baud(self, baud: int) -> None:
        self._baud_wanted = baud
        try:
            if self.port.baudrate != baud:
                self.port.baudrate = baud
        except Exception as exc:
            self._port_error(f"cannot set {baud} baud", exc)

    # -- receiving ----------------------------------------------------------------------------

    def receive(self) -> list[Any]:
        """The replies (asic.ResponseParser's) in what arrived since the last call."""
        chunks = self._take()
        if not chunks:
            return []
        data = b"".join(chunks)
        replies: list[Any] = []
        if data:
            self.bytes_in += len(data)
            replies = self._parser.feed(data)
        if not chunks[-1] and self._parser.pending():
            # the last read found the line quiet: a reply with AA 55 inside was held back
            replies += self._parser.flush()
        return replies

    def flush_input(self) -> None:
        """Drop what was received and not parsed yet, and the parser's partial frame."""
        with contextlib.suppress(Exception):
            self.port.reset_input_buffer()
        self._take()
        self._parser.reset()

    def new_parser(self) -> None:
        """A fresh parser (a re-initialised chain); its counts add to the old one's."""
        self._crc_base += self._parser.crc_errors
        self._discard_base += self._parser.discarded_bytes
        self._parser = asic.ResponseParser(self.family)

    @property
    def crc_errors(self) -> int:
        return self._crc_base + self._parser.crc_errors

    @property
    def discarded_bytes(self) -> int:
        return self._discard_base + self._parser.discarded_bytes

    def wait(self, seconds: float) -> None:
        """Sleep until `seconds` pass or bytes arrive (with a reader thread and a wake event)."""
        if seconds <= 0:
            return
        if self.wake is not None and self._threaded:
            self.wake.wait(seconds)
            self.wake.clear()
        elif self._threaded:
            self.clock.sleep(seconds)
        else:  # bytes are read in receive: look again soon
            self.clock.sleep(min(seconds, 0.005))

    def close(self) -> None:
        """Stop the reader thread and close the port."""
        self._closing.set()
        if self._reader is not None:
            self._reader.join(timeout=1.0)
        with contextlib.suppress(Exception):
            self.port.close()

    def _read_loop(self) -> None:
        quiet = True
        wait_s = REOPEN_MIN_S
        while not self._closing.is_set():
            port = self.port
            try:
                waiting = port.in_waiting
                data = port.read(max(1, min(int(waiting or 0), 65536)))
            except Exception as exc:  # port closed, device gone: report and back off
                if self._closing.is_set():
                    return
                self._rx.put(exc)
                self._closing.wait(wait_s)
                if self.reopen is not None and not self._closing.is_set():
                    wait_s = REOPEN_MIN_S if self._reopened(port) else min(2 * wait_s,
                                                                           REOPEN_MAX_S)
                continue
            wait_s = REOPEN_MIN_S
            if data:
                self._rx.put(bytes(data))
                quiet = False
            elif not quiet:  # a read timed out: tell the parser the line went quiet (QUIET)
                self._rx.put(QUIET)
                quiet = True
            else:
                continue
            if self.want_wake and self.wake is not None:
                self.wake.set()

    def _reopened(self, failed: SerialPort) -> bool:
        """The reader's port failed: close it and open it again at the host rate in force."""
        assert self.reopen is not None
        with contextlib.suppress(Exception):
            failed.close()
        port: SerialPort | None = None
        try:
            port = self.reopen()
            if self._baud_wanted is not None:
                port.baudrate = self._baud_wanted
        except Exception as exc:
            if port is not None:  # opened, but not at the rate in force: not kept, so closed
                with contextlib.suppress(Exception):
                    port.close()
            self._rx.put(OSError(f"port gone, reopening it failed: {exc}"))
            return False
        self.port = port
        self.reopens += 1
        log.info("%s: port reopened", self.name)
        return True

    def _take(self) -> list[bytes]:
        chunks: list[bytes] = []
        if self._threaded:
            while True:
                try:
                    item = self._rx.get_nowait()
                except queue.Empty:
                    break
                if isinstance(item, BaseException):
                    self._port_error("read error", item)
                else:
                    chunks.append(item)
        else:
            try:
                waiting = self.port.in_waiting
                chunks.append(bytes(self.port.read(waiting)) if waiting else QUIET)
            except Exception as exc:
                self._port_error("read error", exc)
        if any(chunks):
            self._failing = 0  # the port works
        return chunks
