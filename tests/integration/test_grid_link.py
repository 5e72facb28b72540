"""GridLink on a real Mosquitto: birth/Will status, persisted bd, reconnect after the broker is
killed, telemetry buffered across the outage and delivered in order with `lost` exact."""

from __future__ import annotations

import contextlib
import signal
import time

from agent.grid.session import GridPolicy
from tests.integration.conftest import CAPS, Observer, plain_settings
from tests.support.agent_process import stop_process
from tests.support.polling import wait_until


def is_status(state: str, bd: int | None = None):
    def match(topic: str, msg, retained: bool) -> bool:
        return (topic.endswith("/status") and isinstance(msg, dict) and msg.get("state") == state
                and (bd is None or msg.get("bd") == bd))
    return match


def test_birth_status_is_retained_with_caps_and_bd_counts_connects(mosquitto, tmp_path,
                                                                    device_factory) -> None:
    dev = device_factory(plain_settings(mosquitto, tmp_path), name="d")
    obs = Observer(mosquitto, ["gridminer/site-a/dev-1/status"])
    try:
        _, status, _ = obs.wait_for(is_status("online"))
        assert status["v"] == 1 and status["bd"] == 1 and status["fw"]
        assert status["caps"] == CAPS and status["mode"] == "mining"
        dev.stop()
        obs.wait_for(is_status("offline", 1))  # a clean stop says offline itself
    finally:
        obs.close()
    dev2 = device_factory(plain_settings(mosquitto, tmp_path), name="d")  # same state dir
    obs = Observer(mosquitto, ["gridminer/site-a/dev-1/status"])
    try:
        obs.wait_for(is_status("online", 2))  # bd persisted and incremented
    finally:
        obs.close()
    assert dev2.link.bd == 2


def test_broker_restart_will_then_birth_and_buffered_telemetry_in_order(
    mosquitto, tmp_path, device_factory
) -> None:
    policy = GridPolicy(restart_spread_s=0.0, telemetry_period_s=0.05, telemetry_buffer=8)
    settings = plain_settings(mosquitto, tmp_path)
    settings.reconnect_min_s = 1.5  # leaves the observer time to subscribe after the restart
    settings.reconnect_max_s = 2.0
    dev = device_factory(settings, name="d", policy=policy)
    obs = Observer(mosquitto, ["gridminer/site-a/dev-1/status"])
    obs.wait_for(is_status("online", 1))
    obs.close()
    mosquitto.stop(signal.SIGTERM)  # the broker goes down; it sends the Wills as it goes
    deadline = time.monotonic() + 5
    while dev.link.connected and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not dev.link.connected
    time.sleep(1.0)  # ~20 telemetry periods with a buffer of 8
    produced_offline = dev.session.telemetry.seq
    mosquitto.start()
    obs = Observer(mosquitto, ["gridminer/site-a/dev-1/#"])
    try:
        obs.wait_for(is_status("offline", 1), timeout_s=2)  # the Will, retained
        obs.wait_for(is_status("online", 2), timeout_s=10)  # reconnected by itself
        telemetry = []
        obs.wait_for(lambda t, m, r: t.endswith("/telemetry") and telemetry.append(m) is None
                     and len(telemetry) >= 8, timeout_s=5)
    finally:
        obs.close()
    first = telemetry[:8]
    seqs = [m["seq"] for m in first]
    assert seqs == list(range(seqs[0], seqs[0] + 8)), seqs  # in order, no gap inside the buffer
    lost = first[0]["lost"]
    assert lost > 0 and all(m["lost"] == lost for m in first)
    # every message produced during the outage is either delivered or counted in `lost`
    assert seqs[-1] + 1 >= produced_offline
    assert dev.session.telemetry.lost == lost
    assert dev.link.connects == 2


