"""The rig's own parts, without a full run: target URLs, the agent config it writes, the link
cutter that plays a broker outage."""

from __future__ import annotations

import signal
import socket
import threading
import time
import tomllib
from pathlib import Path

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


def test_the_lab_pools_reach_the_agent_as_pool_tables_in_priority_order(tmp_path):
    from agent.config import load_config
    from hil.rig import write_agent_config
    from hil.scenario import load

    pools = [{"url": "stratum+tcp://127.0.0.1:3333", "user": "lab.rig0"},
             {"url": "stratum+tcp://127.0.0.1:3334", "user": "lab.rig0"}]
    path = write_agent_config(load("pool_faults"), tmp_path, broker_url="mqtt://127.0.0.1:1883",
                              pub=tmp_path / "op.pub.pem", chain="/dev/pts/9",
                              board="/dev/pts/10", nonce_difficulty=2.0**-24,
                              log_level="INFO", pools=pools)
    cfg = load_config(path)
    assert [(p.url, p.user) for p in cfg.pools] == [(p["url"], p["user"]) for p in pools]
    assert cfg.stratum.retry_max_s == 4.0  # the scenario's [device.agent.stratum]


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


class _CrashingAgent:
    """An agent process that exits by itself each time it is started."""

    def __init__(self, log_path) -> None:
        self.log_path = log_path
        self.killed = False
        self.starts = 1
        log_path.write_text("gridminer agent: grid: no operator public key configured\n")

    def exited(self) -> int:
        return 2

    def restart(self) -> None:
        self.starts += 1


def test_an_agent_that_keeps_exiting_ends_the_run_with_a_verdict(tmp_path) -> None:
    from hil.rig.options import RigOptions
    from hil.rig.runner import MAX_AGENT_CRASHES, Rig
    from hil.scenario import load

    rig = Rig(RigOptions(scenario=load("solar_surplus"), out_dir=tmp_path))
    rig.agent = _CrashingAgent(tmp_path / "agent.log")  # type: ignore[assignment]
    for _ in range(MAX_AGENT_CRASHES):
        rig._check_agent_alive()
    with pytest.raises(RigError, match=r"exited by itself 6 times \(last status 2\); giving up"
                                       r"(.|\n)*no operator public key"):
        rig._check_agent_alive()
    assert rig.agent.starts == 1 + MAX_AGENT_CRASHES


def _descendants(pid: int) -> set[int]:
    found, todo = set(), [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*/children"):
            kids = {int(k) for k in task.read_text().split()}
            todo += list(kids - found)
            found |= kids
    return found


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_terminated_run_takes_its_children_with_it(tmp_path, sig) -> None:
    """`kill -TERM` (or a closed terminal) on `gridminer hil run` stops the broker, the emulator
    and the agent it started, as Ctrl-C does."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "agent", "hil", "run", "solar_surplus",
                             "--short", "--quiet", "--out", str(tmp_path / "run")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        children: set[int] = set()
        while time.monotonic() < deadline and len(children) < 3:  # broker, emulator, agent
            children = _descendants(proc.pid)
            time.sleep(0.2)
        assert len(children) >= 3, f"the rig started only {children}"
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
        alive = {pid for pid in children if Path(f"/proc/{pid}").exists()
                 and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]}
        assert not alive, f"children left running after {sig.name}: {alive}\n{err[-2000:]}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:  # left open when the run missed a deadline
            proc.stderr.close()


def test_the_rig_pools_change_work_on_the_scenario_clock_and_play_the_cues():
    """hil.rig.pools without an agent: a block every block_interval_s, a job in between, the
    cues at their scenario times (an outage closes the port and opens it again, a storm makes a
    block every interval_s, a rejected burst is on for its duration), and the report."""
    from hil.rig.pools import RigPools
    from hil.scenario import parse

    scenario = parse({"scenario": {"name": "x", "duration_s": 60}, "pool": {
        "count": 2, "refuse_version_rolling": [1], "share_pct": 50, "job_interval_s": 4,
        "block_interval_s": 10, "event": [
            {"at_s": 12, "kind": "blocks", "duration_s": 3, "interval_s": 1},
            {"at_s": 20, "kind": "reject", "duration_s": 5, "code": 21},
            {"at_s": 30, "kind": "down", "duration_s": 10}]}})
    clock = {"t": 0.0}
    notes: list[str] = []
    pools = RigPools.for_scenario(scenario, 2.0**-24, lambda: clock["t"], notes.append)
    pools.start()
    first, second = pools.pools
    try:
        assert pools.difficulty == 2.0**-23 and second.configure == "refuse"
        assert pools.agent_entries() == [{"url": p.url, "user": "bc1qlabrig.rig0"}
                                         for p in (first, second)]
        seen: dict[float, tuple[int, bool, bool]] = {}
        for step in range(0, 451):
            clock["t"] = t = step / 10
            pools.step(t)
            seen[t] = (first.job.height, first.rejecting is not None, first._listener is None)
        # blocks at 10, 20, 30, 40; the storm's at 12, 13, 14
        assert seen[9.9][0] == 791433 and seen[10.0][0] == 791434
        assert seen[12.0][0] == 791435 and seen[14.0][0] == 791437 and seen[15.0][0] == 791437
        assert seen[20.0][1] and seen[24.9][1] and not seen[25.0][1]
        assert seen[30.0][2] and seen[39.9][2] and not seen[40.0][2]
        pools.finish()
        report = pools.report(256.0)
    finally:
        pools.stop()
    assert [(c["kind"], c["t_s"], c["end_s"]) for c in report["cues"]] == [
        ("blocks", 12.0, 15.0), ("reject", 20.0, 25.0), ("down", 30.0, 40.0)]
    down = report["cues"][2]
    assert down["without_work_s"] is None and down["back_after_s"] is None  # no agent
    assert [p["version_rolling"] for p in report["pools"]] == [True, False]
    assert any("pool cue" in n for n in notes)
