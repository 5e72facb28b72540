"""End to end: `gridminer agent` (a process, as a user starts it) on the emulated hash board,
mining to lab pools over loopback TCP. Every share is checked by the pool with hashlib alone:
none is invalid, version rolling is on where granted and off where refused (the chips' 0xA4
follows), a block change makes the old work stale at once, and when the first pool dies the
agent fails over to the second and comes back."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from firmware_bridge import asic
from hil.hashboard import HashBoardEmulator
from hil.pool import LabPool
from tests.support.agent_process import stop_process
from tests.support.polling import wait_until

ROOT = Path(__file__).resolve().parents[2]
EMU_DIFFICULTY = 2.0**-19  # every nonce the chips send meets it
POOL_DIFFICULTY = 2.0**-18  # about half of them are shares


@pytest.fixture
def emulator() -> Iterator[HashBoardEmulator]:
    emu = HashBoardEmulator(family="BM1370", chips=4, seed=11, difficulty=EMU_DIFFICULTY)
    emu.start()
    try:
        yield emu
    finally:
        emu.stop()


@pytest.fixture
def pools() -> Iterator[list[LabPool]]:
    made = [LabPool(difficulty=POOL_DIFFICULTY, name="pool-a").start(),
            LabPool(difficulty=POOL_DIFFICULTY, configure="refuse", name="pool-b").start()]
    try:
        yield made
    finally:
        for p in made:
            p.stop()


def start_agent(tmp_path: Path, emu: HashBoardEmulator, *pool_args: str) -> subprocess.Popen[bytes]:
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[chain]\nport = "{emu.chain_path}"\nfamily = "BM1370"\nchips = 4\n'
        f'nonce_difficulty = {EMU_DIFFICULTY!r}\n'
        f'[board]\nport = "{emu.board_path}"\n'
        '[log]\nstatus_period_s = 1.0\n'
        '[stratum]\nfailover_after_s = 1.0\nretry_min_s = 0.1\nretry_max_s = 0.5\n')
    (tmp_path / "pool-password").write_text("s3cret\n")
    with open(tmp_path / "agent.err", "wb") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "agent", "agent", "--config", str(config), *pool_args,
             "--pool-user", "bc1qlab.rig1", "--pool-password-file",
             str(tmp_path / "pool-password")],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)


def chip_mask_reg(emu: HashBoardEmulator) -> set[int]:
    return {chip.regs.get(asic.REG_VERSION_ROLLING, 0) for chip in emu.chain.chips}


def test_the_agent_mines_to_the_pools_rolls_versions_follows_blocks_and_fails_over(
        emulator, pools, tmp_path):
    first, second = pools
    proc = start_agent(tmp_path, emulator, "--pool", first.url, "--pool", second.url)
    wait = partial(wait_until, alive=proc)  # the agent's exit ends any wait at once
    try:
        # 1. mining to the first pool, which grants version rolling
        wait(lambda: first.counts["accepted"] >= 20, 60, "shares at the first pool")
        accepted = first.accepted()
        assert {s.params for s in accepted} == {6}
        assert sum(1 for s in accepted if s.version_bits) >= len(accepted) // 2
        assert all(s.version_bits & ~0x1FFFE000 == 0 for s in accepted)
        assert {s.worker for s in accepted} == {"bc1qlab.rig1"}
        assert chip_mask_reg(emulator) == {0x9000FFFF}
        # 2. a new block: the old job is stale at once, the chips get the new one
        old_job = first.job.job_id
        block = first.new_block()
        t_block = time.monotonic()
        wait(lambda: any(s.job_id == block.job_id for s in first.accepted()), 10,
             "a share of the new block")
        assert time.monotonic() - t_block < 5.0
        before = len(first.shares)
        wait(lambda: len(first.shares) >= before + 10, 20, "shares after the block")
        assert all(s.job_id != old_job for s in first.shares[before:])
        # the only stale shares are those already on the wire when the block changed
        stale = [s for s in first.shares if s.outcome == "stale"]
        assert all(s.job_id == old_job and s.at_s - t_block < 2.0 for s in stale), stale
        assert len(stale) <= 5
        # 3. the first pool dies: the second (no version rolling) takes over
        first.go_down()
        wait(lambda: second.counts["accepted"] >= 10, 30, "shares at the second pool")
        on_second = second.accepted()
        assert {s.params for s in on_second} == {5}
        assert all(s.version_bits == 0 for s in on_second)
        wait(lambda: chip_mask_reg(emulator) == {0x90000000}, 5, "0xA4 without rolling")
        # 4. the first pool is back: the agent returns to it
        count = first.counts["accepted"]
        first.come_up()
        wait(lambda: first.counts["accepted"] >= count + 10, 30, "shares back at the first")
        wait(lambda: chip_mask_reg(emulator) == {0x9000FFFF}, 5, "0xA4 rolling again")
        wait(lambda: not second.connected(), 10, "the second pool let go")
    finally:
        stop_process(proc, 20)
    err = (tmp_path / "agent.err").read_text()
    assert proc.returncode == 0, err[-3000:]
    assert "Traceback" not in err
    assert f"mining to {first.url}, then {second.url}" in err
    assert "grants no version rolling" in err
    assert first.counts["invalid"] == 0 and second.counts["invalid"] == 0, (
        [s for s in first.shares + second.shares if s.outcome == "invalid"][:5])
    assert first.counts["duplicate"] == second.counts["duplicate"] == 0
    assert first.counts["unauthorized"] == second.counts["unauthorized"] == 0
    assert "GH/s credited" in err  # the client's status line per pool


@pytest.mark.parametrize(("case", "message"), [
    ("url", "pool[0].url: 'stratum://pool.example:3333' is not stratum+tcp://HOST:PORT"),
    ("user", "pool[0].user: the worker name ' bc1qlab.rig1' has blanks around it"),
    ("missing_password_file", "pool[0].password_file: cannot read"),
    ("empty_password_file", "pool[0].password_file:"),
    ("ca_file", "ca_file"),
])
def test_bad_pool_settings_fail_before_any_port_is_opened(tmp_path, case, message):
    """A pool setting that cannot work fails the start at once, with one line naming the entry
    and the key (exit 2), before the agent touches the board: not a byte on either port."""
    (tmp_path / "empty").write_text("\n")
    url, user, extra = "stratum+tcp://127.0.0.1:3333", "bc1qlab.rig1", []
    if case == "url":
        url = "stratum://pool.example:3333"
    elif case == "user":
        user = " bc1qlab.rig1"
    elif case == "missing_password_file":
        extra = ["--pool-password-file", str(tmp_path / "no-such-file")]
    elif case == "empty_password_file":
        extra = ["--pool-password-file", str(tmp_path / "empty")]
    with HashBoardEmulator("BM1370", 4, seed=3) as emu:
        config = tmp_path / "agent.toml"
        config.write_text(
            f'[chain]\nport = "{emu.chain_path}"\n[board]\nport = "{emu.board_path}"\n')
        if case == "ca_file":
            with config.open("a") as f:
                f.write(f'[[pool]]\nurl = "stratum+ssl://127.0.0.1:3334"\nuser = "{user}"\n'
                        f'ca_file = "{tmp_path / "no-ca.pem"}"\n')
            pool_args = []
        else:
            pool_args = ["--pool", url, "--pool-user", user, *extra]
        result = subprocess.run(
            [sys.executable, "-m", "agent", "agent", "--config", str(config), *pool_args],
            capture_output=True, text=True, timeout=30, cwd=ROOT)
        state = emu.state()
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("gridminer agent:")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert state["ports"]["chain"]["bytes_in"] == 0 and state["ports"]["board"]["bytes_in"] == 0
    assert state["bridge"]["requests"] == 0