DEVICE_SCRIPT = """
import sys, time
from agent.grid.link import GridLink, LinkSettings
link = GridLink(LinkSettings(sys.argv[1], "site-a", "dev-9", state_dir=sys.argv[2]))
link.set_status({"min_w": 1, "max_w": 2, "ramp_max_w_s": 3}, "mining")
link.start()
while not link.connected:
    time.sleep(0.01)
print("up", link.bd, flush=True)
time.sleep(60)
"""


def test_killed_agent_leaves_its_will_and_comes_back_with_the_next_bd(mosquitto,
                                                                       tmp_path) -> None:
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).parents[2]
    obs = Observer(mosquitto, ["gridminer/site-a/dev-9/status"])
    try:
        for bd in (1, 2):
            proc = subprocess.Popen([sys.executable, "-c", DEVICE_SCRIPT, mosquitto.url,
                                     str(tmp_path / "state")], cwd=root, stdout=subprocess.PIPE,
                                    text=True)
            try:
                assert proc.stdout is not None
                assert proc.stdout.readline().split() == ["up", str(bd)]
                obs.wait_for(is_status("online", bd))
                proc.kill()  # kill -9: no DISCONNECT, the broker publishes the Will
            finally:
                stop_process(proc, 5)
            _, will, _ = obs.wait_for(is_status("offline", bd))
            assert will["caps"] == {"min_w": 1, "max_w": 2, "ramp_max_w_s": 3}
    finally:
        obs.close()


def test_publishes_from_several_threads_over_tls_while_the_broker_flaps(secure_mosquitto,
                                                                         tmp_path) -> None:
    """One owner of the socket: four threads publish (QoS 0 and 1) through one link while the
    broker is killed and restarted twice; no thread sees an error, the TLS stream is never
    corrupted (the link reconnects exactly once per restart) and every QoS 1 message published
    while the observer listens arrives intact."""
    import threading

    import cbor2

    from agent.grid.link import GridLink, LinkSettings

    b = secure_mosquitto
    settings = LinkSettings(b.tls_url, "site-a", "dev-1", state_dir=str(tmp_path / "d"),
                            ca_file=b.ca_file, username="dev-1",
                            password_file=b.password_file_for("dev-1"), reconnect_min_s=0.2,
                            reconnect_max_s=0.5)
    link = GridLink(settings)
    link.start()
    errors: list[BaseException] = []
    stop = threading.Event()
    payload = bytes(range(256)) * 16  # 4 KiB: TLS records long enough to interleave

    def publisher(n: int) -> None:
        i = 0
        while not stop.is_set():
            try:
                link.publish("gridminer/site-a/dev-1/telemetry",
                             cbor2.dumps(payload + f"{n}:{i}".encode()), qos=i % 2)
            except BaseException as exc:  # surfaced below
                errors.append(exc)
                return
            i += 1
            time.sleep(0.0005)

    threads = [threading.Thread(target=publisher, args=(n,)) for n in range(4)]
    try:
        wait_until(lambda: link.connected, 10, lambda: f"a connection ({link.last_error})")
        for t in threads:
            t.start()
        time.sleep(1.0)
        for _ in range(2):
            b.restart(down_s=0.3)
            wait_until(lambda: link.connected, 10, lambda: f"a reconnection ({link.last_error})")
            time.sleep(1.0)
        obs = Observer(b, ["gridminer/site-a/dev-1/telemetry"], username="operator",
                       password=b.password("operator"))
        try:
            marks = []
            obs.wait_for(lambda t, m, r: isinstance(m, bytes) and marks.append(m) is None
                         and len(marks) >= 200, timeout_s=10)
        finally:
            obs.close()
    finally:
        stop.set()
        for t in threads:
            t.join(5)
        link.stop()
    assert not errors, errors
    assert link.connects == 3, (link.connects, link.last_error)
    assert all(m[:4096] == payload for m in marks)


