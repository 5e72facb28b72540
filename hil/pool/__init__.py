"""A Stratum V1 pool for the lab: real-looking work, strict share checks, faults on cue.

Written from the protocol (notes/stratum.md), not from the agent's client, and it imports
nothing from `agent`: a share is checked here with `hashlib` alone. The header is assembled the
way cgminer and ckpool do it (the hex of version, notify prevhash, word-swapped merkle root,
ntime, nbits and nonce, then every 4-byte word byte-reversed), the target is
floor(0xFFFF·2**208 / D) in exact integer arithmetic, and the version follows BIP 310:
(job version & ~mask) | (version bits & mask).

Work: the first job is a mainnet one (block 791433 as Braiins Pool sent it, the ESP-Miner test
vector), so the published share of that job is accepted here; every job after it is rolled
forward: a new block has the next height in the coinbase, a new previous hash, and a clean_jobs
notify; a new job of the same block has new branch hashes and the time of now.

Cues: `new_block()`, `new_job()`, `set_difficulty(d)`, `set_version_mask(m)`,
`set_extranonce()`, `reconnect(...)`, `show_message(...)`, `ping()`, `send_raw(line)`,
`drop_connections()`, `go_down()` (refuses connections: the port is closed), `come_up()`,
`reject_shares(code, reason)` (valid shares answered with an error: a rejected burst) and
`accept_shares()`.
Version rolling is granted (`version_mask`), refused (`configure="refuse"`), answered with an
error, ignored, or the connection dropped on it.

Figures: `counts` (accepted, invalid, stale, duplicate, unauthorized, rejected, malformed, ...)
and `shares`, one `ShareCheck` per submit, with the reason when it was not accepted and whether
the verdict reached the miner (`answered`: what the miner's own counts can show). An invalid share
is one whose header does not hash under its target, or whose fields cannot be part of a valid
header (version bits outside the mask, ntime out of range, extranonce2 of the wrong size).

    python -m hil.pool --port 3333 --difficulty 0.001
"""

from hil.pool.server import LabPool, Miner
from hil.pool.work import MAINNET_791433, PoolJob, ShareCheck, dsha, flip_words, share_target

__all__ = ["MAINNET_791433", "LabPool", "Miner", "PoolJob", "ShareCheck", "dsha", "flip_words",
           "share_target"]
