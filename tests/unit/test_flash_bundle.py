"""agent.cli.flash: the bundle and the mpremote steps (the real deploy is tests/integration)."""

import json

import pytest

from agent.cli import flash


def test_bundle_has_precompiled_modules_main_and_config(tmp_path):
    cfg = flash.load_config(None, "BM1368")
    files = flash.build_bundle(tmp_path, cfg)
    names = {p.relative_to(tmp_path).as_posix() for p in files}
    assert {"firmware_bridge/asic.mpy", "firmware_bridge/bridge.mpy", "firmware_bridge/device.mpy",
            "main.py", "bridge.json"} <= names
    assert not any(n.endswith(".py") and n.startswith("firmware_bridge/") for n in names)
    assert (tmp_path / "firmware_bridge/asic.mpy").read_bytes()[:1] == b"M"  # .mpy magic
    assert "firmware_bridge.device.start" in (tmp_path / "main.py").read_text()
    assert json.loads((tmp_path / "bridge.json").read_text())["family"] == "BM1368"


def test_steps_for_the_unix_port_and_for_a_board(tmp_path):
    unix = flash.mpremote_steps("mpremote", "/dev/pts/9", tmp_path, ".", True, "exec")
    assert all(s[:4] == ["mpremote", "connect", "/dev/pts/9", "resume"] for s in unix)
    assert ":./main.py" in unix[1] and unix[-1][-2:] == ["--no-follow", "import main"]
    board = flash.mpremote_steps("mpremote", "/dev/ttyACM0", tmp_path, "/", False, "reset")
    assert "resume" not in board[0] and ":/main.py" in board[1] and board[-1][-1] == "reset"


def test_bad_config_is_a_flash_error(tmp_path):
    p = tmp_path / "c.json"
    p.write_text('{"family": "BM1370", "trip_temp_dc": "hot"}')
    with pytest.raises(flash.FlashError, match="trip_temp_dc"):
        flash.load_config(str(p), "BM1370")
    p.write_text("[1]")
    with pytest.raises(flash.FlashError, match="object"):
        flash.load_config(str(p), "BM1370")