def test_an_oversized_publish_never_reaches_the_device(mosquitto, tmp_path) -> None:
    """A 64 MiB publish on the site's command topic: the broker keeps it from the device (its
    Maximum Packet Size), whose memory does not grow, and the next command still gets through."""
    import subprocess
    import sys
    from pathlib import Path

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    script = """
import sys, time
from agent.grid.link import GridLink, LinkSettings
link = GridLink(LinkSettings(sys.argv[1], "site-a", "dev-9", state_dir=sys.argv[2]))
link.start()
while not link.connected:
    time.sleep(0.01)
print("up", flush=True)
for line in sys.stdin:
    msgs = link.drain()
    print(len(msgs), max((len(m.payload) for m in msgs), default=0), flush=True)
link.stop()
"""
    proc = subprocess.Popen([sys.executable, "-c", script, mosquitto.url, str(tmp_path / "s")],
                            cwd=Path(__file__).parents[2], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None

    def peak_rss_kib() -> int:
        for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise AssertionError("no VmHWM")

    sender = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="big", protocol=mqtt.MQTTv5)
    try:
        assert proc.stdout.readline().strip() == "up"
        before = peak_rss_kib()
        sender.connect("127.0.0.1", mosquitto.port)
        sender.loop_start()
        sender.publish("gridminer/site-a/all/cmd", b"x" * (64 << 20), qos=1).wait_for_publish(30)
        sender.publish("gridminer/site-a/all/cmd", b"small", qos=1).wait_for_publish(5)
        deadline = time.monotonic() + 5
        counts = []
        while time.monotonic() < deadline:
            proc.stdin.write("\n")
            proc.stdin.flush()
            n, largest = map(int, proc.stdout.readline().split())
            counts.append((n, largest))
            if n:
                break
            time.sleep(0.05)
        grown_kib = peak_rss_kib() - before
    finally:
        sender.loop_stop()
        sender.disconnect()
        proc.stdin.close()  # the end of its input: it stops its link and exits
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        stop_process(proc, 5)
    assert counts[-1] == (1, 5), counts  # only the small one arrived
    assert grown_kib < 8 * 1024, f"peak memory grew by {grown_kib} KiB"


def test_a_second_client_with_the_same_device_id_stops_the_flapping(mosquitto,
                                                                    tmp_path) -> None:
    """Two links with one device id: the broker closes the older one's session for the newer
    one (with MQTT 5 'session taken over', or silently as Mosquitto 2.0 does); the link kicked
    within seconds of connecting backs off, and after three such takeovers in a row gives up
    with a message naming the device id, while the other stays connected. Neither reconnects
    more than a handful of times."""
    from agent.grid.link import GridLink, LinkSettings

    def make(name: str) -> GridLink:
        return GridLink(LinkSettings(mosquitto.url, "site-a", "dev-1",
                                     state_dir=str(tmp_path / name), reconnect_min_s=0.1,
                                     reconnect_max_s=0.2, takeover_backoff_s=1.0))

    first, second = make("a"), make("b")
    fatal: list[str] = []
    first.on_fatal = fatal.append
    second.on_fatal = fatal.append
    first.start()
    try:
        wait_until(lambda: first.connected, 10, "the first link up")
        second.start()
        wait_until(lambda: bool(fatal), 10, "a link to give up")
        time.sleep(2.0)  # long enough for several flaps at the old rate of three a second
        loser, winner = (first, second) if first.fatal else (second, first)
        assert fatal == [loser.fatal] and winner.fatal is None
        assert "another client holds device id 'dev-1'" in fatal[0]
        assert loser.state == "taken over" and not loser.connected
        assert winner.connected
        assert first.connects + second.connects <= 8, (first.connects, second.connects)
    finally:
        first.stop()
        second.stop()


def test_back_within_seconds_of_a_broker_restart(mosquitto, tmp_path, device_factory) -> None:
    """Default reconnect settings: after a broker that was down for 10 s comes back, the device
    is online again within a few seconds (the backoff's cap is low)."""
    from agent.grid.link import LinkSettings

    dev = device_factory(LinkSettings(mosquitto.url, "site-a", "dev-1",
                                      state_dir=str(tmp_path / "dev-1")), name="d")
    wait_until(lambda: dev.link.connected, 10, "the link up")
    mosquitto.stop()
    wait_until(lambda: not dev.link.connected, 5, "the link down")
    time.sleep(10.0)
    mosquitto.start()
    back = time.monotonic()
    wait_until(lambda: dev.link.connected, 15, "the link back")
    assert time.monotonic() - back < 6.0


