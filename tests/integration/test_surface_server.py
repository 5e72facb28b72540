"""The HTTP listener on its own (agent/surface/server.py) with a fixed view, on loopback: it says
"starting" before the first view, a busy address is a clear error, and clients that hold
connections open cannot take more than its share of threads from the others."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from agent.errors import ConfigError
from agent.surface.server import MAX_CONNECTIONS, SurfaceServer
from agent.surface.view import DeviceView, Identity

VIEW = DeviceView(identity=Identity(family="BM1370", chips=4, small_cores=2040,
                                    version="gridminer-9", hostname="shed",
                                    mac="AA:BB:CC:DD:EE:FF"),
                  uptime_s=5.0, mode="mining", board_ok=True, power_w=50.0)


def get(port: int, path: str, timeout_s: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout_s) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.fixture
def server(no_leaks: None) -> Iterator[SurfaceServer]:
    srv = SurfaceServer("127.0.0.1", 0, lambda: None).start()
    try:
        yield srv
    finally:
        srv.stop()


def test_before_the_first_view_the_api_says_starting(server: SurfaceServer) -> None:
    port = server.address[1]
    status, body = get(port, "/api/system/info")
    assert status == 503 and json.loads(body)["error"] == "the agent is starting"
    assert get(port, "/metrics") == (200, b"")
    server.latest = lambda: VIEW
    status, body = get(port, "/api/system/info")
    assert status == 200 and json.loads(body)["power"] == 50.0


def test_a_busy_address_is_refused_with_the_address(server: SurfaceServer) -> None:
    port = server.address[1]
    with pytest.raises(ConfigError, match=rf"http\.listen: cannot listen on 127\.0\.0\.1:{port}"):
        SurfaceServer("127.0.0.1", port, lambda: VIEW).start()


def test_idle_connections_beyond_the_cap_are_dropped_and_the_rest_served(
        server: SurfaceServer) -> None:
    server.latest = lambda: VIEW
    port = server.address[1]
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(MAX_CONNECTIONS)]
    try:
        # every slot is held: the next client is closed at once rather than queued
        with socket.create_connection(("127.0.0.1", port), timeout=5) as extra:
            try:
                extra.sendall(b"GET /api/system/info HTTP/1.0\r\n\r\n")
                answer = extra.recv(100)
            except (ConnectionResetError, BrokenPipeError):
                answer = b""  # closed before or after the request arrived: the same refusal
            assert answer == b""
    finally:
        for s in idle:
            s.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the slots come back as the held threads end
        try:
            status, _ = get(port, "/api/system/asic", timeout_s=1.0)
            if status == 200:
                break
        except OSError:
            pass
        time.sleep(0.05)
    assert get(port, "/api/system/asic")[0] == 200
