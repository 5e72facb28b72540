"""`LinkCutter`: a TCP relay between the agent and the broker that the rig cuts to play a broker
outage as the agent sees it (open connections drop, new ones are refused) or freezes to play a
half-open connection (the sockets stay open, nothing gets through), and restores after.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading


class LinkCutter:
    """A TCP relay between the agent and the broker that the rig can cut (a broker outage as the
    agent sees it: connections drop, new ones are refused), freeze (a half-open connection:
    what either side sends is swallowed, no socket closes) and restore."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(8)
        self.port = int(self._listener.getsockname()[1])
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._cut = threading.Event()
        self._frozen = threading.Event()
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

    def freeze(self) -> None:
        self._frozen.set()

    def restore(self) -> None:
        self._cut.clear()
        self._frozen.clear()

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
                if self._frozen.is_set():
                    continue  # swallowed: neither side hears of it
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
