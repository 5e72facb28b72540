"""The whole agent as a subprocess (`python -m agent agent ...`), as a user starts it, for the
end-to-end test and tests/bench/bench_grid.py; and stopping such a process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import IO, Any

from hil import child

ROOT = Path(__file__).resolve().parents[2]

# no restart spread (commands act at once), telemetry twice a second
GRID_CONFIG = "[grid]\nrestart_spread_s = 0.0\ntelemetry_period_s = 0.5\n"


def start_agent(folder: Path, chain: str, board: str, broker_url: str, operator_key: Path,
                kid: str, stderr: IO[Any], *extra: str) -> subprocess.Popen[bytes]:
    """`gridminer agent` for site s1, device d1 on the given chain and board ports, with
    GRID_CONFIG in `folder`/agent.toml and its state in `folder`/state."""
    config = folder / "agent.toml"
    config.write_text(GRID_CONFIG)
    return subprocess.Popen(
        [sys.executable, "-m", "agent", "agent", "--config", str(config),
         "--chain", chain, "--board", board, "--broker", broker_url,
         "--site", "s1", "--device", "d1", "--operator-key", str(operator_key), "--kid", kid,
         "--state-dir", str(folder / "state"), *extra],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr,
    )


def stop_process(proc: subprocess.Popen[Any], timeout_s: float) -> None:
    """SIGTERM, then SIGKILL if it is still running after `timeout_s`; then close its pipes."""
    child.stop_process(proc, timeout_s)
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()
