"""The optional HTTP listener: `GET /`, `/api/system/info`, `/api/system/asic` (AxeOS-compatible,
`agent.surface.axeos`) and `/metrics` (Prometheus, `agent.surface.metrics`), read-only.

It runs on threads of its own and reads only the latest published `DeviceView`, so a slow or
hostile client never holds up the control thread. Any method but GET is refused with 405, any
other path with 404; at most MAX_CONNECTIONS requests are served at once (more are dropped), and
a connection that sends nothing for REQUEST_TIMEOUT_S is closed.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from agent.errors import ConfigError
from agent.surface import axeos
from agent.surface.listen import is_loopback
from agent.surface.metrics import CONTENT_TYPE as METRICS_TYPE
from agent.surface.metrics import exposition
from agent.surface.view import DeviceView

log = logging.getLogger("gridminer.http")

MAX_CONNECTIONS = 16
REQUEST_TIMEOUT_S = 10.0
JSON_TYPE = "application/json"
HTML_TYPE = "text/html; charset=utf-8"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], latest: Callable[[], DeviceView | None]) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.latest = latest
        self.metrics = exposition(latest)
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.dropped = 0
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self.dropped += 1
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = REQUEST_TIMEOUT_S

    def version_string(self) -> str:
        return "gridminer"

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        view = self.server.latest()
        if path in ("/", "/index.html"):
            self._send(HTTPStatus.OK, HTML_TYPE, axeos.index_page(view).encode())
        elif path == "/metrics":
            self._send(HTTPStatus.OK, METRICS_TYPE, self.server.metrics())
        elif path in ("/api/system/info", "/api/system/asic"):
            if view is None:
                self._json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": "the agent is starting"})
            elif path.endswith("/info"):
                self._json(HTTPStatus.OK, axeos.system_info(view))
            else:
                self._json(HTTPStatus.OK, axeos.system_asic(view))
        else:
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no such path: {path[:100]}"})

    def _refuse(self) -> None:
        """Every other method: this API is read-only."""
        self.close_connection = True
        self._json(HTTPStatus.METHOD_NOT_ALLOWED,
                   {"error": f"{self.command} is not allowed: this API is read-only"},
                   allow="GET")

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _refuse
    do_TRACE = do_CONNECT = _refuse

    def _json(self, status: HTTPStatus, body: dict[str, Any], allow: str | None = None) -> None:
        self._send(status, JSON_TYPE, json.dumps(body).encode(), allow)

    def _send(self, status: HTTPStatus, content_type: str, body: bytes,
              allow: str | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Access-Control-Allow-Origin", "*")
        self.send_header("Cache-Control", "no-store")
        if allow is not None:
            self.send_header("Allow", allow)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


class SurfaceServer:
    """The listener on `host`:`port`, serving what `latest()` returns (it may be replaced while
    serving). `start()` binds (a ConfigError naming the address when it cannot) and serves on a
    thread; `stop()` ends it."""

    def __init__(self, host: str, port: int,
                 latest: Callable[[], DeviceView | None]) -> None:
        self.host, self.port = host, port
        self.latest = latest
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        """Where it listens (the port the system chose for port 0)."""
        if self._server is None:
            return self.host, self.port
        return self.host, int(self._server.server_address[1])

    def start(self) -> SurfaceServer:
        try:
            self._server = _Server((self.host, self.port), lambda: self.latest())
        except OSError as exc:
            raise ConfigError(f"http.listen: cannot listen on {self.host}:{self.port} "
                              f"({exc.strerror or exc})") from None
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.2}, name="http",
                                        daemon=True)
        self._thread.start()
        host, port = self.address
        if is_loopback(host):
            log.info("HTTP listener on %s:%d (read-only: /, /api/system/info, "
                     "/api/system/asic, /metrics)", host, port)
        else:
            log.warning("HTTP listener on %s:%d, beyond this machine: the owner's choice "
                        "(http.listen); it is read-only and unauthenticated", host, port)
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)
        self._server = None