def test_inbound_is_bounded_and_counts_what_it_drops(mosquitto, tmp_path) -> None:
    """A flood on the command topic while the control thread is busy: the link queues at most
    `inbound_max` messages, drops and counts the rest, and acknowledges the QoS 1 ones it
    dropped (so they do not hold the broker's Receive Maximum window); then it still takes
    commands."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from agent.grid.link import GridLink, LinkSettings

    link = GridLink(LinkSettings(mosquitto.url, "site-a", "dev-1", state_dir=str(tmp_path / "s"),
                                 inbound_max=8))
    sender = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="flood", protocol=mqtt.MQTTv5)
    link.start()
    try:
        wait_until(lambda: link.connected, 10, "the link up")
        sender.connect("127.0.0.1", mosquitto.port)
        sender.loop_start()
        infos = [sender.publish("gridminer/site-a/dev-1/cmd", b"%d" % i, qos=i % 2)
                 for i in range(40)]
        for info in infos:
            info.wait_for_publish(5)
        wait_until(lambda: link.inbound.qsize() + link.dropped_inbound >= 40, 10,
                   lambda: f"40 in ({link.inbound.qsize()} queued, {link.dropped_inbound} dropped)")
        assert link.inbound.qsize() == 8 and link.dropped_inbound == 32
        for msg in link.drain():
            link.ack(msg)
        sender.publish("gridminer/site-a/dev-1/cmd", b"after", qos=1).wait_for_publish(5)
        wait_until(lambda: link.inbound.qsize() == 1, 5, "the command after the flood")
        assert link.drain()[0].payload == b"after"
    finally:
        sender.loop_stop()
        sender.disconnect()
        link.stop()


def test_a_half_open_connection_is_noticed_and_its_telemetry_counted_lost(mosquitto,
                                                                          tmp_path) -> None:
    """The path to the broker goes silent without closing (a NAT or a cable that drops): the
    keepalive notices within two periods, every QoS 0 message handed over after the broker last
    confirmed what it had is counted lost, and the link comes back once the path does."""
    from agent.grid.link import GridLink, LinkSettings
    from hil.rig.cutter import LinkCutter

    cutter = LinkCutter(("127.0.0.1", mosquitto.port))
    link = GridLink(LinkSettings(cutter.url, "site-a", "dev-1", state_dir=str(tmp_path / "s"),
                                 keepalive_s=1, reconnect_min_s=0.2, reconnect_max_s=0.5))
    link.start()
    try:
        wait_until(lambda: link.connected, 10, "the link up")
        time.sleep(2.5)  # a few answered pings
        for _ in range(5):
            assert link.publish("gridminer/site-a/dev-1/telemetry", b"\xa0", qos=0)
            time.sleep(0.05)
        assert link.take_lost() == 0  # a healthy link loses nothing
        cutter.freeze()
        frozen_at = time.monotonic()
        sent = 0
        while link.connected and time.monotonic() - frozen_at < 10:
            if link.publish("gridminer/site-a/dev-1/telemetry", b"\xa0", qos=0):
                sent += 1
            time.sleep(0.1)
        noticed_s = time.monotonic() - frozen_at
        assert not link.connected and noticed_s <= 3.0, noticed_s  # two keepalives and a bit
        lost = link.take_lost()
        # every message after the freeze, and at most a keepalive's worth from before it
        assert sent <= lost <= sent + 5 + 10, (sent, lost)
        cutter.restore()
        wait_until(lambda: link.connected, 10, "the link back after the path returns")
        assert link.take_lost() == 0
    finally:
        link.stop()
        cutter.close()
