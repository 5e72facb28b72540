"""Trust anchors on disk: operator public keys and the state folder that only their owner can
change, the state folder checked before the agent goes online, the operator CLI's secrets."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.app import build_grid
from agent.cli import grid_operator
from agent.errors import GridLinkError
from agent.grid import cose
from agent.grid.session import load_operator_keys
from agent.grid.trust import check_state_dir

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))


@pytest.fixture
def pub(tmp_path) -> Path:
    path = tmp_path / "keys" / "op.pub.pem"
    path.parent.mkdir()
    path.write_bytes(cose.public_pem(KEY.public_key()))
    path.chmod(0o644)  # readable by all is right for a public key
    return path


@pytest.mark.parametrize("mode", [0o664, 0o646])
def test_an_operator_key_others_can_write_is_refused_naming_the_file(pub: Path, mode: int,
                                                                      caplog) -> None:
    assert list(load_operator_keys([("op-1", str(pub))])) == [b"op-1"]
    pub.chmod(mode)
    with pytest.raises(GridLinkError, match=f"{pub}.*writable by group/others"):
        load_operator_keys([("op-1", str(pub))])
    with caplog.at_level(logging.WARNING):
        assert list(load_operator_keys([("op-1", str(pub))], insecure_dev=True)) == [b"op-1"]
    assert "INSECURE" in caplog.text and str(pub) in caplog.text


def test_a_state_folder_others_can_write_is_refused(tmp_path, caplog) -> None:
    state = tmp_path / "state"
    check_state_dir(state)  # made, private
    assert state.is_dir() and state.stat().st_mode & 0o077 == 0
    assert list(state.iterdir()) == []  # the write check leaves nothing behind
    state.chmod(0o775)
    with pytest.raises(GridLinkError, match=f"state folder {state}.*writable by group/others"):
        check_state_dir(state)
    with caplog.at_level(logging.WARNING):
        check_state_dir(state, insecure_dev=True)
    assert "INSECURE" in caplog.text


def grid_config(pub: Path, state_dir: Path) -> Any:
    grid = SimpleNamespace(broker_url="mqtt://127.0.0.1:1", site="site-a", device="dev-1",
                           state_dir=str(state_dir), insecure_dev=False,
                           operator_keys=[SimpleNamespace(kid="op-1", path=str(pub))])
    return SimpleNamespace(grid=grid)


@pytest.mark.parametrize("where", ["under_a_file", "is_a_file"])
def test_a_state_folder_that_cannot_be_written_stops_the_agent_before_it_goes_online(
    tmp_path, pub: Path, where: str
) -> None:
    blocker = tmp_path / "flash"
    blocker.write_text("a file where the folder should be")
    state_dir = blocker / "state" if where == "under_a_file" else blocker
    with pytest.raises(GridLinkError, match=f"state folder {state_dir}: cannot"):
        build_grid(grid_config(pub, state_dir), runtime=None, clock=None)


# ---- the operator command line -----------------------------------------------------------------
def operator_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    grid_operator.configure(parser)
    return parser.parse_args(list(argv))


class Unreachable:
    """Stands in for the broker client: reaching it means the checks before it passed."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        raise GridLinkError("stub broker: checks passed")


@pytest.mark.parametrize("action", [["watch", "--once"], ["ping", "--device", "dev-1"]])
def test_operator_cli_refuses_a_password_file_others_can_read(tmp_path, monkeypatch, capsys,
                                                              action: list[str]) -> None:
    monkeypatch.setattr(grid_operator, "Operator", Unreachable)
    secret = tmp_path / "pw"
    secret.write_text("hunter2")
    secret.chmod(0o640)
    key = tmp_path / "op.pem"
    key.write_bytes(cose.private_pem(KEY))
    key.chmod(0o600)
    common = ["--site", "site-a", "--username", "op", "--password-file", str(secret)]
    if action[0] != "watch":
        common += ["--key", str(key), "--seq-file", str(tmp_path / "seq.json")]
    assert grid_operator.run(operator_args(*action, *common)) == grid_operator.EXIT_ERROR
    err = capsys.readouterr().err
    assert f"password file {secret}" in err and "chmod 600" in err
    insecure = operator_args(*action, *common, "--insecure-dev")
    assert grid_operator.run(insecure) == grid_operator.EXIT_ERROR
    assert "checks passed" in capsys.readouterr().err
    secret.chmod(0o600)
    assert grid_operator.run(operator_args(*action, *common)) == grid_operator.EXIT_ERROR
    assert "checks passed" in capsys.readouterr().err


def test_keygen_force_never_exposes_the_new_private_key(tmp_path) -> None:
    key, pub = tmp_path / "op.pem", tmp_path / "op.pub.pem"
    key.write_bytes(b"an old key, readable by all")
    key.chmod(0o644)
    pub.write_bytes(b"old")
    spy = os.open(key, os.O_RDONLY)  # whoever could read the old file keeps it open
    umask = os.umask(0o002)  # a group-friendly umask must not loosen either file
    try:
        assert grid_operator.run(operator_args("keygen", "--key", str(key), "--force")) == 0
        assert os.pread(spy, 4096, 0) == b"an old key, readable by all"
    finally:
        os.umask(umask)
        os.close(spy)
    assert b"PRIVATE KEY" in key.read_bytes() and key.stat().st_mode & 0o777 == 0o600
    assert pub.stat().st_mode & 0o777 == 0o644  # what the agent's key check accepts
    assert sorted(p.name for p in tmp_path.iterdir()) == ["op.pem", "op.pub.pem"]
    load_operator_keys([("k", str(pub))])
