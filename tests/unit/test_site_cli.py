"""`gridminer site`: a bad flag or file is one line on stderr and exit status 2, before anything
connects."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.cli import main
from agent.grid import cose


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    grid, site = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    paths = {"grid_pub": tmp_path / "grid.pub.pem", "site": tmp_path / "site.pem",
             "state": tmp_path / "state"}
    paths["grid_pub"].write_bytes(cose.public_pem(grid.public_key()))
    paths["grid_pub"].chmod(0o644)
    paths["site"].write_bytes(cose.private_pem(site))
    paths["site"].chmod(0o600)
    return paths


def argv(files: dict[str, Path], **change: str) -> list[str]:
    flags = {"--broker": "mqtt://127.0.0.1:1", "--site": "s1",
             "--operator-key": str(files["grid_pub"]), "--kid": "grid", "--key": str(files["site"]),
             "--key-kid": "site-k", "--state-dir": str(files["state"]), **change}
    out = ["site"]
    for name, value in flags.items():
        out += [name] if value == "" else [name, value]
    return out


@pytest.mark.parametrize(("change", "message"), [
    ({"--site": "s/1"}, "--site 's/1' must match"),
    ({"--ramp-w-s": "0"}, "--ramp-w-s 0: a ramp limit is 1 W/s or more"),
    ({"--meter-topic": "meter/#"}, "--meter-topic 'meter/#': one topic, without wildcards"),
    ({"--key-kid": "grid"}, "--kid and --key-kid are the same"),
    ({"--operator-key": "/nonexistent/grid.pub.pem"}, "operator key 'grid' at /nonexistent"),
    ({"--key": "/nonexistent/site.pem"}, "/nonexistent/site.pem: cannot read"),
    ({"--broker": "mqtt://10.1.2.3:1883"}, "plain MQTT to a non-loopback host"),
    ({"--broker": "http://127.0.0.1"}, "broker"),
])
def test_a_bad_flag_is_one_line_and_exit_2(files, capsys, change, message) -> None:
    assert main(argv(files, **change)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gridminer site: ") and message in err[0], err


def test_a_site_key_others_can_read_is_refused(files, capsys) -> None:
    files["site"].chmod(0o644)
    assert main(argv(files)) == 2
    assert "chmod 600" in capsys.readouterr().err


def test_a_missing_flag_is_named(files, capsys) -> None:
    args = argv(files)
    del args[args.index("--key-kid"):args.index("--key-kid") + 2]
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2 and "--key-kid" in capsys.readouterr().err
