"""The site broker's bridge section: only the site controller's topics cross, in the contract's
directions and QoS, over MQTT 5 with a kept session; bad settings are refused with a reason."""

from __future__ import annotations

import os
import stat

import pytest

from agent.errors import ConfigError
from agent.site.bridge import bridge_config, write_bridge


def lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln and not ln.startswith("#")]


def test_only_the_site_controller_topics_cross():
    text = bridge_config("plant-7", "mqtt://127.0.0.1:1884")
    topics = [ln for ln in lines(text) if ln.startswith("topic ")]
    assert topics == [
        "topic gridminer/plant-7/site/cmd in 1",
        "topic gridminer/plant-7/site/status out 1",
        "topic gridminer/plant-7/site/telemetry out 0",
        "topic gridminer/plant-7/site/ack/# out 1",
    ]
    assert not any("/all/" in ln or "+" in ln for ln in topics)


def test_mqtt5_kept_session_unique_client_id():
    text = lines(bridge_config("plant-7", "mqtt://localhost:1884", prefix="grid"))
    assert text[0] == "connection gridminer-plant-7"
    for expected in ("address localhost:1884", "remote_clientid gridminer-bridge-plant-7",
                     "bridge_protocol_version mqttv50", "cleansession false",
                     "try_private true", "notifications true", "restart_timeout 2 30"):
        assert expected in text
    assert "topic grid/plant-7/site/cmd in 1" in text
    assert not any(ln.startswith("bridge_ca") for ln in text)  # no TLS on plain mqtt
    assert not any(ln.startswith("bridge_session_expiry") for ln in text)  # Mosquitto 2.0 lacks it


def test_central_session_expiry_and_notification_topic_when_asked():
    text = lines(bridge_config("s1", "mqtt://127.0.0.1", session_expiry_s=3600,
                               notification_topic="links/s1/state"))
    assert "bridge_session_expiry_interval 3600" in text
    assert "notification_topic links/s1/state" in text


def test_tls_options_for_mqtts():
    text = lines(bridge_config("s1", "mqtts://central.example:8883", ca_file="/etc/gm/ca.crt",
                               cert_file="/etc/gm/s1.crt", key_file="/etc/gm/s1.key",
                               username="bridge-s1", password="pw", try_private=False))
    for expected in ("address central.example:8883", "bridge_cafile /etc/gm/ca.crt",
                     "bridge_certfile /etc/gm/s1.crt", "bridge_keyfile /etc/gm/s1.key",
                     "bridge_insecure false", "remote_username bridge-s1",
                     "remote_password pw", "try_private false"):
        assert expected in text
    system_ca = lines(bridge_config("s1", "mqtts://central.example"))
    assert "bridge_capath /etc/ssl/certs" in system_ca
    assert "address central.example:8883" in system_ca


@pytest.mark.parametrize(("kwargs", "reason"), [
    ({"site": "bad site"}, "must match"),
    ({"central_url": "ws://central:80"}, "websockets"),
    ({"central_url": "http://central"}, "expected mqtt"),
    ({"central_url": "mqtt://central.example:1883"}, "not on loopback"),
    ({"central_url": "mqtt://127.0.0.1", "ca_file": "/ca.crt"}, "plain mqtt"),
    ({"central_url": "mqtts://c", "cert_file": "/c.crt"}, "both"),
    ({"password": "pw"}, "needs a username"),
    ({"username": "a b"}, "whitespace"),
    ({"password": "x\nconnection evil", "username": "u"}, "whitespace"),
    ({"keepalive_s": 2}, "minimum"),
    ({"restart_s": (10, 5)}, "backoff"),
    ({"session_expiry_s": -1}, "session expiry"),
    ({"notification_topic": "a b"}, "whitespace"),
    ({"prefix": "a/b"}, "one topic level"),
])
def test_bad_settings_are_refused_with_a_reason(kwargs, reason):
    args = {"site": "s1", "central_url": "mqtt://127.0.0.1:1884"}
    args.update(kwargs)
    with pytest.raises(ConfigError, match=reason):
        bridge_config(args.pop("site"), args.pop("central_url"), **args)


def test_plain_mqtt_off_loopback_only_when_asked():
    text = bridge_config("s1", "mqtt://10.0.0.5:1883", insecure_no_tls=True)
    assert "address 10.0.0.5:1883" in text


def test_the_file_is_private(tmp_path):
    path = write_bridge(tmp_path / "bridge.conf", bridge_config("s1", "mqtt://127.0.0.1"))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert path.read_text().startswith("# gridminer: site s1 bridged to mqtt://127.0.0.1:1883")


def site_args(tmp_path, *extra: str) -> list[str]:
    return ["site", "--broker", "mqtt://127.0.0.1:1883", "--site", "s1", "--operator-key", "g.pem",
            "--kid", "grid", "--key", "s.pem", "--key-kid", "site", "--state-dir",
            str(tmp_path / "state"), *extra]


def test_gridminer_site_writes_the_bridge(tmp_path, capsys):
    from agent.cli import main

    secret = tmp_path / "central.password"
    secret.write_text("s3cret\n")
    secret.chmod(0o600)
    out = tmp_path / "bridge.conf"
    code = main(site_args(tmp_path, "--write-bridge", str(out), "--central",
                          "mqtts://central.example:8883", "--central-username", "s1",
                          "--central-password-file", str(secret), "--central-not-mosquitto"))
    assert code == 0, capsys.readouterr().err
    text = lines(out.read_text())
    assert "remote_password s3cret" in text and "try_private false" in text
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    assert "written to" in capsys.readouterr().out


def test_gridminer_site_refuses_a_bad_bridge_with_a_reason(tmp_path, capsys):
    from agent.cli import main

    out = tmp_path / "bridge.conf"
    assert main(site_args(tmp_path, "--write-bridge", str(out))) == 2
    assert "needs --central" in capsys.readouterr().err
    assert main(site_args(tmp_path, "--write-bridge", str(out), "--central",
                          "ws://central:80")) == 2
    assert "websockets" in capsys.readouterr().err
    assert not out.exists()
