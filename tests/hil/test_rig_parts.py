"""The rig's own parts, without a full run: target URLs, the agent config it writes, the link
cutter that plays a broker outage."""

from __future__ import annotations

import socket
import threading
import time
import tomllib

import pytest

from agent.config import config_from_mapping
from hil.rig import LinkCutter, RigError, RigTarget, deep_merge, dump_toml


def test_target_urls_parse_and_bad_ones_say_the_syntax():
    t = RigTarget.parse("chain=rfc2217://lab:4001,board=rfc2217://lab:4002")
    assert (t.chain, t.board) == ("rfc2217://lab:4001", "rfc2217://lab:4002")
    for bad in ("rfc2217://lab:4001", "chain=x", "chain=x,usb=y", "chain=,board=y"):
        with pytest.raises(RigError, match=r"chain=URL,board=URL|both chain= and board="):
            RigTarget.parse(bad)


def test_written_agent_config_reads_back_and_scenario_overrides_merge():
    cfg = {
        "chain": {"port": "/dev/pts/9", "family": "BM1370", "chips": 4},
        "board": {"port": "/dev/pts/10"},
        "envelope": {"ramp_max_w_s": 30.0},
    }
    merged = deep_merge(cfg, {"envelope": {"ramp_max_w_s": 15.0, "max_chip_temp_hard_c": 80.0}})
    text = dump_toml(merged)
    parsed = config_from_mapping(tomllib.loads(text))
    assert parsed.envelope.ramp_max_w_s == 15.0
    assert parsed.envelope.max_chip_temp_hard_c == 80.0
    assert parsed.chain.chips == 4


def _echo_server() -> tuple[socket.socket, threading.Event]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    stop = threading.Event()

    def serve() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            conn.settimeout(2.0)
            try:
                while data := conn.recv(1024):
                    conn.sendall(data)
            except OSError:
                pass
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    return srv, stop


def test_link_cutter_relays_cuts_and_restores():
    srv, stop = _echo_server()
    cutter = LinkCutter(srv.getsockname())
    try:
        c = socket.create_connection(("127.0.0.1", cutter.port), timeout=2.0)
        c.sendall(b"ping")
        assert c.recv(16) == b"ping"
        cutter.cut()
        assert c.recv(16) == b""  # the agent sees its connection drop
        c.close()
        refused = socket.create_connection(("127.0.0.1", cutter.port), timeout=2.0)
        assert refused.recv(16) == b""  # and new connections go nowhere
        refused.close()
        cutter.restore()
        time.sleep(0.1)
        c = socket.create_connection(("127.0.0.1", cutter.port), timeout=2.0)
        c.sendall(b"back")
        assert c.recv(16) == b"back"
        c.close()
    finally:
        cutter.close()
        stop.set()
        srv.close()
